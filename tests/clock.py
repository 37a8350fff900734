"""A clock tests move by hand, for code that takes ``clock: Callable[[], datetime]``."""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.messages import utcnow


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
