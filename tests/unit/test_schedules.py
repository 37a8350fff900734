"""Cron schedules as pure functions: which tick is due, and a missed run of ticks is one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from coordinator.schedules import Schedule, due_tick, latest_tick, schedules_of
from shared.errors import ConfigurationError
from shared.triggers import TriggerRule

HOURLY = "0 * * * *"


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2025, 3, 1, hour, minute, second, tzinfo=UTC)


def test_the_latest_tick_includes_now() -> None:
    assert latest_tick(HOURLY, at(12)) == at(12)
    assert latest_tick(HOURLY, at(12, 59, 59)) == at(12)


def test_a_tick_is_due_once() -> None:
    assert due_tick(HOURLY, at(12), at(12, 30)) is None
    assert due_tick(HOURLY, at(12), at(13)) == at(13)
    assert due_tick(HOURLY, at(13), at(13, 0, 1)) is None


def test_downtime_over_many_ticks_gives_one_tick_the_latest() -> None:
    assert due_tick(HOURLY, at(3), at(12, 10)) == at(12)


def test_a_bad_cron_expression_is_refused() -> None:
    with pytest.raises(ValidationError, match="not a cron expression"):
        Schedule(cron="61 * * * *", recipe="r", data="datasets/x")


def test_the_key_changes_with_the_definition() -> None:
    one = Schedule(cron=HOURLY, recipe="r", data="datasets/x")
    assert one.key == Schedule(cron=HOURLY, recipe="r", data="datasets/x").key
    assert one.key != Schedule(cron="5 * * * *", recipe="r", data="datasets/x").key


def test_a_trigger_rule_with_a_schedule_is_a_schedule_and_needs_data() -> None:
    rule = TriggerRule(
        container="datasets", prefix="x/", recipe="r", data="datasets/x", schedule="0 3 * * *"
    )
    (schedule,) = schedules_of([], (rule,))
    assert (schedule.cron, schedule.recipe, schedule.data) == ("0 3 * * *", "r", "datasets/x")
    with pytest.raises(ConfigurationError, match="needs 'data'"):
        schedules_of([], (rule.model_copy(update={"data": None}),))
    with pytest.raises(ConfigurationError, match="not a cron expression"):
        schedules_of([], (rule.model_copy(update={"schedule": "every day"}),))
