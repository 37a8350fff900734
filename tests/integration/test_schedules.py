"""Cron schedules in the coordinator over the real SQLite run store: a tick starts one run,
across restarts and coordinators; after downtime the missed ticks start one run."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import cli.main as cli
from coordinator.api import create_app
from coordinator.domain import Policy
from coordinator.schedules import Schedule
from coordinator.service import Coordinator, TriggerPolicy
from coordinator.store import RunStore
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.groups import GroupRule
from shared.recipe_registry import get_recipe
from shared.topology import build_topology
from tests.clock import Clock

CSV = b"timestamp,a\n1,2\n"
NIGHTLY = Schedule(
    cron="0 3 * * *", recipe="state_identifier", data="datasets/nightly", params={"n_clusters": 2}
)


def coordinator(tmp_path: Path, clock: Clock, *schedules: Schedule) -> Coordinator:
    """A coordinator on the run store in ``tmp_path``: a second one is a restart."""
    blobs = LocalBlobStore(tmp_path / "blobs")
    store = RunStore.from_url(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    store.create_tables()
    return Coordinator(
        bus=SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology()),
        blobs=blobs,
        store=store,
        recipes=get_recipe,
        policy=Policy(),
        triggers=TriggerPolicy(schedules=schedules),
        clock=clock,
    )


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 3, day, hour, minute, tzinfo=UTC)


def test_a_tick_starts_one_run_and_a_missed_stretch_starts_one(tmp_path: Path) -> None:
    LocalBlobStore(tmp_path / "blobs").upload_blob("datasets/nightly/a.csv", CSV)
    clock = Clock()
    clock.now = at(1, 12)
    first = coordinator(tmp_path, clock, NIGHTLY)
    assert first.fire_due_schedules() == 0, "a new schedule waits for its next tick"

    clock.now = at(2, 3, 0)
    assert first.fire_due_schedules() == 1
    assert first.fire_due_schedules() == 0
    (run,), _ = first.list_runs()
    assert (run.trigger, run.data, run.params) == (
        "schedule",
        "datasets/nightly",
        {"n_clusters": 2},
    )
    assert run.trigger_details["tick"] == at(2, 3).isoformat()

    # Another coordinator (or this one restarted) on the same store: nothing new is due.
    second = coordinator(tmp_path, clock, NIGHTLY)
    assert second.fire_due_schedules() == 0

    # Down for five nights: one run for all of them, for the latest tick.
    first.close()
    clock.now = at(7, 9, 30)
    assert second.fire_due_schedules() == 1
    assert second.fire_due_schedules() == 0
    runs, total = second.list_runs()
    assert total == 2
    assert runs[0].trigger_details["tick"] == at(7, 3).isoformat()
    second.close()


def test_a_tick_whose_data_is_missing_is_skipped_not_retried(tmp_path: Path) -> None:
    clock = Clock()
    clock.now = at(1, 12)
    scheduled = coordinator(tmp_path, clock, NIGHTLY)
    scheduled.fire_due_schedules()
    clock.now = at(2, 4)
    assert scheduled.fire_due_schedules() == 0
    LocalBlobStore(tmp_path / "blobs").upload_blob("datasets/nightly/a.csv", CSV)
    assert scheduled.fire_due_schedules() == 0, "that tick was skipped"
    clock.now = at(3, 3) + timedelta(seconds=1)
    assert scheduled.fire_due_schedules() == 1
    scheduled.close()


def test_a_schedule_may_start_a_group(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    for species in ("sp-a", "sp-b"):
        blobs.upload_blob(f"datasets/species/{species}/a.csv", CSV)
    clock = Clock()
    clock.now = at(1, 12)
    weekly = Schedule(
        cron="0 3 * * 1", recipe="state_identifier", data="datasets/species", group=GroupRule()
    )
    scheduled = coordinator(tmp_path, clock, weekly)
    scheduled.fire_due_schedules()
    clock.now = at(3, 3)  # 2025-03-03 is a Monday
    assert scheduled.fire_due_schedules() == 1
    (view,), _ = scheduled.list_groups()
    assert view.group.trigger == "schedule"
    assert sum(view.counts.values()) == 2
    assert scheduled.fire_due_schedules() == 0
    scheduled.close()


def test_the_trigger_loop_sleeps_until_the_next_tick(tmp_path: Path) -> None:
    LocalBlobStore(tmp_path / "blobs").upload_blob("datasets/nightly/a.csv", CSV)
    clock = Clock()
    clock.now = at(1, 12)
    scheduled = coordinator(tmp_path, clock, NIGHTLY)
    assert scheduled.trigger_wait_s(24 * 3600) < 1, "a schedule not recorded yet: at once"
    scheduled.fire_due_schedules()
    # 03:00 tomorrow is 15 hours away; the loop sleeps that long, or its longest sleep.
    assert abs(scheduled.trigger_wait_s(24 * 3600) - 15 * 3600) < 1
    assert scheduled.trigger_wait_s(60) == 60

    clock.now = at(2, 3, 0)
    assert scheduled.trigger_wait_s(24 * 3600) < 1
    assert scheduled.fire_due_schedules() == 1
    assert abs(scheduled.trigger_wait_s(48 * 3600) - 24 * 3600) < 1
    scheduled.close()


def test_a_schedule_in_a_time_zone_fires_at_its_local_time_across_a_clock_change(
    tmp_path: Path,
) -> None:
    LocalBlobStore(tmp_path / "blobs").upload_blob("datasets/nightly/a.csv", CSV)
    amsterdam = NIGHTLY.model_copy(update={"timezone": "Europe/Amsterdam"})
    clock = Clock()
    clock.now = datetime(2025, 3, 29, 12, tzinfo=UTC)
    service = coordinator(tmp_path, clock, amsterdam)
    assert service.fire_due_schedules() == 0
    # 03:00 in Amsterdam on 30 March is summer time: 01:00 UTC, not 02:00.
    assert service.trigger_wait_s(48 * 3600) == pytest.approx(13 * 3600, abs=1)

    clock.now = datetime(2025, 3, 30, 1, tzinfo=UTC)
    assert service.fire_due_schedules() == 1
    (run,), _ = service.list_runs()
    assert run.trigger_details["timezone"] == "Europe/Amsterdam"
    assert run.trigger_details["tick"] == datetime(2025, 3, 30, 1, tzinfo=UTC).isoformat()
    assert service.trigger_wait_s(48 * 3600) == pytest.approx(24 * 3600, abs=1)
    service.close()


def test_the_api_and_cli_list_each_schedule_with_its_last_and_next_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    LocalBlobStore(tmp_path / "blobs").upload_blob("datasets/nightly/a.csv", CSV)
    weekly = Schedule(
        cron="30 6 * * 1",
        recipe="state_identifier",
        data="datasets/species",
        group=GroupRule(),
        timezone="Europe/Amsterdam",
    )
    clock = Clock()
    clock.now = at(1, 12)  # Saturday 1 March 2025
    service = coordinator(tmp_path, clock, NIGHTLY, weekly)
    with TestClient(create_app(coordinator=service, run_loops=False)) as client:
        listed = client.get("/schedules")
        assert listed.status_code == 200, listed.text
        nightly, groups = listed.json()["schedules"]
        assert (nightly["cron"], nightly["timezone"], nightly["group"]) == (
            "0 3 * * *",
            "UTC",
            False,
        )
        assert nightly["last_tick"] is None
        assert nightly["next_tick"] == "2025-03-02T03:00:00Z"
        # 06:30 on Monday in Amsterdam (winter time) is 05:30 UTC.
        assert (groups["timezone"], groups["group"]) == ("Europe/Amsterdam", True)
        assert groups["next_tick"] == "2025-03-03T05:30:00Z"

        service.fire_due_schedules()  # records each schedule's current tick
        clock.now = at(2, 3, 5)
        assert service.fire_due_schedules() == 1
        nightly = client.get("/schedules").json()["schedules"][0]
        assert (nightly["last_tick"], nightly["next_tick"]) == (
            "2025-03-02T03:00:00Z",
            "2025-03-03T03:00:00Z",
        )

        monkeypatch.setattr(cli, "_client", lambda _args: contextlib.nullcontext(client))
        assert cli.main(["schedules"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["CRON", "TIMEZONE", "NEXT", "(UTC)", "LAST", "(UTC)", "STARTS"]
        assert "2025-03-03 03:00" in lines[1] and "2025-03-02 03:00" in lines[1]
        assert lines[1].endswith("state_identifier on datasets/nightly")
        assert "Europe/Amsterdam" in lines[2] and "2025-03-03 05:30" in lines[2]
        assert lines[2].endswith("a group of state_identifier on datasets/species")
    service.close()


def test_the_cli_says_when_there_are_no_schedules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    service = coordinator(tmp_path, Clock())
    with TestClient(create_app(coordinator=service, run_loops=False)) as client:
        assert client.get("/schedules").json() == {"schedules": []}
        monkeypatch.setattr(cli, "_client", lambda _args: contextlib.nullcontext(client))
        assert cli.main(["schedules"]) == 0
    assert capsys.readouterr().out.startswith("no schedules")
    service.close()
