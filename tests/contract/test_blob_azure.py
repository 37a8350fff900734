"""The blob contract against ``AzureBlobStore`` on a real Azurite, plus what only this adapter
has: the bulk fast path, settings, SDK error translation and the sync-over-async bridge."""

from __future__ import annotations

import base64
import gc
import json
import multiprocessing
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import (
    AccountSasPermissions,
    BlobServiceClient,
    ResourceTypes,
    generate_account_sas,
)
from pydantic import SecretStr

import shared.blobs.azure as azure_module
from shared.blobs.azure import AzureBlobStore
from shared.blobs.port import BlobContent, BlobProperties, BlobStore
from shared.blobs.transfer import BulkBlobTransfer, download_prefix, holds_blobs, upload_directory
from shared.bootstrap import create_blob_store
from shared.errors import (
    BlobConditionFailedError,
    BlobExistsError,
    BlobNotFoundError,
    BlobStoreUnavailableError,
    ConfigurationError,
    InvalidBlobNameError,
    PermanentError,
    RetryableError,
)
from shared.settings import CommonSettings
from tests.azurite import ACCOUNT_KEY, ACCOUNT_NAME, connection_string, free_port
from tests.contract.blob_contract import BlobStoreContract

# Small enough that the contract's 6 KB and 16 KB blobs go up as block lists and come down in
# ranged chunks: the SDK's multi-request paths, where conditions sit on the final commit.
CHUNKED: dict[str, Any] = {
    "max_single_put_size": 4 * 1024,
    "max_block_size": 1024,
    "max_single_get_size": 4 * 1024,
    "max_chunk_get_size": 1024,
}
# No retries and short timeouts: a failure shows up at once.
FAIL_FAST: dict[str, Any] = {"retry_total": 0, "connection_timeout": 2, "read_timeout": 1}
BLOB_ENV = [
    "RETRAINER_BLOB",
    "RETRAINER_BLOB_CONNECTION_STRING",
    "RETRAINER_BLOB_ACCOUNT_URL",
    "RETRAINER_BLOB_MAX_CONCURRENCY",
]


@pytest.fixture(scope="module")
def azure_store(azurite: str) -> Iterator[AzureBlobStore]:
    with AzureBlobStore.from_connection_string(azurite) as store:
        yield store


@pytest.fixture(scope="module")
def chunked_store(azurite: str) -> Iterator[AzureBlobStore]:
    with AzureBlobStore.from_connection_string(azurite, **CHUNKED) as store:
        yield store


class TestAzureBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, azure_store: AzureBlobStore) -> BlobStore:
        return azure_store


class TestAzureBlobStoreChunked(BlobStoreContract):
    @pytest.fixture
    def store(self, chunked_store: AzureBlobStore) -> BlobStore:
        return chunked_store


@pytest.fixture
def store(azure_store: AzureBlobStore) -> AzureBlobStore:
    return azure_store


@pytest.fixture
def container() -> str:
    return f"az-{uuid.uuid4().hex[:20]}"


@pytest.fixture
def sdk(azurite: str) -> Iterator[BlobServiceClient]:
    """The plain (sync) SDK, to reach around the adapter."""
    with BlobServiceClient.from_connection_string(azurite) as client:
        yield client


class InFlight:
    """Counts the store's HTTP requests in flight (SDK hooks run on the store's loop)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.total = 0

    def on_request(self, request: Any) -> None:
        self.now += 1
        self.total += 1
        self.peak = max(self.peak, self.now)

    def on_response(self, response: Any) -> None:
        self.now -= 1

    @property
    def hooks(self) -> dict[str, Any]:
        return {"raw_request_hook": self.on_request, "raw_response_hook": self.on_response}


class PortOnly:
    """The same store seen through the port alone: transfer helpers take the sequential path."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner

    def upload_blob(
        self, name: str, data: bytes, *, overwrite: bool = True, if_match: str | None = None
    ) -> BlobProperties:
        return self.inner.upload_blob(name, data, overwrite=overwrite, if_match=if_match)

    def download_blob(self, name: str) -> BlobContent:
        return self.inner.download_blob(name)

    def get_blob_properties(self, name: str) -> BlobProperties:
        return self.inner.get_blob_properties(name)

    def list_blobs(self, prefix: str) -> Iterator[BlobProperties]:
        return self.inner.list_blobs(prefix)

    def delete_blob(self, name: str, *, if_match: str | None = None) -> None:
        self.inner.delete_blob(name, if_match=if_match)

    def acquire_blob_lease(self, name: str, *, duration_s: int) -> str:
        return self.inner.acquire_blob_lease(name, duration_s=duration_s)

    def renew_blob_lease(self, name: str, lease_id: str) -> None:
        self.inner.renew_blob_lease(name, lease_id)

    def release_blob_lease(self, name: str, lease_id: str) -> None:
        self.inner.release_blob_lease(name, lease_id)


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("blob-loop")]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# -- bulk transfers ------------------------------------------------------------------------


def _write_tree(root: Path, count: int) -> dict[str, bytes]:
    rng = random.Random(count)
    files = {}
    for i in range(count):
        rel = f"part-{i % 7}/sub-{i % 3}/file-{i:04d}.bin" if i % 5 else f"top-{i:04d}.csv"
        files[rel] = rng.randbytes(rng.choice([0, 1, 100, 1024, 5000]))
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_bulk_round_trip_of_hundreds_of_blobs(azurite: str, container: str, tmp_path: Path) -> None:
    files = _write_tree(tmp_path / "src", 300)
    counter = InFlight()
    with AzureBlobStore.from_connection_string(
        azurite, max_concurrency=16, **counter.hooks
    ) as store:
        assert isinstance(store, BulkBlobTransfer)
        uploaded = upload_directory(store, tmp_path / "src", f"{container}/run")
        # Bounded, and concurrent: the sequential path would never have two in flight.
        assert 1 < counter.peak <= 16
        assert list(uploaded) == sorted(f"{container}/run/{rel}" for rel in files)
        listed = {p.name: p.etag for p in store.list_blobs(f"{container}/run/")}
        assert listed == uploaded

        counter.peak = 0
        downloaded = download_prefix(store, f"{container}/run", tmp_path / "dest")
        assert 1 < counter.peak <= 16
        assert downloaded == {name.split("/", 2)[2]: etag for name, etag in uploaded.items()}
        assert list(downloaded) == sorted(downloaded)  # listing order, as the sequential path
        assert _tree(tmp_path / "dest") == files

        # The sequential path over the same blobs gives the same answer.
        assert download_prefix(PortOnly(store), f"{container}/run", tmp_path / "seq") == downloaded
        assert _tree(tmp_path / "seq") == files


def test_upload_directory_sequential_and_bulk_agree(
    store: AzureBlobStore, container: str, tmp_path: Path
) -> None:
    files = _write_tree(tmp_path / "src", 40)
    bulk = upload_directory(store, tmp_path / "src", f"{container}/bulk")
    seq = upload_directory(PortOnly(store), tmp_path / "src", f"{container}/seq")
    assert [n.replace("/bulk/", "/x/") for n in bulk] == [n.replace("/seq/", "/x/") for n in seq]
    for prefix in ("bulk", "seq"):
        download_prefix(store, f"{container}/{prefix}", tmp_path / prefix)
        assert _tree(tmp_path / prefix) == files


def test_download_many_raises_the_first_error_and_the_store_goes_on(
    store: AzureBlobStore, container: str
) -> None:
    names = [f"{container}/m/{i:03d}" for i in range(50)]
    for name in names:
        store.upload_blob(name, name.encode())
    with pytest.raises(BlobNotFoundError):
        list(store.download_many([*names[:20], f"{container}/m/missing", *names[20:]]))
    # An early stop abandons the rest without hanging.
    stream = store.download_many(names)
    first = next(stream)
    assert first.data == first.properties.name.encode()
    stream.close()  # type: ignore[attr-defined]
    contents = {c.properties.name: c.data for c in store.download_many(names)}
    assert contents == {name: name.encode() for name in names}


def test_download_many_validates_every_name_first(azurite: str, container: str) -> None:
    counter = InFlight()
    with AzureBlobStore.from_connection_string(azurite, **counter.hooks) as store:
        store.upload_blob(f"{container}/ok", b"x")
        requests = counter.total
        with pytest.raises(InvalidBlobNameError):
            store.download_many([f"{container}/ok", f"{container}/../escape"])
        assert counter.total == requests


def test_upload_many_finishes_what_it_started_before_raising(
    store: AzureBlobStore, container: str
) -> None:
    def items() -> Iterator[tuple[str, bytes]]:
        for i in range(50):
            yield f"{container}/u/{i:03d}", b"x"
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        store.upload_many(items())
    # Every upload taken before the error had finished when it was raised.
    assert len(list(store.list_blobs(f"{container}/u/"))) == 50


def test_upload_many_stops_taking_items_after_a_failed_upload(azurite: str, container: str) -> None:
    taken = 0

    def items() -> Iterator[tuple[str, bytes]]:
        nonlocal taken
        for i in range(200):
            taken += 1
            yield f"{container}/s/{i:03d}", b"new"

    with AzureBlobStore.from_connection_string(azurite, max_concurrency=4) as store:
        kept = store.upload_blob(f"{container}/s/000", b"kept")
        with pytest.raises(BlobExistsError):
            store.upload_many(items(), overwrite=False)
        assert taken < 200
        assert store.download_blob(f"{container}/s/000").properties == kept
        assert len(list(store.list_blobs(f"{container}/s/"))) < 200


def test_upload_many_is_bounded(azurite: str, container: str) -> None:
    counter = InFlight()
    with AzureBlobStore.from_connection_string(azurite, max_concurrency=4, **counter.hooks) as s:
        result = s.upload_many((f"{container}/b/{i:03d}", b"%d" % i) for i in range(60))
        assert 1 < counter.peak <= 4
        assert list(result) == [f"{container}/b/{i:03d}" for i in range(60)]
        assert [p.etag for p in s.list_blobs(f"{container}/b/")] == [
            p.etag for p in result.values()
        ]


# -- adapter semantics beyond the contract -------------------------------------------------


def test_missing_container(store: AzureBlobStore, container: str) -> None:
    name = f"{container}/x"
    with pytest.raises(BlobNotFoundError):
        store.download_blob(name)
    with pytest.raises(BlobNotFoundError):
        store.get_blob_properties(name)
    with pytest.raises(BlobNotFoundError):
        store.delete_blob(name)
    with pytest.raises(BlobNotFoundError):
        store.delete_blob(name, if_match="0x1")
    with pytest.raises(BlobConditionFailedError):
        store.upload_blob(name, b"x", if_match="0x1")
    assert list(store.list_blobs(f"{container}/")) == []
    store.upload_blob(name, b"x", overwrite=False)  # creates the container
    assert store.download_blob(name).data == b"x"


def test_delete_if_match_of_a_missing_blob_is_not_found(
    store: AzureBlobStore, container: str
) -> None:
    # Azure answers 412 here; the port (like the local adapter) says "not found".
    other = store.upload_blob(f"{container}/other", b"x")
    with pytest.raises(BlobNotFoundError):
        store.delete_blob(f"{container}/missing", if_match=other.etag)


def test_create_only_with_if_match_never_writes(store: AzureBlobStore, container: str) -> None:
    name = f"{container}/both"
    with pytest.raises(BlobConditionFailedError):
        store.upload_blob(name, b"x", overwrite=False, if_match="0x1")
    current = store.upload_blob(name, b"v1")
    with pytest.raises(BlobExistsError):
        store.upload_blob(name, b"v2", overwrite=False, if_match=current.etag)
    assert store.download_blob(name).properties == current


def test_etags_are_unquoted_and_accepted_either_way(store: AzureBlobStore, container: str) -> None:
    name = f"{container}/etag"
    v1 = store.upload_blob(name, b"v1")
    assert '"' not in v1.etag
    v2 = store.upload_blob(name, b"v2", if_match=f'"{v1.etag}"')
    assert store.get_blob_properties(name).etag == v2.etag
    with pytest.raises(BlobConditionFailedError):
        store.delete_blob(name, if_match=f'"{v1.etag}"')
    store.delete_blob(name, if_match=f'"{v2.etag}"')
    with pytest.raises(BlobNotFoundError):
        store.get_blob_properties(name)


def test_listing_skips_names_the_port_refuses(
    store: AzureBlobStore, sdk: BlobServiceClient, container: str
) -> None:
    store.upload_blob(f"{container}/dir/ok", b"x")
    foreign = sdk.get_container_client(container)
    for odd in ("dir/trailing/", "dir//double"):
        foreign.upload_blob(odd, b"odd")
    assert [p.name for p in store.list_blobs(f"{container}/dir/")] == [f"{container}/dir/ok"]


def test_concurrent_first_writes_into_a_new_container(
    store: AzureBlobStore, container: str
) -> None:
    names = [f"{container}/w/{i:02d}" for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: store.upload_blob(n, n.encode()), names))
    assert [p.name for p in store.list_blobs(container)] == names


def test_concurrent_if_match_updates_from_threads_lose_nothing(
    store: AzureBlobStore, container: str
) -> None:
    name, workers, times = f"{container}/counter.json", 4, 20
    store.upload_blob(name, b"0")

    def increment() -> None:
        for _ in range(times):
            while True:
                current = store.download_blob(name)
                value = json.loads(current.data)
                try:
                    store.upload_blob(
                        name, json.dumps(value + 1).encode(), if_match=current.properties.etag
                    )
                    break
                except BlobConditionFailedError:
                    time.sleep(random.uniform(0, 0.005))

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(increment) for _ in range(workers)]:
            future.result()
    assert json.loads(store.download_blob(name).data) == workers * times


def test_a_blob_larger_than_one_request(chunked_store: AzureBlobStore, container: str) -> None:
    data = os.urandom(50_000)  # about 50 blocks up and 50 ranges down
    name = f"{container}/big.bin"
    first = chunked_store.upload_blob(name, data, overwrite=False)
    with pytest.raises(BlobExistsError):
        chunked_store.upload_blob(name, b"y" * 10_000, overwrite=False)
    content = chunked_store.download_blob(name)
    assert content.data == data
    assert content.properties == first
    with pytest.raises(BlobConditionFailedError):
        chunked_store.upload_blob(name, b"z" * 10_000, if_match="0x8D0000000000000")
    assert chunked_store.download_blob(name).data == data


# -- settings ------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in BLOB_ENV:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_azure_without_connection_settings_is_a_configuration_error(
    clean_env: pytest.MonkeyPatch,
) -> None:
    settings = CommonSettings(_env_file=None, blob="azure")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="RETRAINER_BLOB_CONNECTION_STRING"):
        create_blob_store(settings)


def test_settings_choose_the_azure_adapter(
    clean_env: pytest.MonkeyPatch, azurite: str, container: str
) -> None:
    clean_env.setenv("RETRAINER_BLOB", "azure")
    clean_env.setenv("RETRAINER_BLOB_CONNECTION_STRING", azurite)
    clean_env.setenv("RETRAINER_BLOB_MAX_CONCURRENCY", "5")
    store = create_blob_store(CommonSettings(_env_file=None))  # type: ignore[call-arg]
    assert isinstance(store, AzureBlobStore)
    try:
        assert store.max_concurrency == 5
        written = store.upload_blob(f"{container}/from-settings", b"x")
        assert store.get_blob_properties(f"{container}/from-settings") == written
    finally:
        store.close()


def test_an_account_url_uses_the_default_credential_and_connects_lazily(
    clean_env: pytest.MonkeyPatch,
) -> None:
    before = _loop_threads()
    settings = CommonSettings(  # type: ignore[call-arg]
        _env_file=None, blob="azure", blob_account_url="https://nowhere.invalid"
    )
    store = create_blob_store(settings)
    assert isinstance(store, AzureBlobStore)
    assert repr(store) == "AzureBlobStore('https://nowhere.invalid')"
    assert _loop_threads() == before  # nothing started, nothing connected
    assert store.max_concurrency == 32
    store.close()


def test_a_malformed_connection_string_is_a_configuration_error(
    clean_env: pytest.MonkeyPatch,
) -> None:
    settings = CommonSettings(  # type: ignore[call-arg]
        _env_file=None, blob="azure", blob_connection_string=SecretStr("no key=value pairs here")
    )
    with pytest.raises(ConfigurationError):
        create_blob_store(settings)


@pytest.mark.parametrize("kind", ["named-key", "sas"])
def test_an_account_url_with_a_credential(azurite: str, container: str, kind: str) -> None:
    endpoint = azurite.split("BlobEndpoint=")[1].rstrip(";")
    credential: object = AzureNamedKeyCredential(ACCOUNT_NAME, ACCOUNT_KEY)
    if kind == "sas":
        credential = generate_account_sas(
            ACCOUNT_NAME,
            ACCOUNT_KEY,
            ResourceTypes(container=True, object=True),
            AccountSasPermissions(read=True, write=True, list=True, create=True, delete=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
    with AzureBlobStore(endpoint, credential) as store:
        written = store.upload_blob(f"{container}/{kind}", b"x", overwrite=False)
        assert [p.etag for p in store.list_blobs(container)] == [written.etag]
        store.delete_blob(f"{container}/{kind}", if_match=written.etag)


def test_a_sync_token_credential_is_refused() -> None:
    class SyncCredential:
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            raise AssertionError("never called")

    with pytest.raises(TypeError, match="async token credential"):
        AzureBlobStore("https://acct.blob.core.windows.net", SyncCredential())


def test_the_repr_shows_no_secret() -> None:
    store = AzureBlobStore.from_connection_string(
        "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=1&sig=SECRET"
    )
    assert "SECRET" not in repr(store)
    key_store = AzureBlobStore.from_connection_string(connection_string(1))
    assert "Eby8" not in repr(key_store)


# -- SDK errors, translated ----------------------------------------------------------------


def _every_operation(store: AzureBlobStore) -> list[tuple[str, Callable[[], object]]]:
    name = "box/dir/x.bin"
    return [
        ("upload", lambda: store.upload_blob(name, b"x")),
        ("create-only", lambda: store.upload_blob(name, b"x", overwrite=False)),
        ("download", lambda: store.download_blob(name)),
        ("properties", lambda: store.get_blob_properties(name)),
        ("list", lambda: list(store.list_blobs("box/dir/"))),
        ("delete", lambda: store.delete_blob(name)),
        ("download_many", lambda: list(store.download_many([name]))),
        ("upload_many", lambda: store.upload_many([(name, b"x")])),
    ]


def _raises(expected: type[Exception], operation: str, call: Callable[[], object]) -> Exception:
    try:
        call()
    except expected as exc:
        return exc
    except Exception as exc:
        pytest.fail(f"{operation}: raised {exc!r}, not {expected.__name__}")
    pytest.fail(f"{operation}: raised nothing, not {expected.__name__}")


def test_an_unreachable_endpoint_is_retryable() -> None:
    with AzureBlobStore.from_connection_string(
        connection_string(free_port()), **FAIL_FAST
    ) as store:
        for operation, call in _every_operation(store):
            _raises(BlobStoreUnavailableError, operation, call)


def test_a_wrong_account_key_is_a_configuration_error(azurite: str) -> None:
    port = int(azurite.split("127.0.0.1:")[1].split("/")[0])
    wrong = base64.b64encode(b"not the key" * 6).decode()
    with AzureBlobStore.from_connection_string(
        connection_string(port, key=wrong), **FAIL_FAST
    ) as store:
        for operation, call in _every_operation(store):
            _raises(ConfigurationError, operation, call)


@contextmanager
def fake_storage(behaviour: str) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 that answers every request badly; yields its port.

    ``"503"``, ``"500"``, ``"400"``: that status with a storage error body; ``"drop"``: closes
    the connection without an answer; ``"hang"``: never answers (until the server stops)."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if behaviour == "drop":
                self.close_connection = True
                return
            if behaviour == "hang":
                release.wait(30)
                self.close_connection = True
                return
            status = int(behaviour)
            code = {500: "InternalError", 503: "ServerBusy", 400: "InvalidHeaderValue"}[status]
            body = (
                f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                f"<Message>fake</Message></Error>"
            ).encode()
            self.send_response(status)
            self.send_header("x-ms-error-code", code)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = do_DELETE = answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("behaviour", ["503", "500", "drop", "hang"])
def test_a_failing_or_silent_service_is_retryable(behaviour: str) -> None:
    with (
        fake_storage(behaviour) as port,
        AzureBlobStore.from_connection_string(
            connection_string(port), **FAIL_FAST | {"read_timeout": 0.25}
        ) as store,
    ):
        for operation, call in _every_operation(store):
            _raises(BlobStoreUnavailableError, operation, call)


def test_any_other_refusal_is_permanent() -> None:
    with (
        fake_storage("400") as port,
        AzureBlobStore.from_connection_string(connection_string(port), **FAIL_FAST) as store,
    ):
        for operation, call in _every_operation(store):
            error = _raises(PermanentError, operation, call)
            assert not isinstance(error, RetryableError), operation
            assert "HTTP 400 InvalidHeaderValue" in str(error), operation


# -- the bridge: threads, lifetime, fork ---------------------------------------------------


def test_nothing_starts_before_the_first_call_and_close_stops_it(
    azurite: str, container: str
) -> None:
    before = set(_loop_threads())
    store = AzureBlobStore.from_connection_string(azurite)
    assert set(_loop_threads()) == before
    store.upload_blob(f"{container}/x", b"x")
    started = set(_loop_threads()) - before
    assert len(started) == 1
    store.close()
    store.close()  # idempotent
    assert not started.pop().is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        store.download_blob(f"{container}/x")


def test_a_forgotten_store_stops_its_loop(azurite: str, container: str) -> None:
    store = AzureBlobStore.from_connection_string(azurite)
    before = set(_loop_threads())
    store.upload_blob(f"{container}/x", b"x")
    (thread,) = set(_loop_threads()) - before
    del store
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()


def test_a_blocking_call_from_the_loop_itself_is_refused(
    store: AzureBlobStore, container: str
) -> None:
    store.upload_blob(f"{container}/x", b"x")
    runtime = store._runtime_now()

    async def reenter() -> object:
        return store.download_blob(f"{container}/x")

    with pytest.raises(RuntimeError, match="own event loop"):
        runtime.run(reenter())


def _child_writes(store: AzureBlobStore, name: str) -> None:
    store.upload_blob(name, str(os.getpid()).encode())
    os._exit(0 if store.download_blob(name).data == str(os.getpid()).encode() else 3)


def test_a_forked_child_gets_its_own_loop(store: AzureBlobStore, container: str) -> None:
    store.upload_blob(f"{container}/parent", b"p")  # the parent's loop is running
    child = multiprocessing.get_context("fork").Process(
        target=_child_writes, args=(store, f"{container}/child")
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert store.download_blob(f"{container}/child").data == str(child.pid).encode()
    assert store.download_blob(f"{container}/parent").data == b"p"


def test_holds_blobs_asks_for_one_small_page_and_skips_names_the_port_refuses(
    azurite: str, sdk: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    """A listing reads every page of a folder (5,000 names each); ``holds_blobs`` asks for
    one page of a few names."""
    _write_tree(tmp_path / "src", azure_module.PRESENCE_PAGE + 20)
    urls: list[str] = []
    with AzureBlobStore.from_connection_string(
        azurite, raw_request_hook=lambda request: urls.append(request.http_request.url)
    ) as store:
        upload_directory(store, tmp_path / "src", f"{container}/big")
        urls.clear()
        assert holds_blobs(store, f"{container}/big/")
        [url] = urls
        assert f"maxresults={azure_module.PRESENCE_PAGE}" in url

        foreign = sdk.get_container_client(container)
        for odd in ("odd/trailing/", "odd//double"):
            foreign.upload_blob(odd, b"odd")
        assert not holds_blobs(store, f"{container}/odd/")
        assert list(store.list_blobs(f"{container}/odd/")) == []
