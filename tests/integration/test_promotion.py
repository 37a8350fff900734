"""``shared.promotion.change_champion`` against a real MLflow registry (SQLite) and the local
blob store: the promotion lease, who/when/why, collisions and a lost lease."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST

from shared.blobs.local import LocalBlobStore
from shared.errors import BlobLeasedError, BlobLeaseLostError
from shared.promotion import (
    PREVIOUS_CHAMPION_TAG,
    PROMOTED_AT_TAG,
    PROMOTED_BY_TAG,
    PROMOTION_REASON_TAG,
    Promotion,
    PromotionBusyError,
    PromotionOptions,
    change_champion,
    lease_blob_name,
)
from shared.tracking import (
    BEST_MODEL_TAG,
    MlflowRegistry,
    ModelVersionRecord,
    RegistryConflictError,
)

FAST = PromotionOptions(lease_s=15, wait_s=0, poll_s=0.01, max_poll_s=0.01)
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowRegistry, str]:
    """One tracking database for the module: creating one costs seconds."""
    root = tmp_path_factory.mktemp("mlflow")
    registry = MlflowRegistry(f"sqlite:///{root / 'mlflow.db'}", artifact_root=root / "a")
    experiment = registry._client.create_experiment("e", artifact_location=(root / "a").as_uri())
    return registry, experiment


@pytest.fixture
def registry(tracking: tuple[MlflowRegistry, str]) -> MlflowRegistry:
    return tracking[0]


@pytest.fixture
def model(tracking: tuple[MlflowRegistry, str]) -> str:
    """A model of this test's own, with versions 1, 2, 3 and no champion."""
    registry, experiment = tracking
    name = f"clusters-{uuid.uuid4().hex[:8]}"
    for correlation_id in ("r1", "r2", "r3"):
        run = registry._client.create_run(experiment)
        registry.create_model_version(
            name,
            model_uri=f"runs:/{run.info.run_id}/model",
            run_id=run.info.run_id,
            correlation_id=correlation_id,
            tags={},
        )
    return name


def always(reason: str) -> Any:
    return lambda champion: Promotion(True, reason)


def flags(registry: MlflowRegistry, model: str) -> dict[str, str | None]:
    return {
        v: registry.get_model_version(model, v).tags.get(BEST_MODEL_TAG) for v in ("1", "2", "3")
    }


def test_a_promotion_records_who_when_why_and_what_it_replaced(
    registry: MlflowRegistry, model: str, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    first = change_champion(
        registry, blobs, model, "1", always("first"), actor="tag stage", options=FAST
    )
    assert (first.promoted, first.champion_version, first.previous_version) == (True, "1", None)

    seen: list[ModelVersionRecord | None] = []

    def rollback(champion: ModelVersionRecord | None) -> Promotion:
        seen.append(champion)
        return Promotion(True, "v2 drifts")

    change_champion(registry, blobs, model, "2", always("better"), actor="tag", options=FAST)
    change = change_champion(
        registry, blobs, model, "1", rollback, actor="alice", options=FAST, clock=lambda: AT
    )

    assert [c.version for c in seen if c] == ["2"], "decides on the champion it read"
    assert (change.champion_version, change.previous_version, change.at) == ("1", "2", AT)
    champion = registry.get_champion(model)
    assert champion is not None and champion.version == "1"
    assert champion.tags[PROMOTED_BY_TAG] == "alice"
    assert champion.tags[PROMOTED_AT_TAG] == "2026-01-02T03:04:05+00:00"
    assert champion.tags[PROMOTION_REASON_TAG] == "v2 drifts"
    assert champion.tags[PREVIOUS_CHAMPION_TAG] == "2"
    assert flags(registry, model) == {"1": "true", "2": "false", "3": None}
    # Released: the next promotion takes the lease at once.
    blobs.release_blob_lease(
        lease_blob_name(model), blobs.acquire_blob_lease(lease_blob_name(model), duration_s=15)
    )


def test_a_refused_candidate_changes_nothing(
    registry: MlflowRegistry, model: str, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    change_champion(registry, blobs, model, "1", always("first"), actor="t", options=FAST)
    change = change_champion(
        registry,
        blobs,
        model,
        "2",
        lambda champion: Promotion(False, "not better"),
        actor="t",
        options=FAST,
    )
    assert (change.promoted, change.champion_version, change.reason) == (False, "1", "not better")
    assert flags(registry, model) == {"1": "true", "2": None, "3": None}


def test_every_stray_best_model_flag_is_cleared(
    registry: MlflowRegistry, model: str, tmp_path: Path
) -> None:
    """What concurrent promotions left before the lease: two versions flagged best."""
    for version in ("1", "2"):
        registry._client.set_model_version_tag(model, version, BEST_MODEL_TAG, "true")
    change_champion(
        registry, LocalBlobStore(tmp_path / "b"), model, "3", always("x"), actor="t", options=FAST
    )
    assert flags(registry, model) == {"1": "false", "2": "false", "3": "true"}


def test_promoting_the_champion_again_keeps_its_record(
    registry: MlflowRegistry, model: str, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    change_champion(registry, blobs, model, "2", always("first"), actor="run a", options=FAST)
    registry._client.set_model_version_tag(model, "3", BEST_MODEL_TAG, "true")
    change_champion(registry, blobs, model, "2", always("again"), actor="run b", options=FAST)
    champion = registry.get_champion(model)
    assert champion is not None
    assert (champion.tags[PROMOTED_BY_TAG], champion.tags[PROMOTION_REASON_TAG]) == (
        "run a",
        "first",
    )
    assert flags(registry, model)["3"] == "false"


def test_a_held_lease_makes_others_wait_then_give_up_retryably(
    registry: MlflowRegistry, model: str, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    change_champion(registry, blobs, model, "1", always("first"), actor="t", options=FAST)
    held = blobs.acquire_blob_lease(lease_blob_name(model), duration_s=60)
    with pytest.raises(PromotionBusyError, match="being promoted by someone else"):
        change_champion(registry, blobs, model, "2", always("x"), actor="t", options=FAST)
    champion = registry.get_champion(model)
    assert champion is not None and champion.version == "1"
    blobs.release_blob_lease(lease_blob_name(model), held)
    change_champion(registry, blobs, model, "2", always("x"), actor="t", options=FAST)


def test_a_colliding_registry_write_is_made_again(
    registry: MlflowRegistry, model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow reports a unique-constraint collision as BAD_REQUEST; it is retryable."""
    real = registry._client.set_registered_model_alias
    calls = []

    def collides_once(*args: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: "
                "registered_model_aliases.workspace, registered_model_aliases.name, "
                "registered_model_aliases.alias",
                error_code=BAD_REQUEST,
            )
        real(*args)

    monkeypatch.setattr(registry._client, "set_registered_model_alias", collides_once)
    change = change_champion(
        registry, LocalBlobStore(tmp_path / "b"), model, "2", always("x"), actor="t", options=FAST
    )
    assert change.promoted and len(calls) == 2
    assert flags(registry, model)["2"] == "true"

    always_collides = PromotionOptions(lease_s=15, wait_s=0, conflict_attempts=1)
    calls.clear()
    with pytest.raises(RegistryConflictError):
        change_champion(
            registry,
            LocalBlobStore(tmp_path / "b"),
            model,
            "3",
            always("x"),
            actor="t",
            options=always_collides,
        )


def test_a_lease_lost_before_writing_writes_nothing(
    registry: MlflowRegistry, model: str, tmp_path: Path
) -> None:
    now = [1000.0]
    blobs = LocalBlobStore(tmp_path / "blobs", clock=lambda: now[0])
    rival: list[str] = []

    def stalls(champion: ModelVersionRecord | None) -> Promotion:
        now[0] += 61  # the holder stalls past its lease, and someone else takes it
        rival.append(blobs.acquire_blob_lease(lease_blob_name(model), duration_s=15))
        return Promotion(True, "x")

    with pytest.raises(BlobLeaseLostError):
        change_champion(registry, blobs, model, "1", stalls, actor="t", options=FAST)
    assert registry.get_champion(model) is None
    with pytest.raises(BlobLeasedError):  # the rival's lease was left alone
        blobs.acquire_blob_lease(lease_blob_name(model), duration_s=15)
