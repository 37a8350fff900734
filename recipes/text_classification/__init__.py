"""Text classification: validation against a baseline profile, a model zoo, tuning, ONNX.

Ported from the text-classification team's Azure ML pipeline (seed document "Pipelines"):
new data is versioned (the aggregation output is the content-addressed data-set version);
the train and test sets and the tuning subset of each are validated against a hand-kept
baseline profile (hard failures stop the run; drift is reported in
``validation/drift_report.html``, linked from the run's dashboard page); the text is cleaned;
15 scikit-learn models are tried on the subsets (MLflow child runs); the best is tuned on the
subsets (child runs, and a table); the final model is fitted on all data with the tuned
settings, evaluated on the test set, exported to ONNX (cleaning included, so it takes raw text)
and registered with MLflow's ``onnx`` flavour; and each successful run appends a profile of
its data to the history (``artifacts/history/text_classification/``).

Differences from the team's pipeline: the final model is the tuned scikit-learn model (theirs
went on to a neural network on a GPU); tuning is a seeded random search on the worker's cores
(theirs: HyperDrive on a cluster); cleaning is part of the model rather than a data step, so
what serves is what was evaluated.

Importing this package is cheap; pandera, VADER, skl2onnx and onnxruntime are imported by the
stage functions that use them.
"""

from __future__ import annotations

from pathlib import Path

from recipes.base import QualityGate, Recipe, RecipeParams, lazy, pinned
from recipes.text_classification.params import TextClassificationParams, coerce_params

__all__ = ["TextClassificationParams", "recipe", "write_baseline"]

MIN_F1_MACRO = 0.5


def write_baseline(data_dir: Path, out_file: Path, params: RecipeParams) -> None:
    """A first baseline profile from a raw data set: its train set (or its pool) profiled,
    with the default tolerances. Edit it by hand from then on."""
    from recipes.text_classification.aggregate import read_sets
    from recipes.text_classification.dataset import POOL, TRAIN
    from recipes.text_classification.profile import (
        baseline_from,
        profile_texts,
        write_baseline_file,
    )

    p = coerce_params(params)
    frames = read_sets(Path(data_dir), p)
    reference = frames[TRAIN] if TRAIN in frames else frames[POOL]
    profile = profile_texts(
        reference["text"],
        reference["label"],
        sentiment_max_rows=p.sentiment_max_rows,
        seed=p.seed,
    )
    source = f"{Path(data_dir).name}: {', '.join(sorted(set(reference['source'])))}"
    write_baseline_file(baseline_from(profile, source=source), Path(out_file))


recipe = Recipe(
    name="text_classification",
    version="1.0.0",
    description=(
        "Text classification: validation against a baseline profile, a 15-model scikit-learn "
        "zoo, tuning, and the tuned model exported to ONNX (raw text in, label and score out)"
    ),
    params_model=TextClassificationParams,
    primary_metric="f1_macro",
    greater_is_better=True,
    compute="cpu",
    # pandas and scikit-learn are imported by the first stage that runs here.
    aggregate=lazy("recipes.text_classification.aggregate:aggregate"),
    split=lazy("recipes.text_classification.split:split"),
    train=lazy("recipes.text_classification.training:train"),
    write_sample_data=lazy("recipes.text_classification.sample_data:write_sample_data"),
    quality_gate=QualityGate({"f1_macro": (">=", MIN_F1_MACRO)}),
    # What loading the registered ONNX model needs (scikit-learn is not among them).
    pip_requirements=pinned("onnx", "onnxruntime", "numpy", "pandas"),
    stage_params={
        "aggregation": [
            "text_column",
            "label_column",
            "seed",
            "baseline_profile",
            "max_empty_text_fraction",
            "max_non_english_fraction",
            "subset_fraction",
            "subset_max_rows",
            "sentiment_max_rows",
        ],
        "split": ["test_fraction", "seed"],
        "train": ["zoo", "tuning_trials", "max_features", "min_onnx_agreement", "seed"],
    },
    blob_params=["baseline_profile"],
    write_baseline=write_baseline,
)
