"""Bulk blob transfers to and from files through ``obstore`` (Rust's object_store), beside the
Azure SDK.

The SDK costs ~1-2 ms of Python CPU per request (its pipeline, header parsing, signing,
aiohttp), which caps a one-process ``download_prefix`` of small blobs at a few hundred per
second; obstore signs and speaks HTTP in Rust, so Python only awaits. ``AzureBlobStore`` uses
it for ``download_files`` / ``upload_files`` (what ``shared.blobs.transfer`` moves whole
directories with) and for listing a directory where it can give exactly the SDK's listing
(``list_directory``), and keeps the SDK for everything with Azure semantics beyond a plain GET,
overwriting PUT or listing (conditional writes, leases, properties, prefix listings).

Memory is bounded for any blob size: a download larger than ``STREAM_ABOVE`` is written to its
file chunk by chunk, an upload larger than ``MULTIPART_ABOVE`` is read from its file by
obstore in blocks (Put Block + Put Block List); at most ``max_concurrency`` blobs are in
flight. Error messages drop URL query strings (a SAS token is a secret).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.blobs.port import BlobProperties, validate_blob_name
from shared.errors import (
    BlobLeasedError,
    BlobNotFoundError,
    BlobStoreUnavailableError,
    ConfigurationError,
    InvalidBlobNameError,
    PermanentError,
)

if TYPE_CHECKING:
    from obstore.store import AzureStore

# Downloads above this size are streamed to the file; smaller ones are read in one piece.
STREAM_ABOVE = 8 * 1024 * 1024
STREAM_CHUNK = 4 * 1024 * 1024
# A body up to this size has arrived with (or right behind) its headers, in the socket's
# buffer: collecting it synchronously on the loop thread costs no wait, and saves the second
# Rust -> Python future per blob (a GIL hand-off and a loop wake-up each, ~25 % of the
# client CPU of a small-blob download). ``bytes()`` releases the GIL while it waits, so a
# slow body stalls only this loop's other transfers. A larger body is awaited: hyper reads a
# body only as it is consumed, so blocking on it would serialise the transfers.
COLLECT_SYNC_UP_TO = 64 * 1024
# Uploads above this size go as blocks read from the file (obstore's multipart upload).
MULTIPART_ABOVE = 8 * 1024 * 1024
MULTIPART_CHUNK = 4 * 1024 * 1024
MULTIPART_CONCURRENCY = 4

# obstore retries 5xx, 429 and connection errors with backoff; its default gives up after 3 min.
RETRY: dict[str, Any] = {"max_retries": 4, "retry_timeout": timedelta(seconds=30)}

_QUERY = re.compile(r"\?[^\s\"'<>]*")


class UnlistableError(Exception):
    """A listing obstore cannot give exactly as the SDK would."""


class ObstoreBulk:
    """Per-container obstore clients of one account, and the bulk transfers over them.

    ``config``: obstore ``AzureConfig`` keys (``account_name`` and ``account_key`` or
    ``sas_key``, ``endpoint``); ``credential_provider``: for token credentials. The
    coroutines run on the ``AzureBlobStore``'s event loop."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        credential_provider: Any = None,
        allow_http: bool = False,
    ) -> None:
        self._config = config
        self._credential_provider = credential_provider
        self._client_options = {"allow_http": True} if allow_http else {}
        self._stores: dict[str, AzureStore] = {}
        self._lock = threading.Lock()

    def store(self, container: str) -> AzureStore:
        with self._lock:
            store = self._stores.get(container)
            if store is None:
                from obstore.store import AzureStore

                store = self._stores[container] = AzureStore(
                    container,
                    config=self._config,  # type: ignore[arg-type]
                    client_options=self._client_options,  # type: ignore[arg-type]
                    retry_config=RETRY,  # type: ignore[arg-type]
                    credential_provider=self._credential_provider,
                )
            return store

    async def download_files(
        self, targets: Sequence[tuple[str, str, str, Path]], max_concurrency: int
    ) -> dict[str, str]:
        """``(name, container, path, file)`` each -> name -> etag of the bytes written."""
        import obstore

        slots = asyncio.Semaphore(max_concurrency)
        made: set[Path] = set()

        async def one(name: str, container: str, path: str, target: Path) -> tuple[str, str]:
            async with slots:
                with _translated(name):
                    result = await obstore.get_async(self.store(container), path)
                    meta = result.meta
                    if target.parent not in made:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        made.add(target.parent)
                    if meta["size"] <= COLLECT_SYNC_UP_TO:
                        target.write_bytes(result.bytes())
                    elif meta["size"] <= STREAM_ABOVE:
                        target.write_bytes(await result.bytes_async())
                    else:
                        with target.open("wb") as file:
                            async for chunk in result.stream(min_chunk_size=STREAM_CHUNK):
                                file.write(chunk)
                return name, _unquoted(meta["e_tag"])

        return dict(await _all([one(*target) for target in targets]))

    async def list_directory(self, container: str, path: str) -> list[BlobProperties]:
        """The blobs under directory ``path`` (``""``: the whole container) of ``container``,
        sorted by name; none for a missing container. Raises ``UnlistableError`` for a
        listing it cannot give exactly as the SDK would (a name object_store cannot
        represent, such as ``a//b``; an empty blob, which may be a ``dir/`` marker): the
        caller lists through the SDK instead. Other errors as the port's."""
        import obstore
        from obstore.exceptions import BaseError, NotFoundError

        found: list[BlobProperties] = []
        try:
            async for batch in obstore.list(
                self.store(container), path.rstrip("/") or None, chunk_size=5000
            ):
                for meta in batch:
                    if meta["size"] == 0:
                        # object_store lists a "dir/" marker as "dir", a name no blob has; an
                        # empty blob looks the same, so both are left to the SDK.
                        raise UnlistableError(f"an empty blob under {container}/{path}")
                    name = f"{container}/{meta['path']}"
                    try:
                        validate_blob_name(name)
                    except InvalidBlobNameError:
                        continue  # not addressable through the port (the SDK path skips it too)
                    etag = _unquoted(meta["e_tag"])
                    found.append(BlobProperties(name, etag, meta["size"], meta["last_modified"]))
        except BaseError as exc:
            # A listing answers 404 only for a missing container (object_store reports it as
            # a generic error).
            if isinstance(exc, NotFoundError) or "status code: 404" in str(exc):
                return []  # no container yet: no blobs
            if "invalid path" in str(exc):
                raise UnlistableError(_scrubbed(exc)) from None
            with _translated(f"{container}/{path}"):
                raise
        found.sort(key=lambda p: p.name)
        return found

    async def upload_files(
        self,
        items: Sequence[tuple[str, str, str, Path]],
        max_concurrency: int,
        create_container: Callable[[str], Awaitable[None]],
    ) -> dict[str, str]:
        """``(name, container, path, file)`` each, overwriting -> name -> etag. A container
        that does not exist yet is created (by the SDK) and the upload made again."""
        import obstore

        slots = asyncio.Semaphore(max_concurrency)

        async def one(name: str, container: str, path: str, source: Path) -> tuple[str, str]:
            async with slots:
                large = source.stat().st_size > MULTIPART_ABOVE
                body: Path | bytes = source if large else source.read_bytes()
                for attempt in (1, 2):
                    try:
                        with _translated(name):
                            result = await obstore.put_async(
                                self.store(container),
                                path,
                                body,
                                use_multipart=large,
                                chunk_size=MULTIPART_CHUNK,
                                max_concurrency=MULTIPART_CONCURRENCY,
                            )
                        return name, _unquoted(result["e_tag"])
                    except BlobNotFoundError:
                        # A PUT answers 404 only for a missing container.
                        if attempt == 2:
                            raise
                        await create_container(container)
                raise AssertionError("unreachable")

        return dict(await _all([one(*item) for item in items]))


async def _all(coros: list[Awaitable[tuple[str, str]]]) -> list[tuple[str, str]]:
    """Run them all; on the first error cancel the rest (and wait for them) and raise it."""
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


@contextmanager
def _translated(name: str) -> Iterator[None]:
    """obstore's errors as the port's (see ``shared.blobs.azure._translated``)."""
    from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError

    try:
        yield
    except FileNotFoundError:  # obstore's NotFoundError
        raise BlobNotFoundError(name) from None
    except (PermissionDeniedError, UnauthenticatedError) as exc:
        raise ConfigurationError(
            f"Azure Blob Storage refused access to {name!r}: {_scrubbed(exc)}"
        ) from None
    except BaseError as exc:  # the others: what the service answered is in the text
        text = str(exc)
        if "LeaseIdMissing" in text:
            raise BlobLeasedError(name) from None
        if any(f"status code: {code}" in text for code in (401, 403)):
            raise ConfigurationError(
                f"Azure Blob Storage refused access to {name!r}: {_scrubbed(exc)}"
            ) from None
        if re.search(r"status code: 4\d\d", text) and not re.search(r"status code: 4(08|29)", text):
            raise PermanentError(f"Azure Blob Storage refused {name!r}: {_scrubbed(exc)}") from None
        raise BlobStoreUnavailableError(
            f"blob store unavailable for {name!r}: {_scrubbed(exc)}"
        ) from None
    except (OSError, TimeoutError) as exc:
        raise BlobStoreUnavailableError(
            f"blob store unavailable for {name!r}: {_scrubbed(exc)}"
        ) from None


def _scrubbed(exc: BaseException) -> str:
    """The error's first line without URL query strings (a SAS token is a secret)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _QUERY.sub("?…", first)[:500]


def _unquoted(etag: str | None) -> str:
    if not etag:
        raise PermanentError("Azure Blob Storage returned no etag")
    return etag.strip('"')
