"""species_distribution as its users run it: one group per site, one member per species, on the
embedded process stack (what ``retrainer up`` runs)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from cli.main import prepare_state, stack_env, upload_sample_data
from cli.stack import Stack, free_port
from recipes.species_distribution.sample_data import SPECIES
from shared.bootstrap import create_blob_store, create_registry
from shared.settings import CommonSettings

# The suite-wide 300 s hang guard is too short for a tuned group on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SITE = "datasets/species-sites/site-a"
GROUP_TIMEOUT_S = 900
# A loaded machine may take minutes to import every recipe's libraries at start-up.
READY_TIMEOUT_S = 300
# Tiny tuning: the point is the flow, not the model (bench/ measures tuning).
TUNING = {"max_evals": 3, "n_folds": 2, "early_stopping_rounds": 5}


def entity(species: str) -> str:
    return species.lower().replace(" ", "-")


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[tuple[httpx.Client, CommonSettings]]:
    state_dir = tmp_path_factory.mktemp("species-state")
    monkeypatch_module.setenv("RETRAINER_STATE_DIR", str(state_dir))
    settings = CommonSettings()
    upload_sample_data(settings, "species_distribution", SITE, seed=11)
    prepare_state(settings)
    port = free_port()
    env = {**stack_env(settings, port), "RETRAINER_CODE_VERSION": "e2e-species"}
    processes = Stack(env, log_dir=state_dir / "logs")
    processes.start()
    try:
        url = f"http://127.0.0.1:{port}"
        processes.wait_ready(url, timeout_s=READY_TIMEOUT_S)
        with httpx.Client(base_url=url, timeout=30.0) as client:
            yield client, settings
    finally:
        processes.stop()


def test_a_group_of_three_species_gives_each_its_champion_predicting_on_raw_rows(
    stack: tuple[httpx.Client, CommonSettings],
) -> None:
    client, settings = stack
    members = [
        {"entity": entity(s.name), "data": SITE, "params": {"species": s.name}} for s in SPECIES
    ]
    response = client.post(
        "/run-groups",
        json={"recipe": "species_distribution", "params": TUNING, "members": members},
    )
    assert response.status_code == 202, response.text
    group = wait_for(client, response.json()["id"])

    assert group["status"] == "succeeded", group
    registry = create_registry(settings)
    store = create_blob_store(settings)
    raw = pd.read_parquet(io.BytesIO(store.download_blob(f"{SITE}/features.parquet").data))
    assert raw["elevation_m"].dtype == "int64" and raw["ndvi"].isna().any()
    rows = pd.concat([raw[raw["ndvi"].isna()].head(5), raw.head(45)])

    import mlflow.pyfunc

    mlflow.set_tracking_uri(settings.resolved_mlflow_tracking_uri)
    for member in group["member_runs"]:
        name = f"species_distribution.{member['entity']}"
        assert member["model"]["name"] == name
        assert member["model"]["champion"] is True, member
        champion = registry.get_champion(name)
        assert champion is not None and champion.version == member["model"]["version"]
        assert champion.tags["entity"] == member["entity"]
        run = client.get(f"/runs/{member['run_id']}").json()
        assert run["metrics"]["roc_auc"] >= 0.7
        assert run["metrics"]["trials"] == TUNING["max_evals"]

        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        probabilities = np.asarray(model.predict(rows))
        assert probabilities.shape == (len(rows), 2)
        assert np.allclose(probabilities.sum(axis=1), 1.0)
        assert ((probabilities >= 0.0) & (probabilities <= 1.0)).all()


def wait_for(client: httpx.Client, group_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + GROUP_TIMEOUT_S
    while time.monotonic() < deadline:
        group: dict[str, Any] = client.get(f"/run-groups/{group_id}").json()
        if group["status"] != "running":
            return group
        time.sleep(0.5)
    raise AssertionError(f"group {group_id} still running: {group['counts']}")
