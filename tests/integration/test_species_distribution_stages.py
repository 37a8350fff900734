"""species_distribution through the real stage runtime: the embedded bus, a local blob store,
MLflow on SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from services.aggregation import build_spec as aggregation_spec
from services.split import build_spec as split_spec
from services.train import experiment_name, make_handler
from services.train.jobs import TrainingJobs
from services.train.settings import TrainSettings
from shared.blobs.local import LocalBlobStore
from shared.blobs.transfer import upload_directory
from shared.bus.sqlite import SqliteMessageBus
from shared.messages import Message, RunStage, Stage, StageSucceeded, decode, encode
from shared.recipe_registry import get_recipe
from shared.topology import COORDINATOR_SUBSCRIPTION, EVENTS_TOPIC, build_topology, command_topic
from shared.tracking import PARENT_RUN_TAG, MlflowRegistry
from shared.worker import StageSpec, Worker
from tests.recipe_fixtures import only

LOCK_S = 30.0
SITE = "datasets/species/site-a"
RECIPE = get_recipe("species_distribution")
QUICK: dict[str, Any] = {
    "species": "Cygnus buccinator",
    "max_evals": 4,
    "n_folds": 2,
    "early_stopping_rounds": 5,
}


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[SqliteMessageBus]:
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology(lock_duration_s=LOCK_S))
    yield bus
    bus.close()


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    store = LocalBlobStore(tmp_path / "blobs")
    RECIPE.write_sample_data(tmp_path / "site", 5)
    upload_directory(store, tmp_path / "site", SITE)
    return store


@pytest.fixture
def registry(tmp_path: Path) -> MlflowRegistry:
    return MlflowRegistry(
        f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "mlartifacts"
    )


def worker(spec: StageSpec, bus: SqliteMessageBus, blobs: LocalBlobStore, cores: int) -> Worker:
    return Worker(
        spec,
        bus=bus,
        blob_store=blobs,
        recipe_lookup=only(RECIPE),
        lock_duration_s=LOCK_S,
        receive_wait_s=0.2,
        stage_max_workers=cores,
    )


def train_spec(
    bus: SqliteMessageBus, blobs: LocalBlobStore, registry: MlflowRegistry, tmp_path: Path
) -> StageSpec:
    settings = TrainSettings(state_dir=tmp_path / "state", compute_cpu="in_process")
    jobs = TrainingJobs(bus=bus, blob_store=blobs, remote=None, poll_interval_s=3600)
    handler = make_handler(
        settings, registry=registry, jobs=jobs, subprocess_compute=None, azureml_compute=None
    )
    return StageSpec("train", ("split",), "model", handler, download_inputs=False)


def run_stage(
    bus: SqliteMessageBus,
    stage_worker: Worker,
    stage: Stage,
    inputs: dict[str, str],
    params: dict[str, Any],
) -> StageSucceeded:
    command = RunStage.model_validate(
        {
            "correlation_id": uuid.uuid4(),
            "stage": stage,
            "attempt": 1,
            "recipe": RECIPE.name,
            "inputs": inputs,
            "params": params,
        }
    )
    bus.send_messages(command_topic(stage), [encode(command)])
    assert stage_worker.process_next()
    found = [e for e in events(bus) if e.correlation_id == command.correlation_id]
    succeeded = [e for e in found if isinstance(e, StageSucceeded)]
    assert succeeded, found
    return succeeded[0]


def events(bus: SqliteMessageBus) -> list[Message]:
    received = bus.receive_messages(
        EVENTS_TOPIC, COORDINATOR_SUBSCRIPTION, max_message_count=50, max_wait_time=0.2
    )
    for message in received:
        bus.complete_message(message)
    return [decode(m.body, m.application_properties) for m in received]


def test_trials_are_child_runs_and_the_model_predicts_presence_on_raw_rows(
    bus: SqliteMessageBus,
    blobs: LocalBlobStore,
    registry: MlflowRegistry,
    tmp_path: Path,
) -> None:
    aggregated = run_stage(
        bus, worker(aggregation_spec(), bus, blobs, 1), "aggregation", {"data": SITE}, QUICK
    )
    split = run_stage(
        bus,
        worker(split_spec(), bus, blobs, 1),
        "split",
        {"dataset": aggregated.outputs["dataset"]},
        QUICK,
    )
    # Two cores: the trials' folds run on a pool of two worker processes.
    train_worker = worker(train_spec(bus, blobs, registry, tmp_path), bus, blobs, 2)
    trained = run_stage(bus, train_worker, "train", {"split": split.outputs["split"]}, QUICK)

    client = MlflowClient(registry.tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name(RECIPE.name))
    assert experiment is not None
    run = client.get_run(trained.details["mlflow_run_id"])
    assert run.data.params["species"] == "cygnus_buccinator"
    assert run.data.params["tuning_workers"] == "2"
    assert run.data.metrics["roc_auc"] == pytest.approx(trained.metrics["roc_auc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best_parameters.json", "metrics.json", "confusion_matrix.png"} <= artifacts

    trials = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{PARENT_RUN_TAG}` = '{run.info.run_id}'",
        order_by=["attributes.run_name"],
    )
    assert [t.info.run_name for t in trials] == ["trial-000", "trial-001", "trial-002", "trial-003"]
    first = trials[0]
    # The sample site's lgbm_params.yml: its initial guess is the first trial.
    assert first.data.params == {
        "learning_rate": "0.1",
        "num_leaves": "31",
        "min_child_samples": "20",
        "colsample_bytree": "0.9",
        "reg_lambda": "0.01",
    }
    for trial in trials:
        metrics = trial.data.metrics
        assert {"cv_roc_auc", "fold_0_roc_auc", "fold_1_roc_auc", "duration_s"} <= set(metrics)
        assert metrics["cv_roc_auc"] == pytest.approx(
            (metrics["fold_0_roc_auc"] + metrics["fold_1_roc_auc"]) / 2
        )
    best = [t for t in trials if t.data.tags["best"] == "true"]
    assert len(best) == 1
    assert run.data.metrics["cv_roc_auc"] == pytest.approx(best[0].data.metrics["cv_roc_auc"])
    assert run.data.params["best_num_leaves"] == best[0].data.params["num_leaves"]

    # The registered model takes raw rows as a features table holds them: gbifid and the
    # coordinates (ignored), integer and float columns, text categories, gaps.
    mlflow.set_tracking_uri(registry.tracking_uri)
    model = mlflow.pyfunc.load_model(trained.details["model_uri"])
    features = pd.read_parquet(tmp_path / "site" / "features.parquet")
    raw = pd.concat([features[features["ndvi"].isna()].head(5), features.head(35)])
    assert raw["elevation_m"].dtype == "int64" and raw["ndvi"].isna().any()
    probabilities = np.asarray(model.predict(raw))
    assert probabilities.shape == (40, 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    gappy = raw.assign(elevation_m=raw["elevation_m"].where(raw.index % 2 == 0))
    integers = raw.assign(ndvi=(raw["ndvi"].fillna(0) > 0.5).astype("int64"))
    assert np.asarray(model.predict(gappy)).shape == (40, 2), "an integer column with a gap"
    assert np.asarray(model.predict(integers)).shape == (40, 2), "integers where floats were"
    unseen = raw.assign(landcover="glacier")
    assert np.all(np.isfinite(np.asarray(model.predict(unseen)))), "an unseen category"


def test_a_rerun_changing_only_tuning_reuses_aggregation_and_split(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    aggregation = worker(aggregation_spec(), bus, blobs, 1)
    splitting = worker(split_spec(), bus, blobs, 1)

    def prepare(params: dict[str, Any]) -> tuple[StageSucceeded, StageSucceeded]:
        aggregated = run_stage(bus, aggregation, "aggregation", {"data": SITE}, params)
        dataset = {"dataset": aggregated.outputs["dataset"]}
        return aggregated, run_stage(bus, splitting, "split", dataset, params)

    first = prepare(QUICK)
    tuning_only = {
        **QUICK,
        "max_evals": 60,
        "no_progress_trials": 10,
        "search_space": {"tune": ["learning_rate", "num_leaves"]},
    }
    again = prepare(tuning_only)
    assert [s.cached for s in first] == [False, False]
    assert [s.cached for s in again] == [True, True]
    assert [s.outputs for s in again] == [s.outputs for s in first]

    reseeded = prepare({**QUICK, "seed": 1})
    assert [s.cached for s in reseeded] == [True, False], "the seed is the split's"
    other_species = prepare({**QUICK, "species": "Lynx lynx"})
    assert [s.cached for s in other_species] == [False, False]
