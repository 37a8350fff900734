"""Data-asset versions on the embedded default (records in the local blob store): numbering,
``latest``, idempotence per prefix, concurrent registrations, references, names."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from shared.blobs.local import LocalBlobStore
from shared.data_assets.local import LocalDataAssets
from shared.data_assets.port import (
    DataAssetNotFoundError,
    InvalidDataAssetError,
    parse_asset_reference,
)
from shared.entities import InvalidEntityError
from tests.recipe_fixtures import echo_recipe


@pytest.fixture
def assets(tmp_path: Path) -> LocalDataAssets:
    return LocalDataAssets(LocalBlobStore(tmp_path / "blobs"))


def test_versions_are_numbered_from_one_and_latest_is_the_newest(assets: LocalDataAssets) -> None:
    with pytest.raises(DataAssetNotFoundError, match="'d' has no versions"):
        assets.get("d")
    first = assets.register("d", "artifacts/cache/split/a", correlation_id="run-1")
    second = assets.register("d", "artifacts/cache/split/b/", correlation_id="run-2")
    assert (first.version, first.prefix, first.correlation_id) == (
        "1",
        "artifacts/cache/split/a/",
        "run-1",
    )
    assert (second.version, second.prefix) == ("2", "artifacts/cache/split/b/")
    assert assets.get("d") == second
    assert assets.get("d", "latest") == second
    assert assets.get("d", "1") == first
    assert [v.version for v in assets.list_versions("d")] == ["1", "2"]
    assert assets.list_versions("other") == []
    assert assets.prefixes() == {"artifacts/cache/split/a/", "artifacts/cache/split/b/"}
    assert first.reference == "asset:d@1"
    with pytest.raises(DataAssetNotFoundError, match="'d' has no version 3"):
        assets.get("d", "3")


def test_registering_a_prefix_again_returns_its_version(assets: LocalDataAssets) -> None:
    first = assets.register("d", "artifacts/cache/split/a/", correlation_id="run-1")
    assets.register("d", "artifacts/cache/split/b/", correlation_id="run-2")
    # A redelivered split, a retry, another run hitting the same cached split.
    again = assets.register("d", "artifacts/cache/split/a", correlation_id="run-3")
    assert again == first
    assert [v.version for v in assets.list_versions("d")] == ["1", "2"]
    # Another asset numbers its own versions.
    assert assets.register("e", "artifacts/cache/split/a/", correlation_id="r").version == "1"


def test_concurrent_registrations_get_distinct_versions(assets: LocalDataAssets) -> None:
    barrier = threading.Barrier(8)
    got: list[str] = []

    def register(i: int) -> None:
        barrier.wait()
        got.append(
            assets.register("d", f"artifacts/cache/split/{i}/", correlation_id=str(i)).version
        )

    threads = [threading.Thread(target=register, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got, key=int) == [str(n) for n in range(1, 9)]
    by_version = {v.version: v.prefix for v in assets.list_versions("d")}
    assert len(set(by_version.values())) == 8


@pytest.mark.parametrize(
    ("name", "version", "prefix"),
    [
        ("", "1", "artifacts/x/"),
        ("-d", "1", "artifacts/x/"),
        ("d/e", "1", "artifacts/x/"),
        ("d e", "1", "artifacts/x/"),
        ("d", "01", "artifacts/x/"),
        ("d", "x", "artifacts/x/"),
        ("d", "1", "NOT A CONTAINER/x"),
        ("d", "1", "artifacts/../x/"),
    ],
)
def test_bad_names_versions_and_prefixes_are_refused(
    assets: LocalDataAssets, name: str, version: str, prefix: str
) -> None:
    with pytest.raises(InvalidDataAssetError):
        assets.register(name, prefix, correlation_id="r")
        assets.get(name, version)


def test_asset_references() -> None:
    assert parse_asset_reference("asset:d@latest") == ("d", "latest")
    assert parse_asset_reference("asset:d@7") == ("d", "7")
    assert parse_asset_reference("asset:d") == ("d", "latest")
    for bad in ("d@1", "asset:@1", "asset:d@", "asset:d@v1", "asset:d@0", "asset:a b@1"):
        with pytest.raises(InvalidDataAssetError):
            parse_asset_reference(bad)


def test_a_recipe_names_its_asset_per_model_and_so_per_entity() -> None:
    assert echo_recipe.data_asset_name() is None
    recipe = dataclasses.replace(echo_recipe, data_asset="{model}-training-data")
    assert recipe.data_asset_name() == "echo-training-data"
    assert recipe.data_asset_name("site-a") == "echo.site-a-training-data"
    with pytest.raises(InvalidEntityError):
        recipe.data_asset_name("bad entity")
    # '=' is fine in a model name, not in an Azure ML asset name.
    with pytest.raises(InvalidDataAssetError, match="not valid"):
        recipe.data_asset_name("site=A")
    per_entity = dataclasses.replace(echo_recipe, data_asset="data-{entity}")
    assert per_entity.data_asset_name("b") == "data-b"
    with pytest.raises(InvalidDataAssetError, match="needs an entity"):
        per_entity.data_asset_name()
    with pytest.raises(ValueError, match="may use only"):
        dataclasses.replace(echo_recipe, data_asset="{recipe}-data")


def test_the_composition_root_picks_the_adapter_by_configuration(tmp_path: Path) -> None:
    from shared.bootstrap import create_data_assets
    from shared.errors import ConfigurationError
    from shared.settings import CommonSettings

    local = CommonSettings(state_dir=tmp_path, blob_local_root=tmp_path / "blobs")
    assert local.resolved_data_assets == "local"
    assert isinstance(create_data_assets(local), LocalDataAssets)
    on_azure = CommonSettings(state_dir=tmp_path, compute_gpu="azureml")
    assert on_azure.resolved_data_assets == "azureml"
    with pytest.raises(ConfigurationError, match="RETRAINER_AZUREML_WORKSPACE"):
        create_data_assets(on_azure)
    configured = CommonSettings(
        state_dir=tmp_path,
        data_assets="azureml",
        azureml_subscription_id="s",
        azureml_resource_group="g",
        azureml_workspace="w",
    )
    # Nothing is imported or connected until the first call.
    assert type(create_data_assets(configured)).__name__ == "LazyDataAssets"
