"""Moving whole "directories" of blobs between a blob store and the local file system.

Written only against the ``BlobStore`` port, so they work with every adapter. A ``prefix``
here names a directory: ``container/dir`` and ``container/dir/`` both mean the blobs whose
names start with ``container/dir/`` (``container/dir2/x`` is not under ``container/dir``).

A store that also implements ``BulkFileTransfer`` (the local adapter does, writing several
blobs at once with shared fsyncs; the Azure adapter does through obstore,
``shared/blobs/azure_bulk.py``) moves the blobs between files and the service itself, with
bounded concurrency and bounded memory; one that implements ``BulkBlobTransfer`` moves them
with bounded concurrency through memory; any other store is served one blob at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from shared.blobs.port import BlobContent, BlobProperties, BlobStore, validate_blob_name
from shared.errors import InvalidBlobNameError


@runtime_checkable
class BulkBlobTransfer(Protocol):
    """Optional fast path of a ``BlobStore``: many blobs at once, a bounded number in flight.

    Both keep memory bounded by the concurrency, not by the number of blobs."""

    def download_many(self, names: Iterable[str]) -> Iterator[BlobContent]:
        """The contents of ``names``, yielded as they arrive (any order), each with
        ``properties.name`` as asked. Validates every name before the first download;
        raises the first error (BlobNotFoundError, ...); closing the iterator early
        abandons the rest."""
        ...

    def upload_many(self, items: Iterable[tuple[str, bytes]]) -> dict[str, BlobProperties]:
        """Upload ``(name, data)`` pairs, overwriting, taking items lazily as slots free up.
        Returns name -> properties in the order of ``items``; raises the first error."""
        ...


@runtime_checkable
class BulkFileTransfer(Protocol):
    """Optional fastest path of a ``BlobStore``: many blobs straight between files and the
    service, a bounded number in flight, large ones streamed (memory bounded)."""

    def download_files(self, targets: Iterable[tuple[str, Path]]) -> dict[str, str]:
        """Write each ``(blob name, file)`` (parent directories created); returns name ->
        etag of the bytes written; raises the first error."""
        ...

    def upload_files(self, items: Iterable[tuple[str, Path]]) -> dict[str, str]:
        """Upload each ``(blob name, file)``, overwriting; returns name -> etag in the order
        of ``items``; raises the first error."""
        ...


@runtime_checkable
class BlobPresence(Protocol):
    """Optional fast path of a ``BlobStore``: whether any blob's name starts with a prefix,
    asking the service for the first few names only (a listing reads every page)."""

    def has_blobs(self, prefix: str) -> bool:
        """Whether ``list_blobs(prefix)`` would yield anything."""
        ...


def holds_blobs(store: BlobStore, prefix: str) -> bool:
    """Whether any blob's name starts with ``prefix`` (``container/dir/`` for a folder)."""
    if isinstance(store, BlobPresence):
        return store.has_blobs(prefix)
    return next(iter(store.list_blobs(prefix)), None) is not None


def download_prefix(store: BlobStore, prefix: str, dest_dir: Path) -> dict[str, str]:
    """Download every blob under ``prefix`` into ``dest_dir`` (created if missing), keeping
    the paths below the prefix. Returns relative path (``/``-separated) -> etag of the bytes
    written. Raises InvalidBlobNameError for a blob whose relative path would land outside
    ``dest_dir``."""
    directory = _as_directory(prefix)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    destination = _Destination(dest)
    # Every destination is checked before anything is downloaded.
    targets: dict[str, tuple[str, Path]] = {}
    for props in store.list_blobs(directory):
        rel = props.name[len(directory) :]
        targets[props.name] = (rel, destination.path_of(rel, props.name))
    if isinstance(store, BulkFileTransfer):
        written = store.download_files((name, target) for name, (_, target) in targets.items())
        return {rel: written[name] for name, (rel, _) in targets.items()}  # in listing order
    contents: Iterable[tuple[str, BlobContent]]
    if isinstance(store, BulkBlobTransfer):
        contents = ((c.properties.name, c) for c in store.download_many(list(targets)))
    else:
        contents = ((name, store.download_blob(name)) for name in targets)
    etags: dict[str, str] = {}
    for name, content in contents:
        rel, target = targets[name]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.data)
        etags[rel] = content.properties.etag
    return {rel: etags[rel] for rel, _ in targets.values()}  # in listing order


def upload_directory(store: BlobStore, src_dir: Path, prefix: str) -> dict[str, str]:
    """Upload every file below ``src_dir`` (symlinked directories are not followed) to
    ``prefix/<relative path>``, overwriting. Returns blob name -> etag. All names are
    validated before anything is uploaded."""
    src = Path(src_dir)
    if not src.is_dir():
        raise NotADirectoryError(f"not a directory: {src}")
    directory = _as_directory(prefix)
    files: list[tuple[str, Path]] = []
    for dirpath, _dirnames, filenames in os.walk(src):
        for filename in filenames:
            path = Path(dirpath, filename)
            if path.is_file():
                files.append((directory + path.relative_to(src).as_posix(), path))
    files.sort()
    for name, _ in files:
        validate_blob_name(name)
    if isinstance(store, BulkFileTransfer):
        return store.upload_files(files)
    if isinstance(store, BulkBlobTransfer):
        # A generator: each file is read only when its upload can start.
        uploaded = store.upload_many((name, path.read_bytes()) for name, path in files)
        return {name: uploaded[name].etag for name, _ in files}
    return {name: store.upload_blob(name, path.read_bytes()).etag for name, path in files}


def digest_prefix(store: BlobStore, prefix: str) -> str:
    """A sha256 (hex) over the sorted (path below the prefix, etag) pairs under ``prefix``.

    Changes whenever a blob under the prefix is written, added or deleted; does not depend on
    the prefix itself or on anything outside it."""
    directory = _as_directory(prefix)
    pairs = sorted((p.name[len(directory) :], p.etag) for p in store.list_blobs(directory))
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps(pair).encode() + b"\n")
    return digest.hexdigest()


def _as_directory(prefix: str) -> str:
    return prefix if prefix.endswith("/") else prefix + "/"


class _Destination:
    """Files below a directory that stay below it, symlinks followed. Each parent directory
    is resolved once: a resolve costs a system call per path component, which for thousands
    of small blobs was a measurable share of a download."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()
        self._parent_inside: dict[str, bool] = {}

    def path_of(self, rel: str, name: str) -> Path:
        segments = rel.split("/")
        if (
            any(s in ("", ".", "..") for s in segments)
            or "\\" in rel
            or "\x00" in rel
            or os.path.isabs(rel)
        ):
            raise InvalidBlobNameError(name, "would be written outside the destination directory")
        target = self._root.joinpath(*segments)
        parent = rel.rpartition("/")[0]
        inside = self._parent_inside.get(parent)
        if inside is None:
            inside = target.parent.resolve().is_relative_to(self._root)
            self._parent_inside[parent] = inside
        # The file itself may be a symlink (its parent resolved inside or not).
        if not inside or (target.is_symlink() and not target.resolve().is_relative_to(self._root)):
            raise InvalidBlobNameError(name, "would be written outside the destination directory")
        return target
