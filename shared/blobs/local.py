"""The blob store on a local directory: the default adapter for development, tests and demos.

Layout under ``root``::

    <container>/<path>          the blob's bytes, exactly as uploaded (a plain file)
    .blobstore/tmp/             temp files of writes in progress (or of writes that crashed)
    .blobstore/meta/xx/<h>.json the etag of blob ``h = sha256(name)``, bound to the data file
    .blobstore/leases/xx/<h>.json the blob's latest lease: its id, duration and expiry
    .blobstore/locks/xx.lock    256 lock stripes (``xx`` = first byte of ``h``)

``.blobstore`` can never be a container name (container names start with a letter or digit), so
internal files are unreachable by blob name and never listed.

Writes are atomic: the bytes go to a temp file (same file system), are fsynced, and
``os.replace`` puts them at the blob's path, so a reader sees the old or the new content and a
crash leaves the old blob (plus a stray temp file nobody lists).

Etags: each write draws a random ``uuid4().hex`` and records it in the blob's metadata file
together with the identity of the data file it describes (inode number, size, mtime in ns).
An etag is taken from the metadata only while that identity still matches the data file;
otherwise (a crash between the data and the metadata rename, or a file put there by hand) the
etag is derived from the identity itself (``f-<inode>-<mtime_ns>-<size>``). So an etag changes
on every write, even of the same bytes, stays the same while the blob is not written, survives
process restarts, and never names two different contents.

Concurrency: every operation holds a ``flock`` on the blob's lock stripe (exclusive for
writes and deletes, shared for reads), so ``overwrite=False`` and ``if_match`` are race-free
across threads and processes, and a reader always gets matching bytes and etag. Stripes are
fixed files that are never deleted, which avoids the delete-vs-lock races of per-blob lock
files; two blobs sharing a stripe merely serialize. ``flock`` needs a local file system
(POSIX; not NFS).

Leases (the port's, i.e. Azure's semantics): a lease file records the lease id and its expiry
on the wall clock (``time.time``, which every process on the host shares). Acquiring, renewing
and releasing hold the stripe's exclusive lock, so they are atomic with respect to each other
and to writes, which refuse a blob under another's active lease. A holder that dies leaves a
lease that simply expires.

Events: ``on_blob_created`` (optional) is called with the new properties after every successful
write, once the lock is released; ``shared.events.BlobEventPublisher`` turns that into the
``Microsoft.Storage.BlobCreated`` events Event Grid sends for Azure Storage.

Local limits that Azure does not have: a blob cannot also be a "directory" of other blobs
(``c/a`` and ``c/a/b``) -> InvalidBlobNameError; a path segment is at most 255 bytes; on a
case-insensitive file system names differing only in case are the same blob.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.blobs.port import (
    BlobContent,
    BlobProperties,
    split_blob_name,
    validate_lease_duration,
    validate_prefix,
)
from shared.errors import (
    BlobConditionFailedError,
    BlobExistsError,
    BlobLeasedError,
    BlobLeaseLostError,
    BlobNotFoundError,
    InvalidBlobNameError,
)

log = logging.getLogger(__name__)

INTERNAL_DIR = ".blobstore"
_MAX_SEGMENT_BYTES = 255
# os.replace into a directory that a concurrent delete pruned: recreate it and try again.
_REPLACE_ATTEMPTS = 10
# Blobs written at once by upload_files (each its own lock stripe, file and fsyncs).
UPLOAD_CONCURRENCY = 8


@dataclass(frozen=True)
class _Target:
    name: str
    container_dir: Path  # root/container
    path: Path  # root/container/path, not resolved
    key: str  # sha256 of the name: names the metadata file and the lock stripe


class LocalBlobStore:
    def __init__(
        self,
        root: Path | str,
        *,
        on_blob_created: Callable[[BlobProperties], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock``: the wall clock leases expire by (seconds since the epoch)."""
        self._root = Path(root)
        self._on_blob_created = on_blob_created
        self._clock = clock

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self._root)!r})"

    @property
    def root(self) -> Path:
        return self._root

    # -- the port --------------------------------------------------------------------------

    def upload_blob(
        self,
        name: str,
        data: bytes,
        *,
        overwrite: bool = True,
        if_match: str | None = None,
    ) -> BlobProperties:
        target = self._target(name)
        with self._locked(target, exclusive=True):
            current = self._current(target)
            if current is not None and not overwrite:
                raise BlobExistsError(name)
            if if_match is not None and (current is None or current.etag != if_match):
                raise BlobConditionFailedError(name, if_match)
            if current is not None and self._active_lease(target) is not None:
                raise BlobLeasedError(name)
            written = self._write(target, data)
        self._created(written)
        return written

    def upload_files(self, items: Iterable[tuple[str, Path]]) -> dict[str, str]:
        """``shared.blobs.transfer.BulkFileTransfer``: upload each ``(name, file)``,
        overwriting, as ``upload_blob`` would, several at once, and each directory that
        changed is fsynced once for the whole batch instead of twice per blob. The fsyncs are
        most of an upload's time here; concurrent ones share the file system's journal
        commits. Every name is checked first; returns name -> etag in the order of
        ``items``. On the first error no further blob is started; those in flight finish,
        the blobs written are synced and reported to ``on_blob_created``, then it is
        raised."""
        listed = [(self._target(name), Path(file)) for name, file in items]
        dirs: set[Path] = set()
        dirs_lock = threading.Lock()
        failed = threading.Event()

        def one(target: _Target, file: Path) -> BlobProperties | None:
            if failed.is_set():
                return None  # after the first error no further blob is started
            try:
                return write(target, file)
            except BaseException:
                failed.set()
                raise

        def write(target: _Target, file: Path) -> BlobProperties:
            data = file.read_bytes()
            changed: set[Path] = set()
            with self._locked(target, exclusive=True):
                if self._current(target) is not None and self._active_lease(target) is not None:
                    raise BlobLeasedError(target.name)
                props = self._write(target, data, dirs_to_sync=changed)
            with dirs_lock:
                dirs.update(changed)
            return props

        with ThreadPoolExecutor(min(UPLOAD_CONCURRENCY, max(len(listed), 1))) as pool:
            futures = [pool.submit(one, target, file) for target, file in listed]
        written = [p for f in futures if f.exception() is None and (p := f.result()) is not None]
        for directory in sorted(dirs):
            _fsync_dir(directory)
        for props in written:
            self._created(props)
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error
        return {props.name: props.etag for props in written}

    def download_files(self, targets: Iterable[tuple[str, Path]]) -> dict[str, str]:
        """``shared.blobs.transfer.BulkFileTransfer``: write each ``(name, file)`` (parent
        directories created); returns name -> etag of the bytes written."""
        etags: dict[str, str] = {}
        for name, file in targets:
            content = self.download_blob(name)
            path = Path(file)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.data)
            etags[name] = content.properties.etag
        return etags

    def download_blob(self, name: str) -> BlobContent:
        target = self._target(name)
        self._require_file(target)
        with self._locked(target, exclusive=False):
            try:
                with open(target.path, "rb") as f:
                    st = os.fstat(f.fileno())
                    if not stat.S_ISREG(st.st_mode):
                        raise BlobNotFoundError(name)
                    data = f.read()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise BlobNotFoundError(name) from None
            return BlobContent(self._properties(target, st), data)

    def get_blob_properties(self, name: str) -> BlobProperties:
        target = self._target(name)
        self._require_file(target)
        with self._locked(target, exclusive=False):
            current = self._current(target)
        if current is None:
            raise BlobNotFoundError(name)
        return current

    def list_blobs(self, prefix: str) -> Iterator[BlobProperties]:
        container, path_prefix = validate_prefix(prefix)
        container_dir = self._root / container
        self._check_inside_root(prefix, container_dir)
        names = sorted(f"{container}/{rel}" for rel in self._walk(container_dir, "", path_prefix))
        return self._each_current(names)

    def _each_current(self, names: list[str]) -> Iterator[BlobProperties]:
        # Each blob is read when the caller reaches it: one that only asks whether there is any
        # (POST /runs checking its data folder) reads one blob's lock and etag, not thousands.
        for name in names:
            try:
                target = self._target(name)
                with self._locked(target, exclusive=False):
                    props = self._current(target)
            except InvalidBlobNameError:
                continue  # e.g. a file symlinked out of the root
            if props is not None:  # None: deleted since the walk
                yield props

    def delete_blob(self, name: str, *, if_match: str | None = None) -> None:
        target = self._target(name)
        self._require_file(target)
        with self._locked(target, exclusive=True):
            current = self._current(target)
            if current is None:
                raise BlobNotFoundError(name)
            if if_match is not None and current.etag != if_match:
                raise BlobConditionFailedError(name, if_match)
            if self._active_lease(target) is not None:
                raise BlobLeasedError(name)
            try:
                target.path.unlink()
            except FileNotFoundError:
                raise BlobNotFoundError(name) from None
            for internal in (self._meta_path(target), self._lease_path(target)):
                with suppress(FileNotFoundError):
                    internal.unlink()
        self._prune_empty_dirs(target)

    def acquire_blob_lease(self, name: str, *, duration_s: int) -> str:
        validate_lease_duration(duration_s)
        target = self._target(name)
        self._require_file(target)
        with self._locked(target, exclusive=True):
            if self._current(target) is None:
                raise BlobNotFoundError(name)
            if self._active_lease(target) is not None:
                raise BlobLeasedError(name)
            lease_id = str(uuid.uuid4())
            self._write_lease(target, lease_id, duration_s)
        return lease_id

    def renew_blob_lease(self, name: str, lease_id: str) -> None:
        target = self._target(name)
        with self._locked(target, exclusive=True):
            lease = self._read_lease(target)
            if self._current(target) is None or lease is None or lease["lease_id"] != lease_id:
                raise BlobLeaseLostError(name)
            self._write_lease(target, lease_id, lease["duration_s"])

    def release_blob_lease(self, name: str, lease_id: str) -> None:
        target = self._target(name)
        with self._locked(target, exclusive=True):
            lease = self._read_lease(target)
            if lease is not None and lease["lease_id"] == lease_id:
                self._lease_path(target).unlink()

    # -- leases ----------------------------------------------------------------------------

    def _lease_path(self, target: _Target) -> Path:
        return self._internal("leases", target.key[:2], f"{target.key}.json")

    def _read_lease(self, target: _Target) -> dict[str, Any] | None:
        """The blob's latest lease, active or expired, or None. Call under the lock."""
        try:
            lease: dict[str, Any] = json.loads(self._lease_path(target).read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None
        return lease

    def _active_lease(self, target: _Target) -> dict[str, Any] | None:
        lease = self._read_lease(target)
        if lease is None or lease["expires_at"] <= self._clock():
            return None
        return lease

    def _write_lease(self, target: _Target, lease_id: str, duration_s: int) -> None:
        lease = {
            "lease_id": lease_id,
            "duration_s": duration_s,
            "expires_at": self._clock() + duration_s,
        }
        tmp_dir = self._internal("tmp")
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._write_temp(tmp_dir, json.dumps(lease).encode())
        path = self._lease_path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)

    # -- writing ---------------------------------------------------------------------------

    def _write(
        self, target: _Target, data: bytes, *, dirs_to_sync: set[Path] | None = None
    ) -> BlobProperties:
        """The one write path: every blob content that lands in the store goes through here.

        The caller holds the target's exclusive lock and has checked the preconditions; it
        calls ``_created`` with the result once it has released the lock. ``dirs_to_sync``:
        the directories whose entries changed are added there for the caller to fsync once
        for a whole batch, instead of here."""
        tmp_dir = self._internal("tmp")
        tmp_dir.mkdir(parents=True, exist_ok=True)
        data_tmp = self._write_temp(tmp_dir, data)
        meta_tmp: Path | None = None
        try:
            st = os.stat(data_tmp)
            etag = uuid.uuid4().hex
            meta = {"name": target.name, "etag": etag, **_identity(st)}
            meta_tmp = self._write_temp(tmp_dir, json.dumps(meta).encode())
            self._replace_data(data_tmp, target)
            # A crash here leaves new bytes with the old metadata: their identities differ, so
            # the blob gets a derived etag, never the old one.
            meta_path = self._meta_path(target)
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(meta_tmp, meta_path)
            if dirs_to_sync is None:
                _fsync_dir(target.path.parent)
                _fsync_dir(meta_path.parent)
            else:
                dirs_to_sync.update((target.path.parent, meta_path.parent))
        except BaseException:
            for leftover in (data_tmp, meta_tmp):
                if leftover is not None:
                    with suppress(FileNotFoundError):
                        leftover.unlink()
            raise
        return BlobProperties(target.name, etag, st.st_size, _modified(st))

    def _created(self, props: BlobProperties) -> None:
        """Tell ``on_blob_created`` (e.g. the blob-event publisher) about a write.

        The write has happened whatever the hook does, so a failing hook is logged, not
        raised: the caller must not retry a write that succeeded (as with Event Grid, the
        event is not part of the write)."""
        if self._on_blob_created is None:
            return
        try:
            self._on_blob_created(props)
        except Exception:
            log.exception("on_blob_created failed for %s (etag %s)", props.name, props.etag)

    @staticmethod
    def _write_temp(tmp_dir: Path, data: bytes) -> Path:
        # Not tempfile.mkstemp: that creates mode 0600; this honours the umask like open() does.
        path = tmp_dir / f"{uuid.uuid4().hex}.tmp"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with suppress(FileNotFoundError):
                path.unlink()
            raise
        return path

    def _replace_data(self, tmp: Path, target: _Target) -> None:
        for _ in range(_REPLACE_ATTEMPTS):
            try:
                target.path.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise InvalidBlobNameError(
                    target.name, "a blob exists at one of its parent paths"
                ) from None
            try:
                os.replace(tmp, target.path)
                return
            except FileNotFoundError:
                continue  # a concurrent delete pruned the (empty) parent directory
            except IsADirectoryError:
                # Directories with no file in them are leftovers, not blobs: remove them.
                if not _remove_empty_tree(target.path):
                    raise InvalidBlobNameError(
                        target.name, "other blobs exist below this name"
                    ) from None
        raise OSError(f"could not place blob {target.name!r} under {self._root}")

    def _prune_empty_dirs(self, target: _Target) -> None:
        directory = target.path.parent
        while directory != target.container_dir:
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or gone): stop
            directory = directory.parent

    # -- reading ---------------------------------------------------------------------------

    def _current(self, target: _Target) -> BlobProperties | None:
        """The blob's properties, or None if it does not exist. Call under the lock."""
        try:
            st = os.stat(target.path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return self._properties(target, st)

    def _properties(self, target: _Target, st: os.stat_result) -> BlobProperties:
        return BlobProperties(target.name, self._etag(target, st), st.st_size, _modified(st))

    def _etag(self, target: _Target, st: os.stat_result) -> str:
        identity = _identity(st)
        try:
            meta = json.loads(self._meta_path(target).read_bytes())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            meta = None
        if (
            isinstance(meta, dict)
            and meta.get("name") == target.name
            and all(meta.get(k) == v for k, v in identity.items())
            and isinstance(meta.get("etag"), str)
        ):
            etag: str = meta["etag"]
            return etag
        return "f-{ino:x}-{mtime_ns:x}-{size:x}".format(**identity)

    def _require_file(self, target: _Target) -> None:
        """Fail fast, without taking (and so creating) a lock, when there is no such blob."""
        if not target.path.is_file():
            raise BlobNotFoundError(target.name)

    def _walk(self, directory: Path, rel: str, path_prefix: str) -> Iterator[str]:
        """Relative paths of the files below ``directory`` that start with ``path_prefix``.

        Only descends into directories that can hold a match and never follows a symlinked
        directory (a symlinked file is kept; _target later refuses one pointing outside)."""
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            path = rel + entry.name
            if entry.is_dir(follow_symlinks=False):
                sub = path + "/"
                if sub.startswith(path_prefix) or path_prefix.startswith(sub):
                    yield from self._walk(Path(entry.path), sub, path_prefix)
            elif path.startswith(path_prefix) and entry.is_file():
                yield path

    # -- names, paths, locks ---------------------------------------------------------------

    def _target(self, name: str) -> _Target:
        container, path = split_blob_name(name)
        segments = path.split("/")
        try:
            encoded = [s.encode("utf-8") for s in segments]
        except UnicodeEncodeError:
            raise InvalidBlobNameError(name, "not valid UTF-8") from None
        if any(len(s) > _MAX_SEGMENT_BYTES for s in encoded):
            raise InvalidBlobNameError(
                name, f"a path segment is longer than {_MAX_SEGMENT_BYTES} bytes"
            )
        container_dir = self._root / container
        full = container_dir.joinpath(*segments)
        self._check_inside_root(name, full)
        return _Target(name, container_dir, full, hashlib.sha256(name.encode("utf-8")).hexdigest())

    def _check_inside_root(self, name: str, path: Path) -> None:
        root = os.path.realpath(self._root)
        resolved = os.path.realpath(path)
        if os.path.commonpath([root, resolved]) != root or resolved == root:
            raise InvalidBlobNameError(name, "resolves outside the store's root (a symlink?)")

    def _internal(self, *parts: str) -> Path:
        return self._root.joinpath(INTERNAL_DIR, *parts)

    def _meta_path(self, target: _Target) -> Path:
        return self._internal("meta", target.key[:2], f"{target.key}.json")

    @contextmanager
    def _locked(self, target: _Target, *, exclusive: bool) -> Iterator[None]:
        lock_dir = self._internal("locks")
        lock_dir.mkdir(parents=True, exist_ok=True)
        stripe = target.key[:2]  # one of 256 stripes
        fd = os.open(lock_dir / f"{stripe}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the flock


def _identity(st: os.stat_result) -> dict[str, int]:
    return {"ino": st.st_ino, "mtime_ns": st.st_mtime_ns, "size": st.st_size}


def _modified(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC)


def _remove_empty_tree(directory: Path) -> bool:
    """Remove ``directory`` if it holds nothing but (empty) directories; False if it cannot."""
    for dirpath, _dirnames, _filenames in os.walk(directory, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return not directory.exists()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on a directory
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
