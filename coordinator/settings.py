"""The coordinator's settings: the common ones plus its database, HTTP address, retry policy
and loop intervals, all from ``RETRAINER_*`` environment variables or ``.env``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from coordinator.domain import Policy
from coordinator.service import LoopIntervals
from shared.settings import CommonSettings


class CoordinatorSettings(CommonSettings):
    # SQLAlchemy URL, e.g. postgresql+psycopg://user@host:5432/db; default: SQLite in state_dir.
    database_url: str | None = None
    # A PostgreSQL schema of its own, for a database shared with other applications.
    database_schema: str | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    max_attempts: int = Field(default=3, ge=1)
    backoff_base_s: float = Field(default=2.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)
    queue_timeout_s: float = Field(default=300.0, gt=0)
    run_timeout_s: float = Field(default=900.0, gt=0)
    train_timeout_s: float = Field(default=7200.0, gt=0)

    consumer_wait_s: float = Field(default=1.0, gt=0)
    relay_interval_s: float = Field(default=1.0, gt=0)
    watchdog_interval_s: float = Field(default=5.0, gt=0)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.state_dir / 'coordinator.sqlite').resolve()}"

    @property
    def policy(self) -> Policy:
        return Policy(
            max_attempts=self.max_attempts,
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            queue_timeout_s=self.queue_timeout_s,
            run_timeout_s=self.run_timeout_s,
            run_timeout_overrides_s={"train": self.train_timeout_s},
        )

    @property
    def loop_intervals(self) -> LoopIntervals:
        return LoopIntervals(
            consumer_wait_s=self.consumer_wait_s,
            relay_interval_s=self.relay_interval_s,
            watchdog_interval_s=self.watchdog_interval_s,
        )
