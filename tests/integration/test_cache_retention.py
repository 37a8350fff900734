"""Cache retention over the real run store and local blob store: what a registered model's
lineage or an unfinished run names stays; other old entries go."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from uuid import UUID

from coordinator.domain import Policy
from coordinator.service import Coordinator, RetentionPolicy
from coordinator.store import RunStore
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.messages import STAGES, Stage, StageFailed, StageSucceeded, encode
from shared.recipe_registry import get_recipe
from shared.topology import EVENTS_TOPIC, build_topology
from tests.clock import Clock

CACHE = "artifacts/cache"


def test_retention_keeps_lineage_and_unfinished_runs_and_removes_the_rest(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    blobs.upload_blob("datasets/d/a.csv", b"timestamp,a\n1,2\n")
    for entry in (
        "aggregation/a",
        "split/a",
        "train/a",
        "aggregation/b",
        "aggregation/c",
        "split/d",
    ):
        blobs.upload_blob(f"{CACHE}/{entry}/out.json", b"{}")
        blobs.upload_blob(f"{CACHE}/{entry}/_manifest.json", b"{}")
    store = RunStore.from_url(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    store.create_tables()
    clock = Clock()
    coordinator = Coordinator(
        bus=SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology()),
        blobs=blobs,
        store=store,
        recipes=get_recipe,
        policy=Policy(),
        retention=RetentionPolicy(max_age_s=timedelta(days=30).total_seconds()),
        clock=clock,
    )
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology())

    def report(run: UUID, stage: Stage, key: str) -> None:
        event = StageSucceeded(
            correlation_id=run,
            stage=stage,
            attempt=1,
            outputs={
                stage: f"{CACHE}/{stage}/{key}"
                if stage in ("aggregation", "split", "train")
                else f"artifacts/runs/{run}/{stage}"
            },
            details={"model_name": "m", "model_version": "1"} if stage == "register" else {},
        )
        bus.send_messages(EVENTS_TOPIC, [encode(event)])
        while coordinator.consume_events(max_wait_s=0.05):
            pass

    registered = coordinator.start_run("state_identifier", "datasets/d", {}).id
    for stage in STAGES[:4]:
        report(registered, stage, "a")
    failed = coordinator.start_run("state_identifier", "datasets/d", {}).id
    report(failed, "aggregation", "b")
    bus.send_messages(
        EVENTS_TOPIC,
        [
            encode(
                StageFailed(
                    correlation_id=failed,
                    stage="split",
                    attempt=1,
                    error="x",
                    error_type="DataValidationError",
                    retryable=False,
                )
            )
        ],
    )
    while coordinator.consume_events(max_wait_s=0.05):
        pass
    running = coordinator.start_run("state_identifier", "datasets/d", {}).id
    report(running, "aggregation", "c")

    assert coordinator.prune_cache() == [], "nothing is old yet"
    clock.advance(timedelta(days=40).total_seconds())
    removed = coordinator.prune_cache()

    assert removed == [f"{CACHE}/aggregation/b", f"{CACHE}/split/d"]
    left = sorted({b.name.rsplit("/", 1)[0] for b in blobs.list_blobs(f"{CACHE}/")})
    assert left == [
        f"{CACHE}/aggregation/a",
        f"{CACHE}/aggregation/c",
        f"{CACHE}/split/a",
        f"{CACHE}/train/a",
    ]
    coordinator.close()
    bus.close()


def test_retention_keeps_every_data_asset_versions_split(tmp_path: Path) -> None:
    """A data-asset version points at its split for good, whatever its age and whether or not
    a run the store still knows names it."""
    from shared.data_assets.local import LocalDataAssets

    blobs = LocalBlobStore(tmp_path / "blobs")
    for entry in ("split/kept", "split/gone"):
        blobs.upload_blob(f"{CACHE}/{entry}/train/MLTable", b"paths: []\n")
        blobs.upload_blob(f"{CACHE}/{entry}/_manifest.json", b"{}")
    assets = LocalDataAssets(blobs)
    assets.register("m-training-data", f"{CACHE}/split/kept", correlation_id="r1")
    store = RunStore.from_url(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    store.create_tables()
    clock = Clock()
    coordinator = Coordinator(
        bus=SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology()),
        blobs=blobs,
        store=store,
        recipes=get_recipe,
        policy=Policy(),
        retention=RetentionPolicy(max_age_s=timedelta(days=30).total_seconds()),
        clock=clock,
        data_assets=assets,
    )
    clock.advance(timedelta(days=400).total_seconds())
    assert coordinator.prune_cache() == [f"{CACHE}/split/gone"]
    assert [b.name for b in blobs.list_blobs(f"{CACHE}/split/kept/")] == [
        f"{CACHE}/split/kept/_manifest.json",
        f"{CACHE}/split/kept/train/MLTable",
    ]
    coordinator.close()
