"""Cron schedules: runs (or run groups) that start at the times a cron expression names.

A schedule comes from ``RETRAINER_SCHEDULES`` (a JSON list of ``Schedule``) or from a trigger
rule with ``schedule`` (its recipe, params, data and group). The expressions are croniter's (five
fields, optionally a sixth for seconds), read in the schedule's ``timezone`` (an IANA name,
default UTC; ticks are kept in UTC). Where the clocks change: a time skipped when they go
forward fires at the first time after it (croniter's rule), and a fixed time repeated when they
go back fires once, at its first occurrence, so a nightly run stays one run a night (vixie
cron's rule: a schedule with ``*`` for its minute or hour, such as hourly, fires on both
passes).

Durable across restarts: the run store keeps, per schedule, the latest tick it has acted on
(table ``schedules``). Each check starts one run for the *latest* tick due since then and
records that tick in the same transaction as the run, so a tick never starts two runs (two
coordinators, a crash, a restart), and after downtime that missed several ticks one run starts,
not one per missed tick. A schedule seen for the first time starts nothing until its next tick.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
    timezone: str = Field(default="UTC", examples=["Europe/Amsterdam"])

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (e.g. '0 3 * * *')")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return validate_timezone(value)

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
        fields = self.model_dump(mode="json")
        if fields["timezone"] == "UTC":
            del fields["timezone"]  # the keys of schedules from before time zones stay
        body = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def describe(self) -> str:
        what = f"a {self.recipe} group" if self.group else self.recipe
        zone = "" if self.timezone == "UTC" else f" ({self.timezone})"
        return self.name or f"{self.cron}{zone} -> {what} on {self.data}"


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
                    timezone=rule.schedule_timezone,
                )
            )
        except ValueError as exc:
            raise ConfigurationError(f"trigger rule {index} ({rule.describe()}): {exc}") from exc
    return tuple(found)


def validate_timezone(name: str) -> str:
    """``name`` if it is an IANA time zone this machine knows; raises ValueError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{name[:80]!r} is not a known time zone (an IANA name such as 'Europe/Amsterdam')"
        ) from None
    return name


def latest_tick(cron: str, now: datetime, timezone: str = "UTC") -> datetime:
    """The latest time ``cron`` (read in ``timezone``) names at or before ``now``, in UTC."""
    local = now.astimezone(ZoneInfo(timezone))
    tick: datetime = croniter(cron, local + timedelta(microseconds=1)).get_prev(datetime)
    if timezone != "UTC" and _fixed_time(cron) and _repeats(cron, tick):
        tick = croniter(cron, tick).get_prev(datetime)
    return tick.astimezone(UTC)


def due_tick(
    cron: str, acted_on: datetime, now: datetime, timezone: str = "UTC"
) -> datetime | None:
    """The tick to act on now: the latest at or before ``now`` if it is after ``acted_on``
    (however many ticks passed since: one run for all of them), else None."""
    tick = latest_tick(cron, now, timezone)
    return tick if tick > acted_on else None


def next_tick(cron: str, now: datetime, timezone: str = "UTC") -> datetime:
    """The first time ``cron`` (read in ``timezone``) names after ``now``, in UTC."""
    tick: datetime = croniter(cron, now.astimezone(ZoneInfo(timezone))).get_next(datetime)
    if timezone != "UTC" and _fixed_time(cron) and _repeats(cron, tick):
        tick = croniter(cron, tick).get_next(datetime)
    return tick.astimezone(UTC)


def _fixed_time(cron: str) -> bool:
    """Vixie cron's rule: only a job at a fixed minute and hour runs once when the clocks go
    back; one with ``*`` in either field (every 15 minutes, hourly) runs on both passes."""
    fields = cron.split()
    if len(fields) == 1:  # "@daily", "@weekly", ...
        return fields[0] != "@hourly"
    return not (fields[0].startswith("*") or fields[1].startswith("*"))


def _repeats(cron: str, tick: datetime) -> bool:
    """Whether ``tick`` (local) shows the same wall-clock time as the tick before it: the
    second pass of an hour the clocks went back over."""
    before: datetime = croniter(cron, tick).get_prev(datetime)
    return before.replace(tzinfo=None) == tick.replace(tzinfo=None)
