"""Waiting in tests: for a condition or an event, never against a wall-clock budget that a busy
machine can exceed. ``WAIT_S`` only guards against hanging for ever: generous by default and
set by ``RETRAINER_TEST_WAIT_S``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

WAIT_S = float(os.environ.get("RETRAINER_TEST_WAIT_S", "600"))


def wait_until(
    condition: Callable[[], T], what: str, *, timeout_s: float | None = None, poll_s: float = 0.05
) -> T:
    """``condition()`` once it is truthy; fails naming ``what`` after the hang guard."""
    limit = WAIT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {limit:g} s")
        time.sleep(poll_s)
