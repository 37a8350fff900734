"""An operator's promote and rollback through the API and the CLI: the tag stage's path (the
promotion lease), who/when/why on the version, the run-free audit event, and the errors."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

import cli.main as cli
from coordinator.api import create_app
from coordinator.domain import Policy
from coordinator.models import ModelChampions
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from coordinator.store import RunStore
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.promotion import PromotionOptions, lease_blob_name
from shared.telemetry import EVENT_MODEL_PROMOTED, EVENTS_LOGGER
from shared.topology import build_topology
from shared.tracking import BEST_MODEL_TAG, MlflowRegistry
from tests.recipe_fixtures import echo_recipe, only

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> MlflowRegistry:
    root = tmp_path_factory.mktemp("mlflow")
    return MlflowRegistry(f"sqlite:///{root / 'mlflow.db'}", artifact_root=root / "a")


@dataclass
class Api:
    client: TestClient
    registry: MlflowRegistry
    blobs: LocalBlobStore
    model: str

    def champion(self) -> dict[str, Any]:
        response = self.client.get(f"/models/{self.model}/champion")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def flags(self) -> dict[str, str | None]:
        return {
            v: self.registry.get_model_version(self.model, v).tags.get(BEST_MODEL_TAG)
            for v in ("1", "2")
        }


@contextlib.contextmanager
def api(
    tmp_path: Path, registry: MlflowRegistry, *, settings: CoordinatorSettings | None = None
) -> Iterator[Api]:
    """Versions 1 (score 0.5) and 2 (score 0.9) of a model of this test's own."""
    model = f"echo-{uuid.uuid4().hex[:8]}"
    experiment = registry._client.create_experiment(model)
    for score in (0.5, 0.9):
        run = registry._client.create_run(experiment)
        registry.create_model_version(
            model,
            model_uri=f"runs:/{run.info.run_id}/model",
            run_id=run.info.run_id,
            correlation_id=str(uuid.uuid4()),
            tags={"recipe": "echo", "metric.score": repr(score)},
        )
    blobs = LocalBlobStore(tmp_path / "blobs")
    store = RunStore.from_url(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    store.create_tables()
    coordinator = Coordinator(
        bus=SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology()),
        blobs=blobs,
        store=store,
        recipes=only(echo_recipe),
        policy=Policy(),
    )
    champions = ModelChampions(
        registry=lambda: registry,
        blobs=blobs,
        recipes=only(echo_recipe),
        options=PromotionOptions(lease_s=15, wait_s=0),
    )
    app = create_app(settings, coordinator=coordinator, champions=champions, run_loops=False)
    try:
        with TestClient(app) as client:
            yield Api(client, registry, blobs, model)
    finally:
        coordinator.close()


class Recorded(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def audit() -> Iterator[list[logging.LogRecord]]:
    """The custom events emitted meanwhile (what the exporters would send)."""
    handler = Recorded()
    logger = logging.getLogger(EVENTS_LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def properties(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k.startswith("retrainer.")}


def test_an_operator_promotes_then_rolls_back_through_the_cli(
    tmp_path: Path,
    registry: MlflowRegistry,
    audit: list[logging.LogRecord],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with api(tmp_path, registry) as stack:
        monkeypatch.setattr(cli, "_client", lambda _args: contextlib.nullcontext(stack.client))
        monkeypatch.setattr(cli, "_local_user", lambda: "alice")
        assert stack.client.get(f"/models/{stack.model}/champion").status_code == 404

        assert cli.main(["models", "promote", stack.model, "2", "--reason", "first"]) == 0
        assert f"champion  {stack.model} v2" in capsys.readouterr().out
        assert cli.main(["models", "promote", stack.model, "1", "--reason", "v2 drifts"]) == 0
        out = capsys.readouterr().out
        assert f"champion  {stack.model} v1 (replaced v2)" in out
        assert "alice (unauthenticated, from testclient)" in out

        champion = stack.champion()
        assert (champion["version"], champion["previous_version"]) == ("1", "2")
        assert champion["reason"] == "v2 drifts"
        assert champion["promoted_by"] == "alice (unauthenticated, from testclient)"
        assert champion["promoted_at"] is not None
        assert champion["metrics"] == {"score": 0.5}
        assert stack.flags() == {"1": "true", "2": "false"}

        assert cli.main(["models", "promote", stack.model, "1", "--reason", "again"]) == 0
        assert "is the champion already" in capsys.readouterr().out
        assert stack.champion()["reason"] == "v2 drifts", "a no-op keeps the record"
        assert cli.main(["models", "champion", stack.model]) == 0
        assert "reason    v2 drifts" in capsys.readouterr().out

    promoted = [properties(r) for r in audit if r.getMessage().startswith(EVENT_MODEL_PROMOTED)]
    assert len(promoted) == 2, "one audit entry per change, none for the no-op"
    rollback = promoted[-1]
    assert rollback["retrainer.trigger"] == "manual"
    assert rollback["retrainer.model_name"] == stack.model
    assert rollback["retrainer.model_version"] == "1"
    assert rollback["retrainer.previous_version"] == "2"
    assert rollback["retrainer.actor"] == "alice (unauthenticated, from testclient)"
    assert rollback["retrainer.reason"] == "v2 drifts"
    assert rollback["retrainer.primary_metric"] == "score"
    assert rollback["retrainer.primary_metric_value"] == 0.5
    assert "retrainer.correlation_id" not in rollback, "no run"


def test_refusals_name_what_is_wrong(tmp_path: Path, registry: MlflowRegistry) -> None:
    with api(tmp_path, registry) as stack:
        path = f"/models/{stack.model}/champion"
        missing = stack.client.post(path, json={"version": "7", "reason": "x"})
        assert missing.status_code == 404
        assert "version 7" in missing.json()["detail"]
        unknown = stack.client.get("/models/no-such-model/champion")
        assert unknown.status_code == 404
        assert "has no champion" in unknown.json()["detail"]
        for body in (
            {"version": "two", "reason": "x"},
            {"version": "0", "reason": "x"},
            {"version": "2", "reason": ""},
            {"version": "2", "reason": "x" * 501},
            {"version": "2"},
            {"version": "2", "reason": "x", "requested_by": "y" * 101},
        ):
            assert stack.client.post(path, json=body).status_code == 422, body
        assert stack.client.get(f"/models/{'m' * 257}/champion").status_code == 422

        # A tag stage of the same model holds the promotion lease: try again later.
        lease = stack.blobs.upload_blob(lease_blob_name(stack.model), b"")
        assert lease.size == 0
        held = stack.blobs.acquire_blob_lease(lease_blob_name(stack.model), duration_s=15)
        busy = stack.client.post(path, json={"version": "2", "reason": "x"})
        assert busy.status_code == 503
        assert int(busy.headers["retry-after"]) > 0
        assert "being promoted by someone else" in busy.json()["detail"]
        stack.blobs.release_blob_lease(lease_blob_name(stack.model), held)
        assert stack.client.post(path, json={"version": "2", "reason": "x"}).status_code == 200


def test_an_authenticated_caller_is_recorded_as_itself(
    tmp_path: Path, registry: MlflowRegistry
) -> None:
    settings = CoordinatorSettings(state_dir=tmp_path, api_token=SecretStr(TOKEN))
    with api(tmp_path, registry, settings=settings) as stack:
        path = f"/models/{stack.model}/champion"
        body = {"version": "2", "reason": "x", "requested_by": "mallory"}
        assert stack.client.post(path, json=body).status_code == 401
        assert stack.client.get(path).status_code == 401
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert stack.client.post(path, json=body, headers=headers).status_code == 200
        champion = stack.client.get(path, headers=headers).json()
        assert champion["promoted_by"] == "static-token", "the principal, not the claim"


def test_the_promotion_history_lists_each_change_in_order_from_the_coordinators_store(
    tmp_path: Path, registry: MlflowRegistry
) -> None:
    with api(tmp_path, registry) as stack:
        history = stack.client.get(f"/models/{stack.model}/promotions")
        assert history.status_code == 200
        assert history.json() == {"model_name": stack.model, "champion": None, "promotions": []}
        for version, reason in (("2", "first"), ("1", "v2 drifts"), ("1", "again")):
            body = {"version": version, "reason": reason, "requested_by": "alice"}
            assert stack.client.post(f"/models/{stack.model}/champion", json=body).is_success

        body = stack.client.get(f"/models/{stack.model}/promotions").json()

    assert body["champion"] == "1"
    steps = [
        (p["version"], p["previous_version"], p["reason"], p["run_id"]) for p in body["promotions"]
    ]
    assert steps == [("2", None, "first", None), ("1", "2", "v2 drifts", None)], "no-op left out"
    assert body["promotions"][1]["promoted_by"] == "alice (unauthenticated, from testclient)"
    assert body["promotions"][0]["promoted_at"] <= body["promotions"][1]["promoted_at"]
