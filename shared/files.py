"""Checks on the local directories a service writes to, so that start-up names the path and
the cause (a read-only volume, a missing permission) instead of a database's bare error."""

from __future__ import annotations

import tempfile
from pathlib import Path


def unwritable_reason(directory: Path) -> str | None:
    """Why a file cannot be created in ``directory`` (created if missing), or None if it can."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
