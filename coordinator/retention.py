"""Removing cached stage outputs nothing needs any more.

A cacheable stage writes under ``artifacts/cache/<stage>/<key>/`` (``shared.worker``). An entry
is removed when all of these hold:

* it was written longer than the retention age ago (its newest blob), and
* no run still running or waiting, nor any run updated within that age, has it among its
  outputs (a run that just hit the cache is recent), and
* no run whose model was registered has it among its outputs: those prefixes are the data-set,
  split and training versions a registered model's lineage names, kept for as long as the run
  store knows the run.

The manifest goes first, so a stage that looks for the entry meanwhile misses the cache and
computes it again rather than reading a half-deleted entry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.blobs.port import BlobStore
from shared.errors import BlobNotFoundError
from shared.worker import ARTIFACTS_CONTAINER, CACHE_FOLDER, MANIFEST

log = logging.getLogger(__name__)

CACHE_ROOT = f"{ARTIFACTS_CONTAINER}/{CACHE_FOLDER}/"


@dataclass(frozen=True)
class CacheEntry:
    prefix: str
    written_at: datetime
    blobs: tuple[str, ...]


def cache_entries(blobs: BlobStore) -> list[CacheEntry]:
    """Every cache entry, with its newest blob's time and its blobs."""
    found: dict[str, tuple[datetime, list[str]]] = {}
    for blob in blobs.list_blobs(CACHE_ROOT):
        parts = blob.name[len(CACHE_ROOT) :].split("/")
        if len(parts) < 3:
            continue
        prefix = CACHE_ROOT + "/".join(parts[:2])
        written, names = found.setdefault(prefix, (blob.last_modified, []))
        names.append(blob.name)
        found[prefix] = (max(written, blob.last_modified), names)
    return [CacheEntry(p, written, tuple(names)) for p, (written, names) in sorted(found.items())]


def removable(
    entries: Iterable[CacheEntry], protected: set[str], *, now: datetime, max_age: timedelta
) -> list[CacheEntry]:
    """The entries older than ``max_age`` that no protected prefix names."""
    return [
        entry
        for entry in entries
        if now - entry.written_at > max_age and entry.prefix.rstrip("/") not in protected
    ]


def remove_entry(blobs: BlobStore, entry: CacheEntry) -> None:
    manifest = f"{entry.prefix}/{MANIFEST}"
    for name in sorted(entry.blobs, key=lambda name: name != manifest):
        # Gone already: another coordinator removed it meanwhile.
        with suppress(BlobNotFoundError):
            blobs.delete_blob(name)
