"""The CLI's rendering and argument handling (the end-to-end tests drive it against a stack);
``watch`` against a fake HTTP transport, on a terminal and off it."""

import io
import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

import cli.main as cli
from cli.main import (
    CliError,
    _checked,
    _parse_param,
    _stage_line,
    clock_offset,
    describe_outcome,
    describe_run,
    render_progress,
    watch_run_live,
)


def run_doc(**overrides: object) -> dict[str, object]:
    stages = [
        {
            "name": name,
            "status": "pending",
            "attempt": 0,
            "cached": False,
            "duration_s": None,
            "error": None,
        }
        for name in ("aggregation", "split", "train", "register", "tag")
    ]
    return {
        "id": "r1",
        "status": "running",
        "recipe": "x",
        "data": "d/p",
        "params": {},
        "stages": stages,
        "metrics": {},
        "model": None,
        "error": None,
        **overrides,
    }


def test_params_are_json_values_or_strings() -> None:
    assert _parse_param("n_clusters=4") == ("n_clusters", 4)
    assert _parse_param('features=["mean"]') == ("features", ["mean"])
    assert _parse_param("name=plain") == ("name", "plain")
    with pytest.raises(CliError, match="not key=value"):
        _parse_param("oops")


def test_stage_line_shows_position_attempt_cache_and_error() -> None:
    run = run_doc()
    train = {
        "name": "train",
        "status": "failed",
        "attempt": 2,
        "cached": False,
        "duration_s": None,
        "error": "boom",
    }
    assert _stage_line(run, train, 3.0) == "[##...]    3.0s  train        failed (attempt 2): boom"
    split = {
        "name": "split",
        "status": "succeeded",
        "attempt": 1,
        "cached": True,
        "duration_s": 0.5,
        "error": None,
    }
    assert (
        _stage_line(run, split, 1.0) == "[##...]    1.0s  split        succeeded (cached) in 0.50s"
    )


def test_describe_run_names_model_and_promotion() -> None:
    text = describe_run(
        run_doc(
            status="succeeded",
            metrics={"silhouette": 0.61234},
            model={"name": "m", "version": "3", "champion": False, "reason": "not better"},
        )
    )
    assert "silhouette=0.6123" in text
    assert "model: m v3, not promoted (not better)" in text


def test_http_errors_become_readable_messages() -> None:
    request = httpx.Request("POST", "http://c/runs")
    response = httpx.Response(
        422,
        request=request,
        json={
            "detail": [
                {"loc": ["body", "params", "n_clusterz"], "msg": "Extra inputs are not permitted"},
                {"loc": ["body", "recipe"], "msg": "unknown recipe 'nope'"},
            ]
        },
    )
    with pytest.raises(CliError) as raised:
        _checked(response)
    assert str(raised.value) == (
        "POST /runs: HTTP 422: params.n_clusterz: Extra inputs are not permitted; "
        "recipe: unknown recipe 'nope'"
    )


# --- watch: the live table ------------------------------------------------------------------

NOW = datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)
RUN_ID = "0b7c1d2e-0000-4000-8000-000000000001"


def stage_doc(
    name: str, status: str = "pending", attempt: int = 0, **fields: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "status": status,
        "attempt": attempt,
        "cached": False,
        "duration_s": None,
        "error": None,
        "queued_at": None,
        "not_before": None,
        "started_at": None,
        **fields,
    }


def live_doc(*stages: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    names = ("aggregation", "split", "train", "register", "tag")
    given = {stage["name"]: stage for stage in stages}
    fields: dict[str, Any] = {
        "id": RUN_ID,
        "recipe": "state_identifier",
        "created_at": "2026-03-02T12:00:00Z",
        "duration_s": None,
        "stages": [given.get(name, stage_doc(name)) for name in names],
    }
    return run_doc(**(fields | overrides))


def test_progress_shows_each_stage_and_a_spinner_with_the_time_so_far() -> None:
    run = live_doc(
        stage_doc("aggregation", "succeeded", 1, duration_s=2.4, cached=True),
        stage_doc("split", "succeeded", 1, duration_s=0.8),
        stage_doc("train", "running", 2, started_at="2026-03-02T12:00:18Z"),
    )

    assert render_progress(run, now=NOW, frame=3) == [
        "run 0b7c1d2e  state_identifier  running  2/5  30.0s",
        "  ✓ aggregation  succeeded  attempt 1     2.4s  cached",
        "  ✓ split        succeeded  attempt 1     0.8s",
        "  ⠸ train        running    attempt 2    12.0s",
        "  · register     pending",
        "  · tag          pending",
    ]
    # The spinner turns from frame to frame; the rest stays put.
    assert render_progress(run, now=NOW, frame=4)[3].startswith("  ⠼ train ")
    # Without unicode (a terminal that cannot encode it), ASCII.
    ascii_lines = render_progress(run, now=NOW, frame=3, unicode=False)
    assert [line[:4] for line in ascii_lines[1:]] == ["  + ", "  + ", "  \\ ", "  . ", "  . "]


def test_a_run_on_a_data_asset_shows_the_skipped_stages_and_the_version() -> None:
    asset = {"name": "d", "version": "3", "reference": "asset:d@3"}
    run = live_doc(
        stage_doc("aggregation", "skipped"),
        stage_doc("split", "skipped"),
        stage_doc("train", "running", 1, started_at="2026-03-02T12:00:18Z"),
        data_asset=asset,
    )
    lines = render_progress(run, now=NOW, frame=3)
    assert lines[0].startswith("run 0b7c1d2e  state_identifier  running  2/5")
    assert lines[1].startswith("  ↷ aggregation  skipped ")
    assert lines[1].endswith("  on data asset d@3")
    assert render_progress(run, now=NOW, unicode=False)[2].startswith("  > split ")
    finished = run_doc(status="succeeded", data_asset=asset, duration_s=5.0)
    assert "  data asset: d v3 (asset:d@3)" in describe_outcome(finished).splitlines()


def test_a_stage_handed_to_azure_ml_names_its_job_while_it_runs() -> None:
    details = {"compute_backend": "azureml", "compute_job_id": "retrainer-x-1"}
    running = stage_doc("train", "running", 1, started_at="2026-03-02T12:00:18Z", details=details)
    run = live_doc(running)

    assert render_progress(run, now=NOW)[3].endswith("12.0s  on azureml retrainer-x-1")
    assert _stage_line(run, running, 12.0).endswith("train        running on azureml retrainer-x-1")
    done = stage_doc("train", "succeeded", 1, duration_s=40.0, details=details)
    assert "retrainer-x-1" not in render_progress(live_doc(done), now=NOW)[3]


def test_progress_shows_waiting_backoff_failure_and_colours() -> None:
    waiting = live_doc(stage_doc("aggregation", "queued", 1, queued_at="2026-03-02T12:00:25Z"))
    assert render_progress(waiting, now=NOW)[1] == (
        "  ◌ aggregation  queued     attempt 1     5.0s  waiting for a worker"
    )

    backoff = live_doc(
        stage_doc(
            "aggregation",
            "queued",
            2,
            queued_at="2026-03-02T12:00:28Z",
            not_before="2026-03-02T12:00:34Z",
        )
    )
    assert render_progress(backoff, now=NOW)[1] == (
        "  ◌ aggregation  queued     attempt 2           retry in 4.0s"
    )

    failed = live_doc(
        stage_doc("aggregation", "failed", 1, duration_s=1.5, error="part-1.csv row 2: bad"),
        status="failed",
        duration_s=61.0,
    )
    lines = render_progress(failed, now=NOW)
    assert lines[0] == "run 0b7c1d2e  state_identifier  failed  0/5  1m01s"
    assert lines[1] == "  ✗ aggregation  failed     attempt 1     1.5s  part-1.csv row 2: bad"

    coloured = render_progress(failed, now=NOW, color=True)
    assert coloured[1].startswith("  \x1b[31m✗\x1b[0m aggregation")
    assert coloured[2].startswith("  · split"), "pending stays uncoloured"


def test_the_outcome_names_metrics_model_and_error() -> None:
    run = live_doc(
        status="succeeded",
        duration_s=83.2,
        metrics={"silhouette": 0.61234},
        model={"name": "m", "version": "3", "champion": True, "reason": None},
    )
    assert describe_outcome(run) == (
        f"run {RUN_ID} succeeded in 1m23s\n  metrics: silhouette=0.6123\n  model: m v3, champion"
    )
    failed = live_doc(status="failed", duration_s=2.0, error="aggregation failed: boom")
    assert describe_outcome(failed).splitlines()[1:] == ["  error: aggregation failed: boom"]


def test_a_coordinator_clock_clearly_off_is_corrected() -> None:
    local = datetime(2026, 3, 2, 12, 0, 0, 400000, tzinfo=UTC)
    assert clock_offset("Mon, 02 Mar 2026 12:00:00 GMT", local) == timedelta()
    assert clock_offset("Mon, 02 Mar 2026 12:01:00 GMT", local) == timedelta(seconds=59.6)
    assert clock_offset("not a date", local) == timedelta()
    assert clock_offset(None, local) == timedelta()


# --- watch: the loop against a fake coordinator ------------------------------------------------


def progression(final_status: str) -> list[dict[str, Any]]:
    """What GET /runs/{id} answers, call after call (the last answer repeats)."""
    finished = {"status": final_status, "duration_s": 9.0}
    if final_status == "succeeded":
        finished |= {
            "metrics": {"silhouette": 0.5},
            "model": {"name": "state_identifier", "version": "7", "champion": True, "reason": None},
        }
        last = stage_doc("tag", "succeeded", 1, duration_s=0.3)
    else:
        finished |= {"error": "tag failed: registry down"}
        last = stage_doc("tag", "failed", 1, duration_s=0.3, error="registry down")
    done = [
        stage_doc(name, "succeeded", 1, duration_s=1.0)
        for name in ("aggregation", "split", "train", "register")
    ]
    return [
        live_doc(stage_doc("aggregation", "queued", 1, queued_at="2026-03-02T12:00:00Z")),
        live_doc(stage_doc("aggregation", "running", 1, started_at="2026-03-02T12:00:01Z")),
        live_doc(stage_doc("aggregation", "running", 1, started_at="2026-03-02T12:00:01Z")),
        live_doc(*done[:2], stage_doc("train", "running", 1, started_at="2026-03-02T12:00:03Z")),
        live_doc(*done, last, **finished),
    ]


def fake_coordinator(answers: list[dict[str, Any]]) -> tuple[httpx.Client, list[str]]:
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.url.path != f"/runs/{RUN_ID}":
            return httpx.Response(404, json={"detail": f"run {request.url.path} not found"})
        body = answers[min(len(calls) - 1, len(answers) - 1)]
        return httpx.Response(200, json=body, headers={"Date": "Mon, 02 Mar 2026 12:00:10 GMT"})

    client = httpx.Client(base_url="http://coordinator", transport=httpx.MockTransport(handle))
    return client, calls


@pytest.fixture
def coordinator_answers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], list[str]]]:
    """Points the CLI at a fake coordinator whose run ends in the given status; no waiting."""
    monkeypatch.setattr(cli, "POLL_S", 0.0)
    monkeypatch.setattr(cli, "FRAME_S", 0.0)
    clients: list[httpx.Client] = []

    def install(final_status: str) -> list[str]:
        client, calls = fake_coordinator(progression(final_status))
        clients.append(client)
        monkeypatch.setattr(cli, "_client", lambda _args: client)
        return calls

    yield install
    for client in clients:
        client.close()


@pytest.mark.parametrize(("final_status", "code"), [("succeeded", 0), ("failed", 1)])
def test_watch_off_a_terminal_prints_a_line_per_change_and_exits_with_the_run_status(
    coordinator_answers: Callable[[str], list[str]],
    capsys: pytest.CaptureFixture[str],
    final_status: str,
    code: int,
) -> None:
    calls = coordinator_answers(final_status)

    assert cli.main(["watch", RUN_ID]) == code

    out = capsys.readouterr().out
    assert "\x1b[" not in out, "no terminal control codes in a pipe or a log"
    changes = [line.split("  ", 1)[1].split() for line in out.splitlines() if line.startswith("[")]
    assert [[change[1], change[2].rstrip(":")] for change in changes] == [
        ["aggregation", "queued"],
        ["aggregation", "running"],
        ["aggregation", "succeeded"],
        ["split", "succeeded"],
        ["train", "running"],
        ["train", "succeeded"],
        ["register", "succeeded"],
        ["tag", final_status],
    ], "one line per change: the repeated answer prints nothing"
    assert len(calls) == 5 and set(calls) == {f"GET /runs/{RUN_ID}"}
    assert f"run {RUN_ID}  {final_status}" in out
    if final_status == "succeeded":
        assert "model: state_identifier v7, champion" in out
    else:
        assert "error: tag failed: registry down" in out


class FakeTerminal(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def test_watch_on_a_terminal_redraws_the_table_in_place_then_prints_the_outcome(
    coordinator_answers: Callable[[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator_answers("succeeded")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "100")

    assert cli.main(["watch", RUN_ID]) == 0

    out = terminal.getvalue()
    assert out.startswith("\x1b[?25l"), "the cursor is hidden while drawing"
    frames = out.split("\x1b[6F")  # back up over the 6 lines drawn last time
    assert len(frames) == 5, "one frame per answer, each drawn over the last"
    last = [line.removeprefix("\x1b[2K") for line in frames[-1].split("\n")]
    assert last[:6] == [
        "run 0b7c1d2e  state_identifier  succeeded  5/5  9.0s",
        "  ✓ aggregation  succeeded  attempt 1     1.0s",
        "  ✓ split        succeeded  attempt 1     1.0s",
        "  ✓ train        succeeded  attempt 1     1.0s",
        "  ✓ register     succeeded  attempt 1     1.0s",
        "  ✓ tag          succeeded  attempt 1     0.3s",
    ]
    assert last[6].startswith("\x1b[?25h"), "the cursor comes back"
    assert "\n".join(last[6:]).removeprefix("\x1b[?25h").strip() == (
        f"run {RUN_ID} succeeded in 9.0s\n"
        "  metrics: silhouette=0.5\n"
        "  model: state_identifier v7, champion"
    )
    running = [line for line in frames[1].split("\n") if " aggregation " in line]
    assert running == ["\x1b[2K  ⠙ aggregation  running    attempt 1     9.0s"]


def test_the_live_loop_gives_up_after_its_timeout_and_restores_the_cursor() -> None:
    stuck = live_doc(stage_doc("aggregation", "running", 1, started_at="2026-03-02T12:00:01Z"))
    client, _ = fake_coordinator([stuck])
    ticks = iter(range(1000))
    terminal = FakeTerminal()
    with client, pytest.raises(CliError, match="still running after 3 s"):
        watch_run_live(
            client,
            RUN_ID,
            stream=terminal,
            timeout_s=3,
            clock=lambda: float(next(ticks)),
            sleep=lambda _s: None,
            wall=lambda: NOW,
        )
    assert terminal.getvalue().endswith("\x1b[?25h")


def test_watch_of_an_unknown_run_is_an_error(
    coordinator_answers: Callable[[str], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    coordinator_answers("succeeded")
    assert cli.main(["watch", "nope"]) == 2
    assert "'nope' is not a run id" in capsys.readouterr().err


def test_run_json_shape_matches_the_api() -> None:
    """The fake answers carry the fields the CLI reads from RunOut/StageOut."""
    from coordinator.api import RunOut, StageOut

    doc = progression("succeeded")[-1]
    assert set(doc["stages"][0]) <= set(StageOut.model_fields)
    assert set(doc) - {"params"} <= set(RunOut.model_fields)
    json.dumps(doc)
