"""The model-registry/tracking port and its MLflow adapter.

The train stage logs one MLflow run per pipeline run (tagged with the correlation_id); the
register stage creates a model version carrying the run's lineage; the tag stage reads the
current champion and moves the ``champion`` alias and ``best_model`` tag, always through
``shared.promotion``, which holds the model's promotion lease meanwhile. MLflow (seconds to
import) is imported by the first call of an ``MlflowRegistry``, not when it is built, so the
services that hold one start without it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from shared.errors import PermanentError, RetryableError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from shared.recipe import ChildRun, TrainResult

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
# MLflow's own tag naming a nested run's parent (the MLflow UI groups child runs by it).
PARENT_RUN_TAG = "mlflow.parentRunId"
BEST_MODEL_TAG = "best_model"
METRIC_TAG_PREFIX = "metric."


class TrackingError(RetryableError):
    """The tracking server or its database failed; the call may succeed later."""


class RegistryConflictError(TrackingError):
    """A registry write collided with another one (a unique constraint in the tracking
    database); it may succeed when made again."""


class ModelVersionNotFoundError(PermanentError):
    pass


def _log_model(mlflow: ModuleType, result: TrainResult, pip_requirements: list[str]) -> str:
    """Logs the model under the active run as ``model``; returns its URI.

    A flavour's model is saved by its flavour; when it has an input signature its pyfunc face
    is ``shared.model_input``'s (``TrainResult.conform_input``): ``mlflow.pyfunc`` then takes
    integer readings where floats are declared and names the reason first when a batch does
    not fit, while ``mlflow.<flavour>.load_model`` loads it as ever."""
    flavor = importlib.import_module(f"mlflow.{result.flavor}")
    # MLflow would copy the uv.lock and pyproject.toml of whatever directory the worker runs
    # in (600 KB, the whole project's): the model's requirements are the explicit ones.
    os.environ.setdefault("MLFLOW_UV_AUTO_DETECT", "false")
    # Explicit requirements: inferring them costs seconds per model (measured ~4 s).
    if result.flavor == "pyfunc":
        info = flavor.log_model(
            name="model",
            python_model=result.model,
            pip_requirements=pip_requirements,
            input_example=result.input_example,
            **result.log_model_options,
        )
        return str(info.model_uri)
    if not result.conform_input:
        info = flavor.log_model(
            result.model,
            name="model",
            pip_requirements=pip_requirements,
            input_example=result.input_example,
            **result.log_model_options,
        )
        return str(info.model_uri)
    from mlflow.models import Model

    info = Model.log(
        artifact_path=None,  # deprecated for ``name`` but still positional in Model.log
        name="model",
        flavor=_ConformingFlavor(flavor),
        flavor_name=flavor.__name__,
        model=result.model,
        pip_requirements=pip_requirements,
        input_example=result.input_example,
        # Model.log would load the model back and predict its serving example: ~0.2 s a run
        # (measured at load 17; tests/integration/test_model_input.py serves it instead).
        validate_serving_input=False,
        **result.log_model_options,
    )
    return str(info.model_uri)


class _ConformingFlavor:
    """A flavour module for ``mlflow.models.Model.log``: saves with the flavour, then gives the
    saved model ``shared.model_input``'s pyfunc face (nothing without an input signature)."""

    def __init__(self, flavor: ModuleType) -> None:
        self._flavor = flavor

    def save_model(
        self,
        model: Any,
        path: str,
        mlflow_model: Any,
        validate_serving_input: bool = False,
        **kwargs: Any,
    ) -> None:
        # ``validate_serving_input`` is Model.log's own, which the flavours do not take.
        self._flavor.save_model(model, path=path, mlflow_model=mlflow_model, **kwargs)
        example = kwargs.get("input_example")
        if mlflow_model.signature is None and example is not None:
            # Some flavours (onnx) save the example but infer no signature from it.
            from mlflow.models import infer_signature

            mlflow_model.signature = infer_signature(example)
        if mlflow_model.signature is None or mlflow_model.signature.inputs is None:
            return
        from shared import model_input

        model_input.make_conforming(Path(path), mlflow_model)


@dataclass(frozen=True)
class TrainingRecord:
    run_id: str
    model_uri: str
    experiment_id: str


@dataclass(frozen=True)
class ModelVersionRecord:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)

    def metric(self, name: str) -> float | None:
        value = self.tags.get(METRIC_TAG_PREFIX + name)
        return float(value) if value is not None else None


class ModelRegistry(Protocol):
    def log_training(
        self,
        *,
        experiment_name: str,
        correlation_id: str,
        result: TrainResult,
        pip_requirements: Sequence[str],
        tags: Mapping[str, str],
    ) -> TrainingRecord: ...

    def create_model_version(
        self,
        name: str,
        *,
        model_uri: str,
        run_id: str,
        correlation_id: str,
        tags: Mapping[str, str],
    ) -> ModelVersionRecord:
        """Idempotent per correlation_id: a second call returns the version the first made."""

    def get_model_version(self, name: str, version: str) -> ModelVersionRecord: ...

    def get_champion(self, name: str) -> ModelVersionRecord | None: ...

    def promote(self, name: str, version: str, *, tags: Mapping[str, str]) -> None:
        """Point the champion alias at ``version``, set ``best_model=true`` and ``tags`` on it
        and ``best_model=false`` on every other version of the model that has it true.

        Not atomic: call it only while holding the model's promotion lease
        (``shared.promotion.change_champion``); a call that fails half-way is repaired by
        the next one."""


def registry_warm_up(
    registry: ModelRegistry, flavors: Sequence[str] = ()
) -> tuple[Callable[[], object], ...]:
    """The registry's warm-up (``MlflowRegistry.warm_up``) as a worker's ``StageSpec.warm_up``;
    none for a registry without one (a test double)."""
    warm = getattr(registry, "warm_up", None)
    if warm is None:
        return ()
    return (functools.partial(warm, tuple(flavors)),)


class MlflowRegistry:
    def __init__(self, tracking_uri: str, *, artifact_root: Path | None) -> None:
        """``artifact_root`` places new experiments' artifacts for a local (SQLite/file)
        store; with a tracking server (None) the server decides (``--serve-artifacts``).
        Nothing is imported or connected until the first call."""
        self.tracking_uri = tracking_uri
        self._artifact_root = artifact_root
        self._connect_lock = threading.Lock()
        self._connected: tuple[ModuleType, MlflowClient] | None = None

    @property
    def _mlflow(self) -> ModuleType:
        return self._connect()[0]

    @property
    def _client(self) -> MlflowClient:
        return self._connect()[1]

    def _connect(self) -> tuple[ModuleType, MlflowClient]:
        with self._connect_lock:
            if self._connected is None:
                import mlflow

                # Some MLflow 3 calls (resolving a ``models:/<id>`` source when registering)
                # go through the process-wide tracking URI, not the client's: pin both.
                mlflow.set_tracking_uri(self.tracking_uri)
                with _created_once(self.tracking_uri):
                    # Creates a local store's tables (the client's constructor already opens
                    # the tracking store): one process at a time does that, else concurrent
                    # migrations of a fresh database corrupt it.
                    _create_sqlite_database(self.tracking_uri)
                    client = mlflow.MlflowClient(self.tracking_uri)
                    client.search_experiments(max_results=1)
                    client.search_registered_models(max_results=1)
                self._connected = (mlflow, client)
            return self._connected

    def warm_up(self, flavors: Sequence[str] = ()) -> None:
        """What the first call would pay, paid now: MLflow's import, the store's set-up (a
        local store's tables), the run-context providers a run start consults and the given
        model flavours' modules. A worker calls it before it reports ready."""
        self._connect()
        from mlflow.tracking.context.registry import resolve_tags

        resolve_tags()
        for flavor in ("pyfunc", *flavors):
            importlib.import_module(f"mlflow.{flavor}")
        if "sklearn" in flavors and importlib.util.find_spec("skops") is not None:
            # The flavour's default format: its first save imports every scikit-learn
            # estimator module (skops's trusted types), seconds of CPU.
            importlib.import_module("skops.io")

    def log_training(
        self,
        *,
        experiment_name: str,
        correlation_id: str,
        result: TrainResult,
        pip_requirements: Sequence[str],
        tags: Mapping[str, str],
    ) -> TrainingRecord:
        with _translated("log training"):
            mlflow = self._mlflow
            experiment_id = self._ensure_experiment(experiment_name)
            existing = [
                found
                for found in self._client.search_runs(
                    [experiment_id], filter_string=f"tags.correlation_id = '{correlation_id}'"
                )
                if PARENT_RUN_TAG not in found.data.tags
            ]
            run_kwargs: dict[str, Any] = (
                {"run_id": existing[0].info.run_id}
                if existing
                else {"experiment_id": experiment_id, "run_name": correlation_id}
            )
            with mlflow.start_run(**run_kwargs) as run:
                # One batch (one store transaction) for what set_tags, log_params and
                # log_metrics would write in three.
                _log_batch(
                    self._client,
                    run.info.run_id,
                    metrics=result.metrics,
                    params=result.params,
                    tags={"correlation_id": correlation_id, **tags},
                )
                for artifact in result.artifacts:
                    mlflow.log_artifact(str(artifact))
                self._log_children(
                    experiment_id,
                    run.info.run_id,
                    correlation_id,
                    result.children,
                    # A new run has no children from an earlier attempt to replace.
                    replace=bool(existing),
                )
                # Skips checks that only warn (see _lean_model_logging); writes the same files.
                with _lean_model_logging(skip=True):
                    model_uri = _log_model(mlflow, result, list(pip_requirements))
            return TrainingRecord(run.info.run_id, model_uri, experiment_id)

    def _log_children(
        self,
        experiment_id: str,
        parent_run_id: str,
        correlation_id: str,
        children: Sequence[ChildRun],
        *,
        replace: bool = True,
    ) -> None:
        """Each child (trial, zoo member) as a finished MLflow run nested under the run;
        ``replace``: delete the children an earlier attempt logged under it first."""
        client = self._client
        # A retried training replaces what an earlier attempt logged instead of doubling it.
        if replace:
            for old in client.search_runs(
                [experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"
            ):
                client.delete_run(old.info.run_id)
        for child in children:
            child_run = client.create_run(
                experiment_id,
                run_name=child.name,
                tags={PARENT_RUN_TAG: parent_run_id, "correlation_id": correlation_id},
            )
            child_id = child_run.info.run_id
            _log_batch(
                client, child_id, metrics=child.metrics, params=child.params, tags=child.tags
            )
            for artifact in child.artifacts:
                client.log_artifact(child_id, str(artifact))
            client.set_terminated(child_id)

    def create_model_version(
        self,
        name: str,
        *,
        model_uri: str,
        run_id: str,
        correlation_id: str,
        tags: Mapping[str, str],
    ) -> ModelVersionRecord:
        from mlflow.exceptions import MlflowException

        with _translated("register model"):
            found = self._client.search_model_versions(
                f"name = '{name}' and tags.correlation_id = '{correlation_id}'"
            )
            if found:
                return _record(found[0])
            try:
                self._client.create_registered_model(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = self._client.create_model_version(
                name,
                source=model_uri,
                run_id=run_id,
                tags={**tags, "correlation_id": correlation_id},
            )
            return _record(version)

    def get_model_version(self, name: str, version: str) -> ModelVersionRecord:
        from mlflow.exceptions import MlflowException

        with _translated("get model version"):
            try:
                return _record(self._client.get_model_version(name, version))
            except MlflowException as exc:
                # INVALID_PARAMETER_VALUE: a name or version no model could have.
                if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise ModelVersionNotFoundError(f"model {name!r} version {version}") from exc
                raise

    def get_champion(self, name: str) -> ModelVersionRecord | None:
        from mlflow.exceptions import MlflowException

        with _translated("get champion"):
            try:
                return _record(self._client.get_model_version_by_alias(name, CHAMPION_ALIAS))
            except MlflowException as exc:
                if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    return None
                raise

    def promote(self, name: str, version: str, *, tags: Mapping[str, str]) -> None:
        with _translated("promote"):
            self._client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
            for key, value in {**tags, BEST_MODEL_TAG: "true"}.items():
                self._client.set_model_version_tag(name, version, key, value)
            # Every other version flagged, not only the champion this call replaced: a write
            # that failed half-way (or concurrent promotions before issue 16) may have left more.
            flagged = self._client.search_model_versions(
                f"name = '{name}' and tags.{BEST_MODEL_TAG} = 'true'"
            )
            for other in flagged:
                if str(other.version) != version:
                    self._client.set_model_version_tag(name, other.version, BEST_MODEL_TAG, "false")

    def _ensure_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self._client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = (
            None if self._artifact_root is None else (self._artifact_root / name).resolve().as_uri()
        )
        try:
            return str(self._client.create_experiment(name, artifact_location=location))
        except MlflowException as exc:
            # Another worker created it between our lookup and create.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = self._client.get_experiment_by_name(name)
            assert experiment is not None
            return str(experiment.experiment_id)


# Set while this thread logs a model the lean way (``_lean_model_logging``).
_lean = threading.local()
_lean_install_lock = threading.Lock()


@contextmanager
def _lean_model_logging(*, skip: bool) -> Iterator[None]:
    """While this thread logs a model with an input example, skip two things MLflow's
    ``log_model`` does after saving it, ~40 % of its time in a warm worker:

    * re-loading the saved model to predict on the serving form of the input example
      (``_validate_serving_input``): the signature was just inferred by predicting on that
      example with the model in memory, and MLflow only logs a warning when the re-check fails;
    * comparing each pinned requirement with the installed distributions
      (``warn_dependency_requirement_mismatches``): it only warns, and the recipes pin what is
      installed (``recipes.base.pinned``).

    The signature, input example, requirements and environment files are written exactly as
    before. Other threads and MLflow's public ``validate_serving_input`` are unaffected: the
    hooks are no-ops only for the thread inside this block."""
    if not skip:
        yield
        return
    _install_lean_hooks()
    _lean.active = True
    try:
        yield
    finally:
        _lean.active = False


def _install_lean_hooks() -> None:
    import mlflow.models.utils as model_utils
    import mlflow.utils.environment as environment

    with _lean_install_lock:
        for module, name in (
            (model_utils, "_validate_serving_input"),
            (environment, "warn_dependency_requirement_mismatches"),
        ):
            original = getattr(module, name)
            if getattr(original, "_retrainer_lean", False):
                continue

            def hook(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                if getattr(_lean, "active", False):
                    return None
                return _original(*args, **kwargs)

            hook._retrainer_lean = True  # type: ignore[attr-defined]
            setattr(module, name, hook)


def _create_sqlite_database(tracking_uri: str) -> None:
    """A SQLite tracking database that does not exist yet: its tables created in a file
    beside it without a disk sync per commit (MLflow's tables and ~50 migrations: seconds of
    waiting on the disk of a fresh state directory), synced once, then renamed into place.
    Call it holding ``_created_once``. Where MLflow's private set-up function is not there,
    MLflow creates the database itself as before."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    if database.exists():
        return
    try:
        from mlflow.store.db.utils import _initialize_tables
    except ImportError:
        return
    import sqlalchemy

    creating = database.with_name(f".{database.name}.creating")
    creating.unlink(missing_ok=True)
    engine = sqlalchemy.create_engine(f"sqlite:///{creating}")

    @sqlalchemy.event.listens_for(engine, "connect")
    def _unsynced(connection: Any, _record: Any) -> None:
        connection.execute("PRAGMA synchronous=OFF")

    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
    with open(creating, "rb+") as created:
        os.fsync(created.fileno())
    os.replace(creating, database)


@contextmanager
def _created_once(tracking_uri: str) -> Iterator[None]:
    """Holds an exclusive lock beside a SQLite tracking database: processes that use a fresh
    one at the same time would each try to create its tables."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_PERMANENT_ERROR_CODES = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST")
# MLflow reports a model it cannot serialize as INTERNAL_ERROR; retrying cannot fix it.
_PERMANENT_MESSAGES = ("untrusted types", "could not be serialized")
# MLflow reports any SQLAlchemy error as BAD_REQUEST, so two writers inserting the same row
# at once (an alias, a tag) look permanent; the database's own words say it was a collision.
_CONFLICT_MESSAGES = (
    "IntegrityError",
    "UNIQUE constraint failed",  # SQLite
    "duplicate key value violates unique constraint",  # PostgreSQL
    "Duplicate entry",  # MySQL
)


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turns MLflow and database failures into this project's retryable/permanent errors."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if any(text in exc.message for text in _CONFLICT_MESSAGES):
            raise RegistryConflictError(f"{action}: {exc.message}") from exc
        permanent = exc.error_code in _PERMANENT_ERROR_CODES or any(
            text in exc.message for text in _PERMANENT_MESSAGES
        )
        if permanent:
            raise PermanentError(f"{action}: {exc.message}") from exc
        raise TrackingError(f"{action}: {exc}") from exc
    except OSError as exc:
        raise TrackingError(f"{action}: {exc}") from exc


def _record(version: Any) -> ModelVersionRecord:
    return ModelVersionRecord(
        name=version.name,
        version=str(version.version),
        run_id=version.run_id,
        tags=dict(version.tags),
    )


def _log_batch(
    client: MlflowClient,
    run_id: str,
    *,
    metrics: Mapping[str, float],
    params: Mapping[str, Any],
    tags: Mapping[str, Any],
) -> None:
    """Metrics (at step 0, now), params and tags of a run in as few batches as MLflow takes."""
    from mlflow.entities import Metric, Param, RunTag

    now_ms = int(time.time() * 1000)
    metric_list = [Metric(k, float(v), now_ms, 0) for k, v in metrics.items()]
    param_list = [Param(k, _param_value(v)) for k, v in params.items()]
    tag_list = [RunTag(k, str(v)) for k, v in tags.items()]
    # MLflow takes at most 1,000 metrics, 100 params and 100 tags per batch.
    for batch in itertools.count():
        chunk = (
            metric_list[batch * 1000 : (batch + 1) * 1000],
            param_list[batch * 100 : (batch + 1) * 100],
            tag_list[batch * 100 : (batch + 1) * 100],
        )
        if not any(chunk):
            break
        client.log_batch(run_id, metrics=chunk[0], params=chunk[1], tags=chunk[2])


def _param_value(value: Any) -> str:
    text = str(value)
    # MLflow refuses parameter values above 6000 characters.
    return text if len(text) <= 6000 else text[:5997] + "..."
