"""Importing this module never ends: it says so in ``$RETRAINER_TEST_IMPORT_MARKER`` first."""

from __future__ import annotations

import os
import time
from pathlib import Path

Path(os.environ["RETRAINER_TEST_IMPORT_MARKER"]).touch()
while True:
    time.sleep(0.05)


def aggregate() -> None:  # pragma: no cover - never reached
    raise AssertionError("unreachable")
