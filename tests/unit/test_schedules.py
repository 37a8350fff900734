"""Cron schedules as pure functions: which tick is due, and a missed run of ticks is one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from coordinator.schedules import Schedule, due_tick, latest_tick, next_tick, schedules_of
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


AMSTERDAM = "Europe/Amsterdam"


def utc(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, month, day, hour, minute, tzinfo=UTC)


def test_a_schedule_reads_its_cron_in_its_time_zone_across_a_clock_change() -> None:
    # 03:00 in Amsterdam: 02:00 UTC in winter time, 01:00 UTC from 30 March (summer time).
    assert latest_tick("0 3 * * *", utc(3, 29, 12), AMSTERDAM) == utc(3, 29, 2)
    assert latest_tick("0 3 * * *", utc(3, 31, 12), AMSTERDAM) == utc(3, 31, 1)
    assert next_tick("0 3 * * *", utc(3, 29, 2), AMSTERDAM) == utc(3, 30, 1)
    # 02:30 does not exist on 30 March: that night's run starts at 03:00 summer time.
    assert next_tick("30 2 * * *", utc(3, 29, 12), AMSTERDAM) == utc(3, 30, 1)


def test_a_fixed_time_the_clocks_pass_twice_starts_one_run() -> None:
    # On 26 October 02:30 comes twice in Amsterdam: 00:30 UTC (summer) and 01:30 UTC.
    nightly = "30 2 * * *"
    first = due_tick(nightly, utc(10, 25, 0, 30), utc(10, 26, 0, 45), AMSTERDAM)
    assert first == utc(10, 26, 0, 30)
    assert due_tick(nightly, first, utc(10, 26, 1, 45), AMSTERDAM) is None
    assert latest_tick(nightly, utc(10, 26, 12), AMSTERDAM) == first
    assert next_tick(nightly, first, AMSTERDAM) == utc(10, 27, 1, 30)


def test_an_hourly_schedule_fires_on_both_passes_of_the_repeated_hour() -> None:
    ticks = [utc(10, 25, 23, 30)]
    for _ in range(3):
        ticks.append(next_tick(HOURLY, ticks[-1], AMSTERDAM))
    assert ticks[1:] == [utc(10, 26, 0), utc(10, 26, 1), utc(10, 26, 2)]


def test_an_unknown_time_zone_is_refused_naming_it() -> None:
    with pytest.raises(ValidationError, match="'Mars/Olympus' is not a known time zone"):
        Schedule(cron=HOURLY, recipe="r", data="datasets/x", timezone="Mars/Olympus")
    rule = TriggerRule(
        container="datasets",
        recipe="r",
        data="datasets/x",
        schedule="0 3 * * *",
        schedule_timezone="Nowhere",
    )
    with pytest.raises(ConfigurationError, match="'Nowhere' is not a known time zone"):
        schedules_of([], (rule,))
    (schedule,) = schedules_of([], (rule.model_copy(update={"schedule_timezone": AMSTERDAM}),))
    assert schedule.timezone == AMSTERDAM


def test_a_utc_schedule_keeps_its_key_and_a_time_zone_makes_a_new_one() -> None:
    # The key this schedule had before schedules took a time zone: its recorded ticks stay.
    before = "da49b6a4823c0d6a2616eafc05a82f13f7a809e6fb7cf0d2826fb5c0ff7cb4f6"
    assert Schedule(cron=HOURLY, recipe="r", data="datasets/x").key == before
    assert Schedule(cron=HOURLY, recipe="r", data="datasets/x", timezone="UTC").key == before
    assert Schedule(cron=HOURLY, recipe="r", data="datasets/x", timezone=AMSTERDAM).key != before
