"""Data-asset versions on Azure ML: ``azure-ai-ml`` data assets of type mltable, with the real
SDK and only the HTTP boundary faked (tests/azureml_fake.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import ServiceRequestError

from shared.data_assets.azureml import PREFIX_TAG, RUN_TAG, AzureMLDataAssets
from shared.data_assets.port import (
    DataAssetNotFoundError,
    DataAssetRequestError,
    DataAssetUnavailableError,
    InvalidDataAssetError,
)
from tests.azureml_fake import FakeAzureML, fake_ml_client, refuse_network

NAME = "symbol_detection-training-data"
PREFIX = "artifacts/cache/split/k1/"
URI = "azureml://datastores/retrainer_artifacts/paths/cache/split/k1/train/"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeAzureML]:
    fake = FakeAzureML()
    monkeypatch.chdir(tmp_path)
    with refuse_network():
        yield fake
    assert fake.unexpected == [], "requests the fake does not serve"


@pytest.fixture
def assets(fake: FakeAzureML) -> AzureMLDataAssets:
    return AzureMLDataAssets(fake_ml_client(fake), datastore="retrainer_artifacts")


def test_a_split_is_registered_as_an_mltable_data_asset(
    assets: AzureMLDataAssets, fake: FakeAzureML
) -> None:
    version = assets.register(NAME, PREFIX, correlation_id="run-1")
    assert (version.name, version.version, version.prefix, version.path) == (
        NAME,
        "1",
        PREFIX,
        URI,
    )
    assert version.correlation_id == "run-1"
    [put] = fake.calls("PUT", "/data/")
    assert put.path == f"/data/{NAME}/versions/1"
    body = put.body["properties"]
    assert body["dataType"] == "mltable"
    assert body["dataUri"] == URI
    assert body["tags"] == {PREFIX_TAG: PREFIX, RUN_TAG: "run-1"}
    assert body["description"] == "retrainer: the split of run run-1"


def test_versions_count_up_and_a_prefix_keeps_its_version(assets: AzureMLDataAssets) -> None:
    first = assets.register(NAME, PREFIX, correlation_id="run-1")
    second = assets.register(NAME, "artifacts/cache/split/k2", correlation_id="run-2")
    again = assets.register(NAME, PREFIX, correlation_id="run-3")
    assert (first.version, second.version, again.version) == ("1", "2", "1")
    assert assets.get(NAME).version == "2"
    assert assets.get(NAME, "latest") == assets.get(NAME, "2")
    assert assets.get(NAME, "1").prefix == PREFIX
    assert [v.version for v in assets.list_versions(NAME)] == ["1", "2"]
    assert assets.prefixes() == {PREFIX, "artifacts/cache/split/k2/"}


def test_a_registration_that_collides_takes_the_next_number(
    assets: AzureMLDataAssets, fake: FakeAzureML
) -> None:
    assets.register(NAME, PREFIX, correlation_id="run-1")
    # Another registration takes version 2 between our look and our write.
    fake.fail(409, method="PUT", path=f"/data/{NAME}/versions/2")
    assert assets.register(NAME, "artifacts/cache/split/k2/", correlation_id="r").version == "2"
    assert len(fake.calls("PUT", "/data/")) == 3


def test_unknown_assets_and_versions(assets: AzureMLDataAssets) -> None:
    with pytest.raises(DataAssetNotFoundError, match="has no versions"):
        assets.get("nope")
    assets.register(NAME, PREFIX, correlation_id="run-1")
    with pytest.raises(DataAssetNotFoundError, match="has no version 9"):
        assets.get(NAME, "9")
    assert assets.list_versions("nope") == []
    with pytest.raises(InvalidDataAssetError):
        assets.register(NAME, "models/elsewhere/", correlation_id="r")


def test_an_asset_not_registered_by_retrainer_names_no_split(
    assets: AzureMLDataAssets, fake: FakeAzureML
) -> None:
    assets.register(NAME, PREFIX, correlation_id="run-1")
    fake.data[NAME]["1"]["properties"]["tags"] = {}
    with pytest.raises(DataAssetRequestError, match="no retrainer_prefix tag"):
        assets.get(NAME, "1")


def test_errors_are_translated(assets: AzureMLDataAssets, fake: FakeAzureML) -> None:
    fake.fail(503, path="/data/")
    with pytest.raises(DataAssetUnavailableError):
        assets.get(NAME)
    fake.fail(403, path="/data/")
    with pytest.raises(DataAssetRequestError, match="HTTP 403"):
        assets.get(NAME)
    fake.fail(exception=ServiceRequestError("connection refused"), path="/data/")
    with pytest.raises(DataAssetUnavailableError, match="unreachable"):
        assets.get(NAME)
