"""Data-asset versions through the real coordinator and stage workers on the embedded stack
(SQLite bus, local blob store, MLflow on SQLite), with a tiny recipe that names a data asset:
each new split is the next version, the model's lineage names it, a rerun on the same data
keeps it, and a run on ``asset:<name>@<version>`` trains on that version without aggregation
and split; unknown assets and versions are refused naming them."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from mlflow import MlflowClient

from coordinator.domain import Policy, Run
from coordinator.service import (
    BackgroundLoops,
    Coordinator,
    InvalidRunRequest,
    LoopIntervals,
)
from coordinator.store import RunStore
from services.aggregation import build_spec as aggregation_spec
from services.register import make_handler as register_handler
from services.split import build_spec as split_spec
from services.tag import make_handler as tag_handler
from services.train import TRAINING_RECORD
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.data_assets.local import LocalDataAssets
from shared.promotion import PromotionOptions
from shared.recipe import Recipe
from shared.topology import build_topology
from shared.tracking import MlflowRegistry
from shared.worker import StageContext, StageResult, StageSpec, Worker
from tests.recipe_fixtures import echo_recipe, only

LOCK_S = 30.0
# Generous: a safety net, never a limit a loaded machine should reach.
RUN_TIMEOUT_S = 300.0


class Stack:
    def __init__(self, root: Path, recipe: Recipe | None = None) -> None:
        self.root = root
        self.recipe = recipe or dataclasses.replace(
            echo_recipe, name=f"echo-{uuid.uuid4().hex[:8]}", data_asset="{model}-training-data"
        )
        self.asset = f"{self.recipe.name}-training-data"
        tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        self.mlflow = MlflowClient(tracking_uri)
        self._experiment = self.mlflow.create_experiment(
            self.recipe.name, artifact_location=(root / "mlartifacts").as_uri()
        )
        self.trained_on: list[list[float]] = []
        self._stack = ExitStack()
        topology = build_topology(lock_duration_s=LOCK_S)
        self.blobs = LocalBlobStore(root / "blobs")
        self.assets = LocalDataAssets(self.blobs)
        store = RunStore.from_url(f"sqlite:///{root / 'coordinator.sqlite'}")
        store.create_tables()

        def bus() -> SqliteMessageBus:
            made = SqliteMessageBus(root / "bus.sqlite", topology=topology, poll_interval_s=0.02)
            self._stack.callback(made.close)
            return made

        self.coordinator = Coordinator(
            bus=bus(),
            blobs=self.blobs,
            store=store,
            recipes=only(self.recipe),
            policy=Policy(max_attempts=2, backoff_base_s=0.05, backoff_max_s=0.2),
            data_assets=self.assets,
        )
        self._stack.callback(self.coordinator.close)
        loops = BackgroundLoops(
            self.coordinator,
            LoopIntervals(consumer_wait_s=0.2, relay_interval_s=0.2, watchdog_interval_s=0.5),
        )
        loops.start()
        self._stack.callback(loops.stop)
        registry = MlflowRegistry(tracking_uri, artifact_root=root / "mlartifacts")
        specs = [
            aggregation_spec(),
            split_spec(data_assets=self.assets),
            StageSpec(stage="train", inputs=("split",), output="model", handler=self._train),
            StageSpec(
                stage="register",
                inputs=("model",),
                output="registration",
                handler=register_handler(registry, code_version="test"),
                cacheable=False,
            ),
            StageSpec(
                stage="tag",
                inputs=("registration",),
                output="promotion",
                handler=tag_handler(registry, options=PromotionOptions(lease_s=15, wait_s=60)),
                cacheable=False,
            ),
        ]
        for spec in specs:
            worker = Worker(
                spec,
                bus=bus(),
                blob_store=self.blobs,
                recipe_lookup=only(self.recipe),
                lock_duration_s=LOCK_S,
                receive_wait_s=0.2,
                work_dir=root,
            )
            thread = threading.Thread(target=worker.run_forever, daemon=True)
            thread.start()
            self._stack.callback(thread.join)
            self._stack.callback(worker.stop)

    def _train(self, ctx: StageContext) -> StageResult:
        """Records what it trained on: the echo recipe's numbers, or another recipe's MLTables."""
        split = ctx.input_dirs["split"]
        if (split / "train.json").exists():
            numbers = json.loads((split / "train.json").read_text())
        else:
            numbers = [float(len(list(split.rglob("MLTable"))))]
        self.trained_on.append(numbers)
        run = self.mlflow.create_run(self._experiment)
        metrics = {"score": float(sum(numbers))}
        record = {
            "mlflow_run_id": run.info.run_id,
            "model_uri": f"runs:/{run.info.run_id}/model",
            "metrics": metrics,
        }
        (ctx.output_dir / TRAINING_RECORD).write_text(json.dumps(record))
        return StageResult(metrics=metrics)

    def run(self, data: str) -> Run:
        return self.wait(self.coordinator.start_run(self.recipe.name, data, {}))

    def wait(self, started: Run) -> Run:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        run = started
        while not run.is_finished and time.monotonic() < deadline:
            threading.Event().wait(0.05)
            run = self.coordinator.get_run(started.id)
        assert run.status == "succeeded", (run.status, run.error)
        return run

    def lineage(self, run: Run) -> dict[str, str]:
        model = run.model
        assert model is not None and model.name and model.version
        return dict(self.mlflow.get_model_version(model.name, model.version).tags)

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    made = Stack(tmp_path)
    yield made
    made.close()


def test_each_new_split_is_the_next_version_and_an_asset_run_trains_on_one(stack: Stack) -> None:
    stack.blobs.upload_blob("raw/set/a.txt", b"1\n2\n")
    first = stack.run("raw/set")
    assert first.data_asset is not None
    assert (first.data_asset.name, first.data_asset.version) == (stack.asset, "1")
    lineage = stack.lineage(first)
    assert (lineage["data_asset"], lineage["data_asset_version"]) == (stack.asset, "1")
    assert stack.assets.get(stack.asset, "1").prefix == first.stage("split").outputs["split"] + "/"

    # New data appended: a new split, version 2.
    stack.blobs.upload_blob("raw/set/b.txt", b"3\n")
    second = stack.run("raw/set")
    assert second.data_asset is not None and second.data_asset.version == "2"
    assert stack.lineage(second)["data_asset_version"] == "2"

    # The same data again: the cached split is the same version.
    again = stack.run("raw/set")
    assert again.stage("split").cached
    assert again.data_asset is not None and again.data_asset.version == "2"
    assert [v.version for v in stack.assets.list_versions(stack.asset)] == ["1", "2"]

    # Retraining on version 1: no aggregation, no split; train reads version 1's split.
    on_asset = stack.run(f"asset:{stack.asset}@1")
    assert [s.status for s in on_asset.stages] == [
        "skipped",
        "skipped",
        "succeeded",
        "succeeded",
        "succeeded",
    ]
    assert on_asset.data == f"asset:{stack.asset}@1"
    assert on_asset.data_asset is not None and on_asset.data_asset.version == "1"
    assert on_asset.outputs["split"] == first.stage("split").outputs["split"]
    # The same split and params as the first run: its training is reused from the cache.
    assert on_asset.stage("train").cached
    assert on_asset.stage("train").outputs == first.stage("train").outputs
    lineage = stack.lineage(on_asset)
    assert (lineage["data_asset"], lineage["data_asset_version"]) == (stack.asset, "1")
    assert lineage["split_version"] == first.stage("split").outputs["split"]

    # @latest is pinned when the run starts.
    latest = stack.run(f"asset:{stack.asset}@latest")
    assert latest.data_asset is not None and latest.data_asset.version == "2"
    assert latest.outputs["split"] == second.stage("split").outputs["split"]
    assert stack.trained_on == [[1.0, 2.0], [1.0, 2.0, 3.0]]

    # A train-only change on an asset: trained afresh on the version's split.
    forced = stack.coordinator.start_run(
        stack.recipe.name, f"asset:{stack.asset}@1", {}, force=("train",)
    )
    stack.wait(forced)
    assert stack.trained_on[-1] == [1.0, 2.0]


def test_unknown_assets_and_versions_are_refused_naming_them(stack: Stack) -> None:
    stack.blobs.upload_blob("raw/set/a.txt", b"1\n")
    stack.run("raw/set")
    cases = {
        "asset:nope@latest": "data asset 'nope' has no versions",
        f"asset:{stack.asset}@7": f"data asset '{stack.asset}' has no version 7",
        "asset:bad name@1": "is not valid",
        f"asset:{stack.asset}@v2": "is not 'latest' or a version number",
    }
    for data, message in cases.items():
        with pytest.raises(InvalidRunRequest) as raised:
            stack.coordinator.start_run(stack.recipe.name, data, {})
        [problem] = raised.value.problems
        assert problem.loc == ("data",)
        assert message in problem.msg


def test_symbol_detection_drawings_appended_are_the_next_version(tmp_path: Path) -> None:
    """The symbol_detection recipe's own aggregation and split (train stubbed: no TensorFlow
    here): 40 drawings are version 1 of ``symbol_detection-training-data``, 20 appended make
    version 2, and a run on version 1 trains on its train/ and validation/ MLTables."""
    from recipes.symbol_detection import recipe as symbols
    from recipes.symbol_detection.loader import convert_zip
    from recipes.symbol_detection.sample_data import write_sample_zip

    stack = Stack(tmp_path, dataclasses.replace(symbols, primary_metric="score"))
    try:

        def upload(archive: Path, folder: Path) -> None:
            convert_zip(archive, folder)
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    stack.blobs.upload_blob(
                        f"drawings/set/{path.relative_to(folder)}", path.read_bytes()
                    )

        upload(write_sample_zip(tmp_path / "a.zip", images=40, seed=1), tmp_path / "a")
        first = stack.run("drawings/set")
        assert first.data_asset is not None
        assert (first.data_asset.name, first.data_asset.version) == (
            "symbol_detection-training-data",
            "1",
        )
        upload(
            write_sample_zip(tmp_path / "b.zip", images=20, seed=2, name_prefix="extra"),
            tmp_path / "b",
        )
        second = stack.run("drawings/set")
        assert second.data_asset is not None and second.data_asset.version == "2"
        assert second.stage("split").details["rows"] == 60
        assert stack.lineage(second)["data_asset_version"] == "2"
        # Both tables of each version's split reached train.
        assert stack.trained_on == [[2.0], [2.0]]
        on_v1 = stack.run("asset:symbol_detection-training-data@1")
        assert on_v1.outputs["split"] == first.stage("split").outputs["split"]
        assert stack.lineage(on_v1)["data_asset_version"] == "1"
    finally:
        stack.close()
