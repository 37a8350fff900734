"""Cache retention: which cached stage outputs go, over a real local blob store."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from coordinator.retention import cache_entries, removable, remove_entry
from shared.blobs.local import LocalBlobStore

DAY = timedelta(days=1)


def test_entries_older_than_the_age_and_unprotected_are_removable(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    for key in ("old", "kept", "fresh"):
        store.upload_blob(f"artifacts/cache/split/{key}/train.csv", b"a\n")
        store.upload_blob(f"artifacts/cache/split/{key}/_manifest.json", b"{}")
    store.upload_blob("artifacts/runs/r/register/registration.json", b"{}")
    now = datetime.now(UTC)
    # Age two of the entries by their files' times (the local store reports mtime).
    for key in ("old", "kept"):
        for path in (tmp_path / "artifacts" / "cache" / "split" / key).iterdir():
            ten_days_ago = time.time() - 10 * 86400
            os.utime(path, (ten_days_ago, ten_days_ago))

    entries = cache_entries(store)
    assert [e.prefix for e in entries] == [
        "artifacts/cache/split/fresh",
        "artifacts/cache/split/kept",
        "artifacts/cache/split/old",
    ]
    gone = removable(entries, {"artifacts/cache/split/kept"}, now=now, max_age=7 * DAY)
    assert [e.prefix for e in gone] == ["artifacts/cache/split/old"]

    (entry,) = gone
    remove_entry(store, entry)
    remove_entry(store, entry)  # again: what is gone already is fine
    assert [e.prefix for e in cache_entries(store)] == [
        "artifacts/cache/split/fresh",
        "artifacts/cache/split/kept",
    ]
