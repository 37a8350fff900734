"""What a recipe is: the data scientist's part, plain functions over local directories.

A worker (or an Azure ML command job) downloads a stage's inputs into local directories,
calls the recipe function and uploads what it wrote. Recipes never see the bus, the blob
store or the model registry, so the same code runs anywhere.

Stage functions and what they read/write (``ctx`` is a ``RecipeContext``: cancellation and the
cores the stage may use; it defaults to ``None``, i.e. a fresh context, for direct calls):

- ``aggregate(raw_dir, out_dir, params, ctx) -> DatasetSummary``: ``raw_dir`` holds the raw blobs
  of the data set (relative paths kept). Writes one consolidated data set into ``out_dir``.
  Raises ``shared.errors.DataValidationError`` naming the bad file/row.
- ``split(dataset_dir, out_dir, params, ctx) -> DatasetSummary``: writes the split (e.g.
  ``train.csv``/``validation.csv``) into ``out_dir``.
- ``train(split_dir, out_dir, params, ctx) -> TrainResult``: fits and evaluates; may write
  artifacts (plots, reports) into ``out_dir`` and list them in the result, and return child runs
  (tuning trials, zoo members) that the runtime logs as MLflow child runs of the run.
- ``write_sample_data(out_dir, seed)``: writes a small raw data set for demos and tests.
- ``load_archive(archive, out_dir) -> summary`` (optional): converts an archive a team
  delivers (a zip) into the recipe's raw data layout in ``out_dir``; ``retrainer load-zip``
  uploads each top-level folder it writes under the data prefix.

A long stage calls ``ctx.check_cancelled()`` at its checkpoints (between epochs, trials, zoo
members): once the run is cancelled it raises ``StageCancelledError`` and the worker is free.

Importing a recipe's package must stay cheap: every worker and the coordinator discover all
recipes when they start, so a recipe names its stage functions with ``lazy("module:function")``
and its ML libraries (pandas, scikit-learn, TensorFlow, ...) are imported by the first message
that needs them (``tests/unit/test_recipe_registry.py`` checks this for every installed recipe).
"""

from __future__ import annotations

import importlib
import operator
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from shared.compute.port import AutoMLImageObjectDetection
from shared.data_assets.port import InvalidDataAssetError, validate_asset_name
from shared.entities import entity_in_model_name, validate_model_name
from shared.errors import ConfigurationError, StageCancelledError

Compute = Literal["cpu", "gpu"]
# MLflow flavours the runtime logs models with; ``pyfunc`` takes an ``mlflow.pyfunc.PythonModel``.
ModelFlavor = Literal["sklearn", "tensorflow", "keras", "lightgbm", "onnx", "pyfunc"]
# The stages that run recipe code, whose outputs are cached.
RecipeStage = Literal["aggregation", "split", "train"]
RECIPE_STAGES: tuple[RecipeStage, ...] = ("aggregation", "split", "train")
Comparison = Literal[">=", ">", "<=", "<"]

_COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


def pinned(*distributions: str) -> tuple[str, ...]:
    """``name==version`` of each installed distribution (a model's requirements should be what
    it was trained with); the bare name for one that is not installed."""
    requirements = []
    for name in distributions:
        try:
            requirements.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            requirements.append(name)
    return tuple(requirements)


class LazyFunction:
    """A function imported from ``"package.module:name"`` on its first call."""

    def __init__(self, target: str) -> None:
        module, sep, name = target.partition(":")
        if not (module and sep and name):
            raise ValueError(f"lazy target {target!r} is not 'package.module:function'")
        self.target = target
        self._module = module
        self._name = name
        self._function: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        if self._function is None:
            function = getattr(importlib.import_module(self._module), self._name)
            if not callable(function):
                raise TypeError(f"lazy target {self.target!r} is not callable")
            self._function = function
        return self._function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"


def lazy(target: str) -> Any:
    """A stage function (or ``write_sample_data``) of a recipe that is imported with its
    libraries when first called, e.g. ``train=lazy("my_recipe.training:train")``."""
    return LazyFunction(target)


class RecipeParams(BaseModel):
    """Base for a recipe's parameters: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class RecipeContext:
    """What the runtime hands a stage function besides its directories and params.

    ``cancelled`` is set by the runtime when the run is cancelled; ``max_workers`` is how many
    cores the stage may use (process pools, LightGBM threads), so a worker running several
    stages at once does not oversubscribe the machine.
    """

    cancelled: threading.Event = field(default_factory=threading.Event)
    max_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Local copies of the blobs that this stage's blob params name (``Recipe.blob_params``),
    # by param name; a param left unset has none.
    blob_inputs: Mapping[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {self.max_workers}")

    def check_cancelled(self) -> None:
        """Raises ``StageCancelledError`` once the run was cancelled: call it at checkpoints."""
        if self.cancelled.is_set():
            raise StageCancelledError()

    def blob_input(self, param: str) -> Path:
        """The local copy of the blob that blob param ``param`` names."""
        try:
            return self.blob_inputs[param]
        except KeyError:
            raise ConfigurationError(
                f"no blob was fetched for param {param!r}: the recipe must list it in "
                "blob_params and stage_params of this stage (or, called directly, pass "
                "RecipeContext(blob_inputs=...))"
            ) from None


HistoryValue = str | int | float | bool


@dataclass(frozen=True)
class DatasetSummary:
    """What aggregate/split wrote. ``reports``: human-readable files in ``out_dir`` by title
    (the API serves them and the dashboard links them from the run's page).
    ``history_record``: one flat row describing the data set; the runtime appends it, with the
    run's id and data-set version, to the recipe's profile history when the run succeeds."""

    rows: int
    files: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    reports: Mapping[str, str] = field(default_factory=dict)
    history_record: Mapping[str, HistoryValue] | None = None


@dataclass(frozen=True)
class ChildRun:
    """One tuning trial or zoo member; the runtime logs it as an MLflow child run of the run.

    ``artifacts`` are files the recipe wrote under its ``out_dir`` (e.g. a pickled zoo model).
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    artifacts: Sequence[Path] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    model: Any
    flavor: ModelFlavor
    metrics: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    input_example: Any = None
    # Extra keyword arguments for the flavor's ``log_model`` (e.g. sklearn's
    # ``skops_trusted_types`` for custom transformers, ``code_paths`` for portable loading,
    # ``signature``).
    log_model_options: dict[str, Any] = field(default_factory=dict)
    # The registered model's pyfunc face takes integer columns/tensors where its signature
    # declares floats and names the reason first when a batch does not fit
    # (``shared.model_input``); the flavour's own loader is unaffected. False: MLflow's own
    # pyfunc face (``mlflow models serve`` then takes every input format, not only ``inputs``).
    conform_input: bool = True
    # Trials, zoo members: logged as child runs, in this order.
    children: list[ChildRun] = field(default_factory=list)


class DatasetFunction(Protocol):
    """``aggregate(raw_dir, out_dir, params, ctx)`` or ``split(dataset_dir, ...)``."""

    def __call__(
        self, in_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None, /
    ) -> DatasetSummary: ...


class TrainFunction(Protocol):
    """``train(split_dir, out_dir, params, ctx)``."""

    def __call__(
        self,
        split_dir: Path,
        out_dir: Path,
        params: RecipeParams,
        ctx: RecipeContext | None = None,
        /,
    ) -> TrainResult: ...


@dataclass(frozen=True)
class QualityGate:
    """Thresholds a model must meet to be promoted, e.g. {"silhouette": (">=", 0.2)}."""

    thresholds: Mapping[str, tuple[Comparison, float]] = field(default_factory=dict)

    def failures(self, metrics: Mapping[str, float]) -> list[str]:
        failed = []
        for metric, (comparison, threshold) in self.thresholds.items():
            value = metrics.get(metric)
            if value is None:
                failed.append(f"{metric} missing")
            elif not _COMPARATORS[comparison](value, threshold):
                failed.append(f"{metric}={value:.6g} is not {comparison} {threshold:g}")
        return failed


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    description: str
    params_model: type[RecipeParams]
    primary_metric: str
    greater_is_better: bool
    compute: Compute
    aggregate: DatasetFunction
    split: DatasetFunction
    train: TrainFunction
    write_sample_data: Callable[[Path, int], None]
    quality_gate: QualityGate = field(default_factory=QualityGate)
    pip_requirements: tuple[str, ...] = ()
    # Which params each of aggregation/split/train reads: a stage's cache key covers only
    # those (so a train-only change reuses aggregation and split). A stage left out reads all.
    stage_params: Mapping[RecipeStage, Collection[str]] = field(default_factory=dict)
    # Params whose value (when set) is a blob path, ``container/path``: the worker downloads
    # that blob for each stage that reads the param (``RecipeContext.blob_input``) and its
    # etag joins the stage's cache key, so editing the blob re-runs the stage.
    blob_params: Collection[str] = ()
    # ``write_baseline(data_dir, out_file, params)``: a first baseline profile from a data
    # set (``retrainer baseline``), for recipes that validate against one.
    write_baseline: Callable[[Path, Path, RecipeParams], None] | None = None
    # The registered model's name: ``model_name`` (default: the recipe's name) for a run
    # without an entity; for a run with one, ``model_name_template`` filled with {model} and
    # {entity} (shared/entities.py), so each entity has its own model and champion.
    model_name: str | None = None
    model_name_template: str = "{model}.{entity}"
    # The data asset the split is registered as (shared/data_assets): a name template with
    # {model}, the run's registered model name (so a per-entity run has its own asset), and
    # {entity}; e.g. "{model}-training-data". Each successful split becomes its next version
    # (the runtime registers it, not the recipe) and the model's lineage names the version.
    # A recipe whose split feeds Azure ML AutoML writes train/MLTable (+ validation/MLTable).
    # None: no data asset.
    data_asset: str | None = None
    # ``automl(params) -> AutoMLImageObjectDetection``: where the recipe trains on Azure ML
    # (RETRAINER_COMPUTE_GPU/CPU=azureml), an AutoML job on the split's train/ (and
    # validation/) MLTable replaces ``train``; its best child's MLflow model is registered.
    automl: Callable[[RecipeParams], AutoMLImageObjectDetection] | None = None
    # ``load_archive(archive, out_dir) -> summary``: a delivered zip -> the raw data layout
    # (``retrainer load-zip``); the summary is a JSON-able mapping shown to the caller.
    load_archive: Callable[[Path, Path], Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        known = set(self.params_model.model_fields)
        for stage, names in self.stage_params.items():
            if stage not in RECIPE_STAGES:
                raise ValueError(
                    f"recipe {self.name!r}: stage_params names unknown stage {stage!r}"
                )
            unknown = sorted(set(names) - known)
            if unknown:
                raise ValueError(
                    f"recipe {self.name!r}: stage_params[{stage!r}] names unknown params {unknown}"
                )
        unknown_blobs = sorted(set(self.blob_params) - known)
        if unknown_blobs:
            raise ValueError(
                f"recipe {self.name!r}: blob_params names unknown params {unknown_blobs}"
            )
        if "{entity}" not in self.model_name_template:
            raise ValueError(f"recipe {self.name!r}: model_name_template lacks {{entity}}")
        try:
            self.model_name_template.format(model="m", entity="e")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"recipe {self.name!r}: model_name_template {self.model_name_template!r}"
                f" may use only {{model}} and {{entity}} ({exc})"
            ) from None
        if self.data_asset is not None:
            try:
                self.data_asset.format(model="m", entity="e")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"recipe {self.name!r}: data_asset {self.data_asset!r}"
                    f" may use only {{model}} and {{entity}} ({exc})"
                ) from None

    def data_asset_name(self, entity: str | None = None) -> str | None:
        """The data asset a run of this recipe for ``entity`` registers its split as (None when
        the recipe has none); raises InvalidEntityError or InvalidDataAssetError."""
        if self.data_asset is None:
            return None
        if entity is None and "{entity}" in self.data_asset:
            raise InvalidDataAssetError(
                f"recipe {self.name!r}: data asset {self.data_asset!r} needs an entity"
            )
        name = self.data_asset.format(
            model=self.registered_model_name(entity),
            entity="" if entity is None else entity_in_model_name(entity),
        )
        return validate_asset_name(name)

    def registered_model_name(self, entity: str | None = None) -> str:
        """The model a run of this recipe registers, for ``entity``; raises
        InvalidEntityError for an entity (or resulting name) MLflow would refuse."""
        model = self.model_name or self.name
        if entity is None:
            return validate_model_name(model)
        named = self.model_name_template.format(model=model, entity=entity_in_model_name(entity))
        return validate_model_name(named)

    def params_read_by(self, stage: RecipeStage) -> frozenset[str]:
        """The params ``stage`` reads (all of them when the recipe does not say)."""
        names = self.stage_params.get(stage)
        return frozenset(self.params_model.model_fields if names is None else names)

    def blob_params_read_by(self, stage: RecipeStage) -> list[str]:
        """The blob params ``stage`` reads, sorted."""
        return sorted(set(self.blob_params) & self.params_read_by(stage))

    def parse_params(self, params: Mapping[str, Any]) -> RecipeParams:
        """Raises pydantic.ValidationError naming each bad parameter."""
        return self.params_model.model_validate(dict(params))

    def is_better(self, candidate: float, champion: float) -> bool:
        return candidate > champion if self.greater_is_better else candidate < champion
