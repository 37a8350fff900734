"""The Azure adapter's file-bulk path through obstore (``shared/blobs/azure_bulk.py``) against
Azurite: what ``download_prefix``/``upload_directory`` use when no SDK client options are
given. The port's contract for the same store runs in test_blob_azure.py."""

from __future__ import annotations

import base64
import multiprocessing
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

import shared.blobs.azure_bulk as azure_bulk
from shared.blobs.azure import AzureBlobStore
from shared.blobs.transfer import BulkFileTransfer, download_prefix, upload_directory
from shared.errors import BlobLeasedError, BlobNotFoundError, ConfigurationError
from tests.azurite import ACCOUNT_KEY, ACCOUNT_NAME, connection_string
from tests.waiting import WAIT_S


@pytest.fixture
def container() -> str:
    return f"bulk-{uuid.uuid4().hex[:12]}"


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _write_tree(root: Path, sizes: list[int]) -> dict[str, bytes]:
    rng = random.Random(len(sizes))
    files = {f"d{i % 3}/f{i:03d}.bin": rng.randbytes(size) for i, size in enumerate(sizes)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _endpoint(azurite: str) -> str:
    return azurite.split("BlobEndpoint=")[1].rstrip(";")


def test_a_store_without_client_options_moves_directories_through_obstore(
    azurite: str, container: str, tmp_path: Path
) -> None:
    files = _write_tree(tmp_path / "src", [0, 1, 100, 5000] * 10)
    with AzureBlobStore.from_connection_string(azurite, max_concurrency=8) as store:
        assert isinstance(store, BulkFileTransfer)
        assert store.bulk_client == "obstore"
        # Into a container that does not exist yet: created on the first write.
        uploaded = upload_directory(store, tmp_path / "src", f"{container}/run")
        assert list(uploaded) == sorted(f"{container}/run/{rel}" for rel in files)
        assert {p.name: p.etag for p in store.list_blobs(f"{container}/run/")} == uploaded
        downloaded = download_prefix(store, f"{container}/run", tmp_path / "dest")
        assert downloaded == {name.split("/", 2)[2]: etag for name, etag in uploaded.items()}
        assert _tree(tmp_path / "dest") == files
        # The etags are the port's: a conditional write through the SDK accepts them.
        name = next(iter(uploaded))
        store.upload_blob(name, b"changed", if_match=uploaded[name])


def test_client_options_keep_the_sdk_and_both_paths_agree(
    azurite: str, container: str, tmp_path: Path
) -> None:
    files = _write_tree(tmp_path / "src", [10, 2000] * 6)
    with (
        AzureBlobStore.from_connection_string(azurite, retry_total=2) as sdk,
        AzureBlobStore.from_connection_string(azurite, bulk_client="obstore") as fast,
    ):
        assert sdk.bulk_client == "sdk"
        assert fast.bulk_client == "obstore"
        upload_directory(sdk, tmp_path / "src", f"{container}/a")
        upload_directory(fast, tmp_path / "src", f"{container}/b")
        assert download_prefix(fast, f"{container}/a", tmp_path / "a") == download_prefix(
            sdk, f"{container}/a", tmp_path / "a2"
        )
        download_prefix(sdk, f"{container}/b", tmp_path / "b")
        assert _tree(tmp_path / "a") == _tree(tmp_path / "b") == files


def test_large_blobs_are_streamed_both_ways(
    azurite: str, container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the thresholds (made small here) a download is written chunk by chunk and an
    upload sent in blocks read from the file; between collected at once and streamed, a body
    is awaited whole."""
    monkeypatch.setattr(azure_bulk, "COLLECT_SYNC_UP_TO", 1024)
    monkeypatch.setattr(azure_bulk, "STREAM_ABOVE", 64 * 1024)
    monkeypatch.setattr(azure_bulk, "STREAM_CHUNK", 16 * 1024)
    monkeypatch.setattr(azure_bulk, "MULTIPART_ABOVE", 64 * 1024)
    monkeypatch.setattr(azure_bulk, "MULTIPART_CHUNK", 5 * 1024 * 1024)
    files = _write_tree(tmp_path / "src", [300 * 1024, 10, 6 * 1024 * 1024 + 7, 20 * 1024])
    with AzureBlobStore.from_connection_string(azurite) as store:
        uploaded = upload_directory(store, tmp_path / "src", f"{container}/big")
        for name, etag in uploaded.items():
            assert store.get_blob_properties(name).etag == etag
        download_prefix(store, f"{container}/big", tmp_path / "dest")
        assert _tree(tmp_path / "dest") == files


@pytest.mark.parametrize("kind", ["named-key", "sas"])
def test_an_account_url_with_a_credential_uses_obstore(
    azurite: str, container: str, kind: str, tmp_path: Path
) -> None:
    credential: object = AzureNamedKeyCredential(ACCOUNT_NAME, ACCOUNT_KEY)
    if kind == "sas":
        credential = generate_account_sas(
            ACCOUNT_NAME,
            ACCOUNT_KEY,
            ResourceTypes(container=True, object=True),
            AccountSasPermissions(read=True, write=True, list=True, create=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
    files = _write_tree(tmp_path / "src", [1, 2, 3])
    with AzureBlobStore(_endpoint(azurite), credential) as store:
        assert store.bulk_client == "obstore"
        upload_directory(store, tmp_path / "src", f"{container}/{kind}")
        download_prefix(store, f"{container}/{kind}", tmp_path / "dest")
        assert _tree(tmp_path / "dest") == files


def test_errors_are_the_ports(azurite: str, container: str, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    with AzureBlobStore.from_connection_string(azurite) as store:
        store.upload_blob(f"{container}/leased/f", b"held")
        lease = store.acquire_blob_lease(f"{container}/leased/f", duration_s=15)
        try:
            with pytest.raises(BlobLeasedError):
                upload_directory(store, tmp_path / "src", f"{container}/leased")
        finally:
            store.release_blob_lease(f"{container}/leased/f", lease)
        with pytest.raises(BlobNotFoundError):
            store.download_files([(f"{container}/missing", tmp_path / "missing")])

    port = int(azurite.split("127.0.0.1:")[1].split("/")[0])
    wrong = base64.b64encode(b"not the key" * 6).decode()
    with AzureBlobStore.from_connection_string(connection_string(port, key=wrong)) as store:
        with pytest.raises(ConfigurationError):
            upload_directory(store, tmp_path / "src", f"{container}/x")
        with pytest.raises(ConfigurationError):
            store.download_files([(f"{container}/leased/f", tmp_path / "g")])


def test_a_sas_never_appears_in_an_error(azurite: str, container: str, tmp_path: Path) -> None:
    sas = generate_account_sas(
        ACCOUNT_NAME,
        ACCOUNT_KEY,
        ResourceTypes(container=True, object=True),
        AccountSasPermissions(read=True),  # no write: uploads are refused
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    (tmp_path / "f").write_bytes(b"x")
    with AzureBlobStore(_endpoint(azurite), sas) as store:
        with pytest.raises(Exception) as raised:
            store.upload_files([(f"{container}/f", tmp_path / "f")])
        signature = dict(part.split("=", 1) for part in sas.split("&"))["sig"]
        assert signature not in str(raised.value)
        assert signature not in repr(raised.value.__cause__)


def _download_in_child(store: AzureBlobStore, prefix: str, dest: Path, results: Any) -> None:
    results.put((store.bulk_client, download_prefix(store, prefix, dest)))


def test_a_forked_child_moves_blobs_through_the_sdk(
    azurite: str, container: str, tmp_path: Path
) -> None:
    """obstore's runtime threads do not survive a fork: a child of a process that used it
    gets the SDK path instead of a call that never returns."""
    files = _write_tree(tmp_path / "src", [5, 50])
    with AzureBlobStore.from_connection_string(azurite) as store:
        uploaded = upload_directory(store, tmp_path / "src", f"{container}/f")
        ctx = multiprocessing.get_context("fork")
        results: Any = ctx.Queue()
        child = ctx.Process(
            target=_download_in_child, args=(store, f"{container}/f", tmp_path / "d", results)
        )
        child.start()
        bulk_client, downloaded = results.get(timeout=WAIT_S)
        child.join(WAIT_S)
        assert bulk_client == "sdk"
        assert set(downloaded.values()) == set(uploaded.values())
        assert _tree(tmp_path / "d") == files
        assert store.bulk_client == "obstore"
