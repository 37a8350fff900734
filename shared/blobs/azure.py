"""The blob store on Azure Blob Storage (or Azurite), through the async SDK.

A blob ``container/path`` is blob ``path`` in Azure container ``container``; containers are
created on the first write into them. Semantics are the port's, exactly as the local adapter
has them (``tests/contract/blob_contract.py``):

- ``overwrite=False`` is a create-only write (``If-None-Match: *``): 409/412 -> BlobExistsError.
- ``if_match`` is an etag-conditional write or delete (``If-Match``): 412 -> the condition
  failed; a missing blob (or container) fails the condition on a write and is BlobNotFoundError
  on a delete, as locally. Both ``overwrite=False`` and ``if_match`` can never write: the blob
  exists -> BlobExistsError, it does not -> BlobConditionFailedError.
- Leases are the SDK's ``BlobLeaseClient``: 409 ``LeaseAlreadyPresent`` -> BlobLeasedError, as
  is the 412 ``LeaseIdMissing`` of a write or delete of a leased blob; a renewal the service
  refuses (the lease was released, or expired and was taken) -> BlobLeaseLostError.
- Etags are returned without the quotes HTTP puts around them (a listing has none) and are
  quoted again when sent, so any etag this adapter returned is accepted by ``if_match``.
- Names and prefixes are validated with the port's validators before any request; a listing
  skips names the port would refuse (as a foreign container may hold) and is sorted by name.
- SDK exceptions are translated here: not found -> BlobNotFoundError; refused credentials or
  access (401/403) -> ConfigurationError; unreachable, timed out, 408/429/5xx ->
  BlobStoreUnavailableError (retryable); any other refusal -> PermanentError.

Sync over async: the port is synchronous (worker threads call it), the SDK client is
``azure.storage.blob.aio``. Each store owns a private event loop running on a daemon thread,
started at the first call (nothing connects at construction). A sync method validates its
arguments in the caller's thread, submits one coroutine with ``run_coroutine_threadsafe`` and
waits for its result; any number of threads can do so at once. The SDK client, its aiohttp
session and the per-container clients live on that loop only. ``download_many`` and
``upload_many`` (the ``BulkBlobTransfer`` fast path of ``shared.blobs.transfer``) keep up to
``max_concurrency`` requests in flight, so memory stays bounded by that many blobs, and the
caller's thread writes or reads files while the loop talks to the service. ``close()`` (or
garbage collection, or interpreter exit) cancels what is in flight, closes the clients and
stops the loop. A process forked after the first call starts its own loop on first use.

Accounts with a hierarchical namespace (ADLS Gen2) list directories as empty blobs: use a
flat-namespace account.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import queue
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Iterator
from contextlib import aclosing, contextmanager, suppress
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.blob import StorageErrorCode
from azure.storage.blob.aio import BlobLeaseClient, BlobServiceClient, ContainerClient

from shared.blobs.azure_bulk import UnlistableError
from shared.blobs.port import (
    BlobContent,
    BlobProperties,
    split_blob_name,
    validate_blob_name,
    validate_lease_duration,
    validate_prefix,
)

if TYPE_CHECKING:
    from shared.blobs.azure_bulk import ObstoreBulk
from shared.errors import (
    BlobConditionFailedError,
    BlobExistsError,
    BlobLeasedError,
    BlobLeaseLostError,
    BlobNotFoundError,
    BlobStoreUnavailableError,
    ConfigurationError,
    InvalidBlobNameError,
    PermanentError,
    RetryableError,
)

T = TypeVar("T")

DEFAULT_MAX_CONCURRENCY = 32
# Names asked for per page by ``has_blobs``: the first addressable one answers it.
PRESENCE_PAGE = 100
# Parallel chunks for one large blob (> 32 MiB down, > 64 MiB up) in a single-blob call.
_CHUNKS = 4
_RETRYABLE_STATUS = {408, 429}
_LEASE_HELD = {
    StorageErrorCode.LEASE_ALREADY_PRESENT,
    StorageErrorCode.LEASE_IS_BREAKING_AND_CANNOT_BE_ACQUIRED,
}
_CLOSE_TIMEOUT_S = 10.0
# What the SDK would give the transport it makes itself; a transport passed in must carry
# them, as the SDK then ignores its own timeout options.
_TRANSPORT_DEFAULTS: dict[str, Any] = {
    "connection_timeout": 20,
    "read_timeout": 60,
    "connection_data_block_size": 256 * 1024,
}
_TRANSPORT_OPTIONS = {*_TRANSPORT_DEFAULTS, "connection_verify", "connection_cert"}

BulkClient = Literal["auto", "obstore", "sdk"]

# Builds the SDK client on the store's loop: (client, other things to close with it).
_ClientFactory = Callable[[AioHttpTransport], tuple[BlobServiceClient, list[Any]]]


class AzureBlobStore:
    """``BlobStore`` (and ``BulkBlobTransfer``) on an Azure Storage account.

    ``credential``: an account key, a SAS, an ``AzureNamedKeyCredential`` or an *async*
    token credential; ``None`` uses ``azure.identity.aio.DefaultAzureCredential``.
    ``max_concurrency`` bounds the requests in flight per bulk call and the store's HTTP
    connections. ``client_options`` go to the SDK client (e.g. ``retry_total``,
    ``connection_timeout``, ``read_timeout``).

    ``bulk_client``: what ``download_files``/``upload_files`` (whole directories, see
    ``shared.blobs.transfer``) use: ``"obstore"`` (``shared.blobs.azure_bulk``, several times
    the SDK's throughput), ``"sdk"``, or ``"auto"``: obstore unless ``client_options`` are
    given (they configure the SDK's requests, e.g. hooks that must see every request) or the
    credential is one obstore cannot use (an ``AzureSasCredential`` object)."""

    def __init__(
        self,
        account_url: str,
        credential: Any = None,
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        bulk_client: BulkClient = "auto",
        **client_options: Any,
    ) -> None:
        if credential is None:
            # Imported here: only deployments without a key need azure-identity.
            from azure.identity.aio import DefaultAzureCredential

            def factory(transport: AioHttpTransport) -> tuple[BlobServiceClient, list[Any]]:
                default = DefaultAzureCredential()
                client = BlobServiceClient(
                    account_url, credential=default, transport=transport, **client_options
                )
                return client, [default]

        else:
            get_token = getattr(credential, "get_token", None)
            if get_token is not None and not inspect.iscoroutinefunction(get_token):
                raise TypeError(
                    "AzureBlobStore needs an async token credential (from azure.identity.aio), "
                    f"not {type(credential).__name__}"
                )

            def factory(transport: AioHttpTransport) -> tuple[BlobServiceClient, list[Any]]:
                client = BlobServiceClient(
                    account_url, credential=credential, transport=transport, **client_options
                )
                return client, []

        # Parse (not connect) now, so a malformed URL fails here rather than at first use.
        parsed = _parse(lambda: BlobServiceClient(account_url, credential=credential), "blob URL")
        url = _endpoint(parsed)
        token = credential if credential is None or get_token_of(credential) else None
        self._setup(url, factory, max_concurrency, client_options)
        self._bulk_builder = _bulk_builder(bulk_client, client_options, parsed, token)

    @classmethod
    def from_connection_string(
        cls,
        conn_str: str,
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        bulk_client: BulkClient = "auto",
        **client_options: Any,
    ) -> AzureBlobStore:
        def factory(transport: AioHttpTransport) -> tuple[BlobServiceClient, list[Any]]:
            client = BlobServiceClient.from_connection_string(
                conn_str, transport=transport, **client_options
            )
            return client, []

        parsed = _parse(
            lambda: BlobServiceClient.from_connection_string(conn_str), "blob connection string"
        )
        store = cls.__new__(cls)
        store._setup(_endpoint(parsed), factory, max_concurrency, client_options)
        store._bulk_builder = _bulk_builder(bulk_client, client_options, parsed, None)
        return store

    def _setup(
        self,
        url: str,
        factory: _ClientFactory,
        max_concurrency: int,
        client_options: dict[str, Any],
    ) -> None:
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be a positive integer, not {max_concurrency!r}")
        self._url = url
        self._factory = factory
        self._max_concurrency = max_concurrency
        self._transport_options = _TRANSPORT_DEFAULTS | {
            k: v for k, v in client_options.items() if k in _TRANSPORT_OPTIONS
        }
        self._lock = threading.Lock()
        self._runtime: _Runtime | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._closed = False
        self._bulk_builder = _no_bulk
        self._bulk: ObstoreBulk | None = None
        self._bulk_built = False
        self._bulk_pid = os.getpid()

    def __repr__(self) -> str:
        return f"AzureBlobStore({self._url!r})"

    @property
    def max_concurrency(self) -> int:
        return self._max_concurrency

    def close(self) -> None:
        """Cancel what is in flight, close the SDK client and stop the loop. Idempotent."""
        with self._lock:
            self._closed = True
            finalizer, self._finalizer, self._runtime = self._finalizer, None, None
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> AzureBlobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the port --------------------------------------------------------------------------

    def upload_blob(
        self,
        name: str,
        data: bytes,
        *,
        overwrite: bool = True,
        if_match: str | None = None,
    ) -> BlobProperties:
        container, path = split_blob_name(name)
        return self._run(
            lambda rt: rt.upload(name, container, path, data, overwrite, if_match, _CHUNKS)
        )

    def download_blob(self, name: str) -> BlobContent:
        container, path = split_blob_name(name)
        return self._run(lambda rt: rt.download(name, container, path, _CHUNKS))

    def get_blob_properties(self, name: str) -> BlobProperties:
        container, path = split_blob_name(name)
        return self._run(lambda rt: rt.properties(name, container, path))

    def list_blobs(self, prefix: str) -> Iterator[BlobProperties]:
        container, path = validate_prefix(prefix)
        bulk = self._bulk_engine() if path == "" or path.endswith("/") else None
        if bulk is not None:
            # A directory (what download_prefix and digest_prefix list): obstore parses the
            # listing in Rust, several times faster than the SDK's XML models. Its prefixes
            # are whole path segments, so a partial name ("dir/fi") stays with the SDK.
            try:
                return iter(self._runtime_now().run(bulk.list_directory(container, path)))
            except UnlistableError:
                pass  # the SDK lists it: it skips what obstore cannot name, and reports outages
        return iter(self._run(lambda rt: rt.list(prefix, container, path)))

    def has_blobs(self, prefix: str) -> bool:
        """Whether ``list_blobs(prefix)`` would yield anything (``transfer.BlobPresence``):
        one small listing page instead of every page of a large folder."""
        container, path = validate_prefix(prefix)
        return self._run(lambda rt: rt.has_any(prefix, container, path))

    def delete_blob(self, name: str, *, if_match: str | None = None) -> None:
        container, path = split_blob_name(name)
        self._run(lambda rt: rt.delete(name, container, path, if_match))

    def acquire_blob_lease(self, name: str, *, duration_s: int) -> str:
        validate_lease_duration(duration_s)
        container, path = split_blob_name(name)
        return self._run(lambda rt: rt.acquire_lease(name, container, path, duration_s))

    def renew_blob_lease(self, name: str, lease_id: str) -> None:
        container, path = split_blob_name(name)
        self._run(lambda rt: rt.renew_lease(name, container, path, lease_id))

    def release_blob_lease(self, name: str, lease_id: str) -> None:
        container, path = split_blob_name(name)
        self._run(lambda rt: rt.release_lease(name, container, path, lease_id))

    # -- bulk (shared.blobs.transfer.BulkBlobTransfer) -------------------------------------

    def download_many(self, names: Iterable[str]) -> Iterator[BlobContent]:
        """Download ``names`` with up to ``max_concurrency`` requests in flight; yields each
        blob's content as it arrives (in any order). Every name is validated before the first
        request. The first error is raised and the rest cancelled, as is everything in flight
        when the iterator is closed early. At most ``max_concurrency`` contents are held that
        the consumer has not taken yet."""
        targets = [(name, *split_blob_name(name)) for name in names]
        return self._download_stream(self._runtime_now(), targets)

    def upload_many(
        self, items: Iterable[tuple[str, bytes]], *, overwrite: bool = True
    ) -> dict[str, BlobProperties]:
        """Upload ``(name, data)`` pairs with up to ``max_concurrency`` requests in flight,
        taking items from ``items`` only as slots free up (so a generator reading files keeps
        memory bounded). Returns name -> properties in the order of ``items``. On the first
        error no further item is taken; the uploads in flight finish, then it is raised."""
        runtime = self._runtime_now()
        done: queue.SimpleQueue[concurrent.futures.Future[BlobProperties]] = queue.SimpleQueue()
        pending: set[concurrent.futures.Future[BlobProperties]] = set()
        results: dict[str, BlobProperties] = {}
        order: list[str] = []
        errors: list[BaseException] = []

        def collect() -> None:
            future = done.get()
            pending.discard(future)
            try:
                props = future.result()
            except BaseException as exc:
                errors.append(exc)
            else:
                results[props.name] = props

        try:
            for name, data in items:
                container, path = split_blob_name(name)
                while len(pending) >= self._max_concurrency:
                    collect()
                if errors:
                    break
                future = runtime.submit(runtime.upload(name, container, path, data, overwrite))
                pending.add(future)
                future.add_done_callback(done.put)
                order.append(name)
        finally:
            # Never leave uploads running behind the caller's back, even on its own error.
            while pending:
                collect()
        if errors:
            raise errors[0]
        return {name: results[name] for name in order}

    # -- bulk to and from files (shared.blobs.transfer.BulkFileTransfer) -------------------

    @property
    def bulk_client(self) -> str:
        """What ``download_files``/``upload_files`` use: ``obstore`` or ``sdk``."""
        return "sdk" if self._bulk_engine() is None else "obstore"

    def download_files(self, targets: Iterable[tuple[str, Path]]) -> dict[str, str]:
        """Download each ``(name, file)``, creating the file's directory; returns name ->
        etag of the bytes written. Up to ``max_concurrency`` blobs in flight; a large blob
        is streamed to its file (memory stays bounded). The first error is raised."""
        items = [(name, *split_blob_name(name), Path(file)) for name, file in targets]
        bulk = self._bulk_engine()
        if bulk is not None:
            runtime = self._runtime_now()
            return runtime.run(bulk.download_files(items, self._max_concurrency))
        files = {name: file for name, _, _, file in items}
        etags: dict[str, str] = {}
        for content in self.download_many(list(files)):
            target = files[content.properties.name]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.data)
            etags[content.properties.name] = content.properties.etag
        return etags

    def upload_files(self, items: Iterable[tuple[str, Path]]) -> dict[str, str]:
        """Upload each ``(name, file)``, overwriting; returns name -> etag in the order of
        ``items``. Up to ``max_concurrency`` blobs in flight; a large file is read and sent
        in blocks (memory stays bounded). The first error is raised."""
        listed = [(name, *split_blob_name(name), Path(file)) for name, file in items]
        bulk = self._bulk_engine()
        if bulk is None:
            uploaded = self.upload_many((name, file.read_bytes()) for name, _, _, file in listed)
            return {name: props.etag for name, props in uploaded.items()}
        runtime = self._runtime_now()
        etags = runtime.run(
            bulk.upload_files(listed, self._max_concurrency, runtime.create_container)
        )
        return {name: etags[name] for name, _, _, _ in listed}

    def _bulk_engine(self) -> ObstoreBulk | None:
        if not self._bulk_built:
            with self._lock:
                if not self._bulk_built:
                    self._bulk = self._bulk_builder()
                    self._bulk_pid = os.getpid()
                    self._bulk_built = True
        if self._bulk_pid != os.getpid():
            # Forked after obstore started its runtime, whose threads the child lacks: a call
            # there would never return, so this process moves its blobs through the SDK.
            return None
        return self._bulk

    def _download_stream(
        self, runtime: _Runtime, targets: list[tuple[str, str, str]]
    ) -> Iterator[BlobContent]:
        done: queue.SimpleQueue[concurrent.futures.Future[BlobContent]] = queue.SimpleQueue()
        pending: set[concurrent.futures.Future[BlobContent]] = set()
        todo = iter(targets)

        def submit_next() -> None:
            target = next(todo, None)
            if target is not None:
                future = runtime.submit(runtime.download(*target))
                pending.add(future)
                future.add_done_callback(done.put)

        try:
            for _ in range(self._max_concurrency):
                submit_next()
            while pending:
                future = done.get()
                pending.discard(future)
                content = future.result()
                submit_next()
                yield content
        finally:
            for future in pending:
                future.cancel()

    # -- the loop --------------------------------------------------------------------------

    def _run(self, call: Callable[[_Runtime], Coroutine[Any, Any, T]]) -> T:
        runtime = self._runtime_now()
        return runtime.run(call(runtime))

    def _runtime_now(self) -> _Runtime:
        runtime = self._runtime
        if runtime is not None and runtime.pid == os.getpid():
            return runtime
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if self._runtime is None or self._runtime.pid != os.getpid():
                if self._finalizer is not None:
                    # Forked: the parent's loop thread does not exist here; leave its
                    # resources alone (they belong to the parent) and start afresh.
                    self._finalizer.detach()
                self._runtime = _Runtime(
                    self._factory, self._max_concurrency, self._transport_options, repr(self)
                )
                self._finalizer = weakref.finalize(self, self._runtime.close)
            return self._runtime


class _Runtime:
    """An event loop on a daemon thread, the SDK client and HTTP session living on it, and
    the port's operations as coroutines to run there. Names arrive validated."""

    def __init__(
        self,
        factory: _ClientFactory,
        max_connections: int,
        transport_options: dict[str, Any],
        label: str,
    ) -> None:
        self.pid = os.getpid()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"blob-loop {label}", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._containers: dict[str, ContainerClient] = {}
        self._owned: list[Any] = []
        try:
            self._service, self._session = self.run(
                self._open(factory, max_connections, transport_options)
            )
        except BaseException:
            self._stop_loop()
            raise

    # -- operations ------------------------------------------------------------------------

    async def upload(
        self,
        name: str,
        container: str,
        path: str,
        data: bytes,
        overwrite: bool = True,
        if_match: str | None = None,
        chunk_concurrency: int = 1,
    ) -> BlobProperties:
        with _translated(name):
            if if_match is not None and not overwrite:
                # Such a write can never happen; find out which error the port wants.
                try:
                    await self.properties(name, container, path)
                except BlobNotFoundError:
                    raise BlobConditionFailedError(name, if_match) from None
                raise BlobExistsError(name)
            conditions: dict[str, Any] = {}
            if if_match is not None:
                conditions = {
                    "etag": _quoted(if_match),
                    "match_condition": MatchConditions.IfNotModified,
                }
            blob = self._container(container).get_blob_client(path)
            for attempt in (1, 2):
                try:
                    result = await blob.upload_blob(
                        data,
                        length=len(data),
                        overwrite=overwrite,
                        max_concurrency=chunk_concurrency,
                        **conditions,
                    )
                    break
                except ResourceExistsError as exc:
                    if not overwrite and _code(exc) == StorageErrorCode.BLOB_ALREADY_EXISTS:
                        raise BlobExistsError(name) from None
                    raise
                except HttpResponseError as exc:
                    if _code(exc) == StorageErrorCode.LEASE_ID_MISSING:
                        raise BlobLeasedError(name) from None
                    if exc.status_code == 412 and if_match is not None:
                        raise BlobConditionFailedError(name, if_match) from None
                    if exc.status_code == 412 and not overwrite:
                        raise BlobExistsError(name) from None
                    if exc.status_code != 404:
                        raise
                    if if_match is not None:  # no such blob (or container): no such etag
                        raise BlobConditionFailedError(name, if_match) from None
                    if attempt == 2 or _code(exc) != StorageErrorCode.CONTAINER_NOT_FOUND:
                        raise
                    await self._create_container(container)
        return BlobProperties(
            name, _unquoted(result["etag"]), len(data), _utc(result["last_modified"])
        )

    async def download(
        self, name: str, container: str, path: str, chunk_concurrency: int = 1
    ) -> BlobContent:
        with _translated(name):
            try:
                downloader = await self._container(container).download_blob(
                    path, max_concurrency=chunk_concurrency
                )
                data = await downloader.readall()
            except HttpResponseError as exc:
                if exc.status_code == 412:  # a later chunk of a large blob: it changed meanwhile
                    raise RetryableError(
                        f"blob {name!r} changed while it was being downloaded"
                    ) from exc
                raise
        props = downloader.properties
        return BlobContent(
            BlobProperties(name, _unquoted(props.etag), props.size, _utc(props.last_modified)),
            data,
        )

    async def properties(self, name: str, container: str, path: str) -> BlobProperties:
        with _translated(name):
            blob = self._container(container).get_blob_client(path)
            props = await blob.get_blob_properties()
        return BlobProperties(name, _unquoted(props.etag), props.size, _utc(props.last_modified))

    async def list(self, prefix: str, container: str, path: str) -> list[BlobProperties]:
        with _translated(prefix):
            found = [blob async for blob in self._addressable(container, path)]
        found.sort(key=lambda p: p.name)
        return found

    async def has_any(self, prefix: str, container: str, path: str) -> bool:
        with _translated(prefix):
            # The pager asks for the next page only when this one is used up.
            async with aclosing(self._addressable(container, path, PRESENCE_PAGE)) as blobs:
                async for _ in blobs:
                    return True
        return False

    async def _addressable(
        self, container: str, path: str, per_page: int | None = None
    ) -> AsyncGenerator[BlobProperties, None]:
        """The blobs whose names start with ``path`` that the port can address, in the
        service's order; none for a missing container."""
        try:
            async for item in self._container(container).list_blobs(
                name_starts_with=path or None, results_per_page=per_page
            ):
                name = f"{container}/{item.name}"
                try:
                    validate_blob_name(name)
                except InvalidBlobNameError:
                    continue  # e.g. "dir/" written by another tool: not addressable here
                yield BlobProperties(
                    name, _unquoted(item.etag), item.size, _utc(item.last_modified)
                )
        except ResourceNotFoundError:
            return  # no container yet: no blobs

    async def delete(self, name: str, container: str, path: str, if_match: str | None) -> None:
        conditions: dict[str, Any] = {}
        if if_match is not None:
            conditions = {
                "etag": _quoted(if_match),
                "match_condition": MatchConditions.IfNotModified,
            }
        with _translated(name):
            try:
                blob = self._container(container).get_blob_client(path)
                await blob.delete_blob(**conditions)
            except HttpResponseError as exc:
                if _code(exc) == StorageErrorCode.LEASE_ID_MISSING:
                    raise BlobLeasedError(name) from None
                if exc.status_code != 412 or if_match is None:
                    raise
                # Azure answers 412 for a missing blob too; the port says "not found" then.
                await self.properties(name, container, path)
                raise BlobConditionFailedError(name, if_match) from None

    async def acquire_lease(self, name: str, container: str, path: str, duration_s: int) -> str:
        with _translated(name):
            blob = self._container(container).get_blob_client(path)
            try:
                lease = await blob.acquire_lease(lease_duration=duration_s)
            except HttpResponseError as exc:
                if _code(exc) in _LEASE_HELD:
                    raise BlobLeasedError(name) from None
                raise
        return str(lease.id)

    async def renew_lease(self, name: str, container: str, path: str, lease_id: str) -> None:
        with _translated(name):
            lease = BlobLeaseClient(
                self._container(container).get_blob_client(path), lease_id=lease_id
            )
            try:
                await lease.renew()
            except HttpResponseError as exc:
                # 404: the blob is gone; 409: released, broken, or another lease holds it.
                if exc.status_code in (404, 409):
                    raise BlobLeaseLostError(name) from None
                raise

    async def release_lease(self, name: str, container: str, path: str, lease_id: str) -> None:
        with _translated(name):
            lease = BlobLeaseClient(
                self._container(container).get_blob_client(path), lease_id=lease_id
            )
            try:
                await lease.release()
            except HttpResponseError as exc:
                if exc.status_code not in (404, 409):  # not ours (any more): nothing to end
                    raise

    def _container(self, name: str) -> ContainerClient:
        """The client of container ``name``, made once (it shares the service's pipeline)."""
        client = self._containers.get(name)
        if client is None:
            client = self._containers[name] = self._service.get_container_client(name)
        return client

    async def _create_container(self, name: str) -> None:
        with suppress(ResourceExistsError):  # created meanwhile by someone else
            await self._container(name).create_container()

    async def create_container(self, name: str) -> None:
        with _translated(name):
            await self._create_container(name)

    # -- the loop and its lifetime ---------------------------------------------------------

    async def _open(
        self, factory: _ClientFactory, max_connections: int, transport_options: dict[str, Any]
    ) -> tuple[BlobServiceClient, aiohttp.ClientSession]:
        # The SDK's own session has a 100-connection pool; size it to the concurrency instead.
        # Otherwise as the SDK makes it: proxies from the environment, no cookies, raw bodies.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=True,
        )
        try:
            transport = AioHttpTransport(session=session, session_owner=False, **transport_options)
            service, self._owned = factory(transport)
        except BaseException:
            await session.close()
            raise
        return service, session

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._closed:
            coro.close()
            raise RuntimeError("the blob store is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking blob-store call from the store's own event loop")
        future = self.submit(coro)
        try:
            return future.result()
        finally:
            future.cancel()  # a no-op once done; stops the request on KeyboardInterrupt

    def close(self) -> None:
        if self._closed or self.pid != os.getpid():
            return  # in a forked child, the loop and its sockets are the parent's
        try:
            if self._thread.is_alive():
                future = asyncio.run_coroutine_threadsafe(self._aclose(), self._loop)
                with suppress(Exception):  # best effort: the loop stops regardless
                    future.result(_CLOSE_TIMEOUT_S)
        finally:
            self._closed = True
            self._stop_loop()

    async def _aclose(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._service.close()
            for owned in self._owned:
                await owned.close()
        finally:
            await self._session.close()

    def _stop_loop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CLOSE_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()


@contextmanager
def _translated(name: str) -> Iterator[None]:
    """Turn what the SDK (or aiohttp beneath it) raises into the project's errors."""
    try:
        yield
    except ResourceNotFoundError:
        raise BlobNotFoundError(name) from None
    except ClientAuthenticationError as exc:
        raise ConfigurationError(
            f"Azure Blob Storage refused the credentials ({_describe(exc)}) for {name!r}"
        ) from exc
    except (IncompleteReadError, ServiceRequestError, ServiceResponseError) as exc:
        raise BlobStoreUnavailableError(f"blob store unavailable for {name!r}: {exc}") from exc
    except HttpResponseError as exc:
        status = exc.status_code or 0
        if status in (401, 403):  # a wrong key, a missing role assignment, a firewall rule
            raise ConfigurationError(
                f"Azure Blob Storage refused access ({_describe(exc)}) to {name!r}"
            ) from exc
        if status in _RETRYABLE_STATUS or status >= 500:
            raise BlobStoreUnavailableError(
                f"blob store busy or failing for {name!r}: {_describe(exc)}"
            ) from exc
        raise PermanentError(f"Azure Blob Storage refused {name!r}: {_describe(exc)}") from exc
    except AzureError as exc:
        raise PermanentError(f"Azure Blob Storage error for {name!r}: {exc}") from exc
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        raise BlobStoreUnavailableError(f"blob store unavailable for {name!r}: {exc!r}") from exc


def _describe(exc: HttpResponseError) -> str:
    return f"HTTP {exc.status_code} {_code(exc) or exc.reason or ''}".rstrip()


def _code(exc: HttpResponseError) -> str | None:
    """The storage error code (``x-ms-error-code``) the storage SDK attaches to its errors."""
    code = getattr(exc, "error_code", None)
    if code is None:
        return None
    return str(code.value) if isinstance(code, Enum) else str(code)


def _parse(build: Callable[[], T], what: str) -> T:
    try:
        return build()
    except ValueError as exc:  # the SDK's message names the problem, not the secret
        raise ConfigurationError(f"invalid {what}: {exc}") from None


def _endpoint(client: BlobServiceClient) -> str:
    """The account's endpoint, without any SAS token the URL may carry."""
    return f"{client.scheme}://{client.primary_hostname}"


def _unquoted(etag: str | None) -> str:
    if not etag:
        raise PermanentError("Azure Blob Storage returned no etag")
    return etag.strip('"')


def _quoted(etag: str) -> str:
    return f'"{etag.strip(chr(34))}"'


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        raise PermanentError("Azure Blob Storage returned no last-modified time")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def get_token_of(credential: Any) -> bool:
    """Whether ``credential`` is a token credential (it has ``get_token``)."""
    return callable(getattr(credential, "get_token", None))


def _bulk_builder(
    choice: BulkClient,
    client_options: dict[str, Any],
    parsed: BlobServiceClient,
    token_credential: Any,
) -> Callable[[], ObstoreBulk | None]:
    """What builds the store's obstore engine on first use (None: the SDK does bulk too).
    ``token_credential``: the async token credential given, or None for
    ``DefaultAzureCredential``, when the account URL came without a key or SAS."""
    if choice not in ("auto", "obstore", "sdk"):
        raise ConfigurationError(f"bulk_client must be auto, obstore or sdk, not {choice!r}")
    if choice == "sdk" or (choice == "auto" and client_options):
        return _no_bulk
    config: dict[str, Any] = {
        "account_name": parsed.account_name,
        "endpoint": f"{parsed.scheme}://{parsed.primary_hostname}",
    }
    key = getattr(parsed.credential, "account_key", None)
    sas = (getattr(parsed, "_query_str", "") or "").lstrip("?")
    token = None
    if key:
        config["account_key"] = key
    elif sas:
        config["sas_key"] = sas
    elif parsed.credential is None or get_token_of(token_credential):
        token = token_credential if token_credential is not None else _DEFAULT_CREDENTIAL
    else:  # e.g. an AzureSasCredential object
        if choice == "obstore":
            raise ConfigurationError("bulk_client obstore cannot use this kind of credential")
        return _no_bulk

    def build() -> ObstoreBulk | None:
        try:
            from shared.blobs.azure_bulk import ObstoreBulk
        except ImportError:  # obstore not installed: the SDK does it all
            return None
        provider = None
        if token is not None:
            from obstore.auth.azure import AzureAsyncCredentialProvider

            given: Any = None if token is _DEFAULT_CREDENTIAL else token
            provider = AzureAsyncCredentialProvider(given)
        return ObstoreBulk(config, credential_provider=provider, allow_http=parsed.scheme == "http")

    return build


def _no_bulk() -> ObstoreBulk | None:
    return None


# Stands for "DefaultAzureCredential" in _bulk_builder.
_DEFAULT_CREDENTIAL = object()
