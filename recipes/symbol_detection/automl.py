"""The symbol detector on Azure ML: an AutoML image object-detection task.

Where the recipe trains on Azure ML (``RETRAINER_COMPUTE_CPU=azureml``), the train stage submits
this AutoML task instead of the local detector (``Recipe.automl``), with the engineering-drawings
team's settings (seed "AML Pipeline Modules Overview", train model step): primary metric
``mean_average_precision``, at most 8 trials, 4 at a time, 180 minutes, 20 % held out for
validation when the split made no validation table. The data is the run's data-asset version
(the split's ``train/`` MLTable) and the split's ``validation/`` MLTable.

Auto mode (``automl_search_space`` unset) lets AutoML pick the models and hyperparameters; a
search space is a YAML list of subspaces, each a mapping of hyperparameter -> a value, a list of
values (a choice) or a distribution, as Azure ML's "manually sweeping model hyperparameters"
describes, e.g. ``EXAMPLE_SEARCH_SPACE``.

This module imports PyYAML only (no Azure SDK): the job is built by the training-compute port
(``shared/compute/azureml.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.compute.port import AutoMLImageObjectDetection, SearchSpace

# The team's defaults (TRAINING_MAX_TRIALS, _CONCURRENT_TRIALS, _JOB_TIMEOUT_MINUTES,
# _VALIDATION_DATA_SIZE).
PRIMARY_METRIC = "mean_average_precision"
MAX_TRIALS = 8
MAX_CONCURRENT_TRIALS = 4
TIMEOUT_MINUTES = 180
VALIDATION_DATA_SIZE = 0.2

MAX_SEARCH_SPACE_CHARS = 20_000
MAX_SUBSPACES = 20
MAX_PARAMS_PER_SUBSPACE = 40
# The model architectures AutoML object detection offers (Azure ML docs, 2024).
MODEL_NAMES = frozenset(
    {
        "yolov5",
        "fasterrcnn_resnet18_fpn",
        "fasterrcnn_resnet34_fpn",
        "fasterrcnn_resnet50_fpn",
        "fasterrcnn_resnet101_fpn",
        "fasterrcnn_resnet152_fpn",
        "retinanet_resnet50_fpn",
    }
)

EXAMPLE_SEARCH_SPACE = """\
- model_name: yolov5
  learning_rate: {type: uniform, min_value: 0.0001, max_value: 0.01}
  model_size: [small, medium]
- model_name: fasterrcnn_resnet50_fpn
  learning_rate: {type: uniform, min_value: 0.0001, max_value: 0.001}
  optimizer: [sgd, adam, adamw]
  min_size: [600, 800]
"""


def parse_search_space(text: str) -> SearchSpace:
    """A YAML search space -> subspaces; raises ValueError saying what is wrong (the SDK
    checks the hyperparameter names and distributions when the job is built)."""
    import yaml

    if len(text) > MAX_SEARCH_SPACE_CHARS:
        raise ValueError(f"search space longer than {MAX_SEARCH_SPACE_CHARS} characters")
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"search space is not YAML: {exc}") from None
    if isinstance(loaded, Mapping):
        loaded = [loaded]
    if not isinstance(loaded, list) or not loaded:
        raise ValueError("search space: a YAML list of subspaces (mappings), at least one")
    if len(loaded) > MAX_SUBSPACES:
        raise ValueError(f"search space: at most {MAX_SUBSPACES} subspaces")
    subspaces = []
    for index, subspace in enumerate(loaded):
        if not isinstance(subspace, Mapping) or not subspace:
            raise ValueError(f"search space entry {index}: a mapping of hyperparameters")
        if len(subspace) > MAX_PARAMS_PER_SUBSPACE:
            raise ValueError(f"search space entry {index}: too many hyperparameters")
        models = _values(subspace.get("model_name"))
        unknown = sorted(str(m) for m in models if m not in MODEL_NAMES)
        if unknown:
            raise ValueError(
                f"search space entry {index}: unknown model_name {unknown}; one of"
                f" {sorted(MODEL_NAMES)}"
            )
        subspaces.append({str(key): value for key, value in subspace.items()})
    return tuple(subspaces)


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return list(value.get("values", []))
    if isinstance(value, list):
        return value
    return [value]


def automl_task(params: Any) -> AutoMLImageObjectDetection:
    """The AutoML task for a run's params (``automl_*``; missing ones take the defaults)."""
    text = getattr(params, "automl_search_space", None)
    return AutoMLImageObjectDetection(
        primary_metric=PRIMARY_METRIC,
        max_trials=getattr(params, "automl_max_trials", MAX_TRIALS),
        max_concurrent_trials=getattr(
            params, "automl_max_concurrent_trials", MAX_CONCURRENT_TRIALS
        ),
        timeout_minutes=getattr(params, "automl_timeout_minutes", TIMEOUT_MINUTES),
        validation_data_size=getattr(params, "automl_validation_size", VALIDATION_DATA_SIZE),
        target_column_name="label",
        search_space=None if not text else parse_search_space(text),
    )
