"""Cron schedules: runs (or run groups) that start at the times a cron expression names.

A schedule comes from ``RETRAINER_SCHEDULES`` (a JSON list of ``Schedule``) or from a trigger
rule with ``schedule`` (its recipe, params, data and group). Times are UTC; the expressions are
croniter's (five fields, optionally a sixth for seconds).

Durable across restarts: the run store keeps, per schedule, the latest tick it has acted on
(table ``schedules``). Each check starts one run for the *latest* tick due since then and
records that tick in the same transaction as the run, so a tick never starts two runs (two
coordinators, a crash, a restart), and after downtime that missed several ticks one run starts,
not one per missed tick. A schedule seen for the first time starts nothing until its next tick.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.blobs.port import validate_prefix
from shared.errors import ConfigurationError, InvalidBlobNameError
from shared.groups import GroupRule
from shared.triggers import TriggerRule


class Schedule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cron: str = Field(examples=["0 3 * * *"])
    recipe: str = Field(min_length=1)
    data: str = Field(description="the blob prefix each run reads (or a group expands)")
    params: dict[str, Any] = Field(default_factory=dict)
    entity: str | None = None
    group: GroupRule | None = None
    # Shown in logs and the runs' trigger details; defaults to a description.
    name: str | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (e.g. '0 3 * * *')")
        return value

    @field_validator("data")
    @classmethod
    def _data(cls, value: str) -> str:
        try:
            validate_prefix(value)
        except InvalidBlobNameError as exc:
            raise ValueError(exc.reason) from None
        return value

    @property
    def key(self) -> str:
        """Identifies the schedule's state: changing any field makes a new schedule."""
        body = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def describe(self) -> str:
        what = f"a {self.recipe} group" if self.group else self.recipe
        return self.name or f"{self.cron} -> {what} on {self.data}"


def schedules_of(
    schedules: tuple[Schedule, ...] | list[Schedule], rules: tuple[TriggerRule, ...]
) -> tuple[Schedule, ...]:
    """Every schedule: those configured plus one per trigger rule with ``schedule``."""
    found = list(schedules)
    for index, rule in enumerate(rules):
        if rule.schedule is None:
            continue
        if rule.data is None:
            raise ConfigurationError(
                f"trigger rule {index} ({rule.describe()}): a schedule needs 'data'"
            )
        try:
            found.append(
                Schedule(
                    cron=rule.schedule,
                    recipe=rule.recipe,
                    data=rule.data,
                    params=rule.params,
                    group=rule.group,
                    name=f"{rule.describe()} every {rule.schedule!r}",
                )
            )
        except ValueError as exc:
            raise ConfigurationError(f"trigger rule {index} ({rule.describe()}): {exc}") from exc
    return tuple(found)


def latest_tick(cron: str, now: datetime) -> datetime:
    """The latest time ``cron`` names at or before ``now``."""
    tick: datetime = croniter(cron, now + timedelta(microseconds=1)).get_prev(datetime)
    return tick


def due_tick(cron: str, acted_on: datetime, now: datetime) -> datetime | None:
    """The tick to act on now: the latest at or before ``now`` if it is after ``acted_on``
    (however many ticks passed since: one run for all of them), else None."""
    tick = latest_tick(cron, now)
    return tick if tick > acted_on else None


def next_tick(cron: str, now: datetime) -> datetime:
    """The first time ``cron`` names after ``now``."""
    tick: datetime = croniter(cron, now).get_next(datetime)
    return tick
