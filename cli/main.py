"""``retrainer``: run the stack, start and watch runs, inspect them.

retrainer demo                      the whole thing on embedded defaults, one command
retrainer up                        coordinator + five workers as supervised processes
retrainer sample-data RECIPE        upload a generated sample data set to the blob store
retrainer upload PATH PREFIX        upload a file or directory (a trigger rule may start a run)
retrainer load-zip ZIP|URL PREFIX   convert a delivered zip (drawings + .npy labels) and upload it
retrainer baseline RECIPE DATA --out BLOB   write a first baseline profile from a data set
retrainer run RECIPE DATA [-p k=v]  start a run (and --watch it)
retrainer watch RUN_ID              follow a run stage by stage (a live table on a terminal)
retrainer runs list | show RUN_ID   what the coordinator knows
retrainer group start RECIPE ...    a run per member (entity + data), K at a time; and
          group watch|list|show|cancel|retry
retrainer models champion NAME      a model's champion, who promoted it, when and why
retrainer models promote NAME VERSION --reason TEXT   promote (or roll back) by hand

A coordinator that authenticates its callers takes --token (RETRAINER_API_TOKEN: its static
token, or an Entra ID access token), or --scope (RETRAINER_API_SCOPE, e.g.
api://<client id>/.default: a fresh Entra ID token per request from DefaultAzureCredential, which
needs azure-identity, as in retrainer[azure]).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Generator, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx

from shared.bootstrap import create_blob_store, create_bus
from shared.lifecycle import exit_now
from shared.messages import STAGES
from shared.settings import CommonSettings

if TYPE_CHECKING:
    from cli.stack import Stack

TERMINAL = {"succeeded", "failed", "cancelled"}
DEFAULT_PORT = 8080
# How often `watch` asks the coordinator, and redraws its live table on a terminal.
POLL_S = 0.5
FRAME_S = 0.1


class CliError(Exception):
    pass


# -- talking to the coordinator ------------------------------------------------------------


def _client(args: argparse.Namespace) -> httpx.Client:
    return httpx.Client(base_url=args.url, timeout=10.0, auth=api_auth(args.token, args.scope))


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>`` on every request, the token asked for each time (an
    Entra ID credential caches it and renews it before it expires)."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token()}"
        yield request


def api_auth(token: str | None, scope: str | None) -> httpx.Auth | None:
    """The static (or an already issued) token, else Entra ID tokens for ``scope``."""
    if token:
        return BearerAuth(lambda: token)
    if scope:
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError as exc:
            raise CliError(
                f"--scope needs azure-identity (pip install retrainer[azure]): {exc}"
            ) from exc
        credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
        return BearerAuth(lambda: credential.get_token(scope).token)
    return None


def _checked(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if isinstance(detail, list):
            detail = "; ".join(_problem(item) for item in detail)
        raise CliError(
            f"{response.request.method} {response.request.url.path}: "
            f"HTTP {response.status_code}: {detail}"
        )
    return response.json()


def _problem(item: dict[str, Any]) -> str:
    # FastAPI locations start with "body"/"query"; the rest names the field.
    where = ".".join(str(part) for part in item.get("loc", [])[1:]) or "request"
    return f"{where}: {item.get('msg')}"


SHORT_ID = re.compile(r"^(?:[0-9a-fA-F]-?){1,32}$")
# How many candidates an ambiguous short id lists.
MAX_CANDIDATES = 10


def resolve_id(client: httpx.Client, text: str, *, kind: str = "run") -> str:
    """A full id for ``text``: a whole id as it is, or the one run (group) whose id starts
    with it (the short ids ``runs list`` and ``watch`` print). No match, or several (listed),
    is a ``CliError``."""
    text = text.strip()
    if len(text) == 36 and SHORT_ID.match(text):
        return text.lower()
    if not SHORT_ID.match(text):
        raise CliError(f"{text[:80]!r} is not a {kind} id (hex digits, e.g. 3fa85f64)")
    path, key = ("/runs", "runs") if kind == "run" else ("/run-groups", "groups")
    page = _checked(client.get(path, params={"id_prefix": text, "limit": MAX_CANDIDATES}))
    found: list[dict[str, Any]] = page[key]
    if not found:
        raise CliError(f"no {kind} id starts with {text}")
    if len(found) > 1:
        lines = [
            f"  {item['id']}  {item['status']:<10} {item['recipe']:<20} {item['created_at']}"
            for item in found
        ]
        more = page["total"] - len(found)
        if more > 0:
            lines.append(f"  ... and {more} more")
        raise CliError(
            f"{text} is ambiguous: {page['total']} {kind}s start with it; give more of the id:\n"
            + "\n".join(lines)
        )
    return str(found[0]["id"])


def start_run(
    client: httpx.Client, recipe: str, data: str, params: dict[str, Any]
) -> dict[str, Any]:
    run: dict[str, Any] = _checked(
        client.post("/runs", json={"recipe": recipe, "data": data, "params": params})
    )
    return run


def watch_run(
    client: httpx.Client,
    run_id: str,
    *,
    out: Callable[[str], None] = print,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Print each stage transition until the run finishes; returns the final run."""
    seen: dict[str, tuple[str, int]] = {}
    started = time.monotonic()
    while True:
        run: dict[str, Any] = _checked(client.get(f"/runs/{run_id}"))
        for stage in run["stages"]:
            key = (stage["status"], stage["attempt"])
            if seen.get(stage["name"]) != key and stage["status"] != "pending":
                seen[stage["name"]] = key
                out(_stage_line(run, stage, time.monotonic() - started))
        if run["status"] in TERMINAL:
            return run
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise CliError(f"run {run_id} still {run['status']} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def _stage_line(run: dict[str, Any], stage: dict[str, Any], elapsed: float) -> str:
    position = [s["name"] for s in run["stages"]].index(stage["name"])
    done = position + (stage["status"] in _DONE)
    bar = "#" * done + "." * (len(STAGES) - done)
    text = f"[{bar}] {elapsed:6.1f}s  {stage['name']:<12} {stage['status']}"
    if stage["attempt"] > 1:
        text += f" (attempt {stage['attempt']})"
    if stage.get("cached"):
        text += " (cached)"
    job = _running_job(stage)
    if job:
        text += f" {job}"
    if stage.get("duration_s") is not None and stage["status"] == "succeeded":
        text += f" in {stage['duration_s']:.2f}s"
    if stage.get("error"):
        text += f": {stage['error']}"
    return text


# -- the live table of `watch` on a terminal ------------------------------------------------

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
SYMBOLS = {
    "pending": "·",
    "queued": "◌",
    "succeeded": "✓",
    "failed": "✗",
    "cancelled": "⊘",
    "skipped": "↷",
}
ASCII_SPINNER = "|/-\\"
ASCII_SYMBOLS = {
    "pending": ".",
    "queued": "~",
    "succeeded": "+",
    "failed": "x",
    "cancelled": "-",
    "skipped": ">",
}
# Stages a run is past: those that ran, and those it skipped (it trains on a data asset).
_DONE = ("succeeded", "skipped")
_COLORS = {"succeeded": "32", "failed": "31", "cancelled": "90", "queued": "33", "running": "36"}
_HIDE_CURSOR, _SHOW_CURSOR, _CLEAR_LINE = "\x1b[?25l", "\x1b[?25h", "\x1b[2K"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _running_job(stage: dict[str, Any]) -> str | None:
    """``on azureml <job>`` while a stage handed to outside compute runs."""
    details = stage.get("details") or {}
    job = details.get("compute_job_id")
    if stage["status"] != "running" or not job:
        return None
    return f"on {details.get('compute_backend', 'job')} {job}"


def format_seconds(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _timestamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def render_progress(
    run: dict[str, Any],
    *,
    now: datetime,
    frame: int = 0,
    unicode: bool = True,
    color: bool = False,
) -> list[str]:
    """The live table of ``retrainer watch``: a header line, then one line per stage with its
    status symbol, attempt, duration (or, for the stage in flight, a spinner and the time so far)
    and what else there is to say. Pure: ``now`` is the coordinator's clock."""
    symbols = SYMBOLS if unicode else ASCII_SYMBOLS
    spinner = SPINNER if unicode else ASCII_SPINNER
    created = _timestamp(run.get("created_at"))
    if run.get("duration_s") is not None:
        took = format_seconds(run["duration_s"])
    else:
        took = format_seconds((now - created).total_seconds()) if created else ""
    done = sum(stage["status"] in _DONE for stage in run["stages"])
    progress = f"{done}/{len(run['stages'])}"
    header = f"run {run['id'][:8]}  {run['recipe']}  {run['status']}  {progress}"
    lines = [f"{header}  {took}".rstrip()]
    for stage in run["stages"]:
        status = stage["status"]
        symbol = spinner[frame % len(spinner)] if status == "running" else symbols.get(status, "?")
        if color and status in _COLORS:
            symbol = f"\x1b[{_COLORS[status]}m{symbol}\x1b[0m"
        attempt = f"attempt {stage['attempt']}" if stage["attempt"] else ""
        notes = []
        started = _timestamp(stage.get("started_at"))
        if status in ("succeeded", "failed", "cancelled") and stage.get("duration_s") is not None:
            elapsed = format_seconds(stage["duration_s"])
        elif status == "running" and started:
            elapsed = format_seconds((now - started).total_seconds())
        elif status == "queued":
            not_before = _timestamp(stage.get("not_before"))
            queued = _timestamp(stage.get("queued_at"))
            if not_before and not_before > now:
                elapsed = ""
                notes.append(f"retry in {format_seconds((not_before - now).total_seconds())}")
            else:
                elapsed = format_seconds((now - queued).total_seconds()) if queued else ""
                notes.append("waiting for a worker")
        else:
            elapsed = ""
        if stage.get("cached"):
            notes.append("cached")
        if status == "skipped" and run.get("data_asset"):
            notes.append(f"on data asset {run['data_asset']['reference'].removeprefix('asset:')}")
        job = _running_job(stage)
        if job:
            notes.append(job)
        if stage.get("error") and stage["error"] != status:
            notes.append(stage["error"])
        line = f"  {symbol} {stage['name']:<12} {status:<10} {attempt:<10} {elapsed:>7}"
        lines.append(f"{line}  {'  '.join(notes)}".rstrip())
    return lines


def describe_outcome(run: dict[str, Any]) -> str:
    """What a finished run came to: its status and time, metrics, model and error."""
    took = f" in {format_seconds(run['duration_s'])}" if run.get("duration_s") is not None else ""
    return "\n".join([f"run {run['id']} {run['status']}{took}", *_outcome_lines(run)])


def _outcome_lines(run: dict[str, Any]) -> list[str]:
    lines = []
    if run.get("metrics"):
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(run["metrics"].items()))
        lines.append(f"  metrics: {metrics}")
    asset = run.get("data_asset")
    if asset:
        lines.append(f"  data asset: {asset['name']} v{asset['version']} ({asset['reference']})")
    model = run.get("model")
    if model:
        champion = "champion" if model.get("champion") else "not promoted"
        reason = f" ({model['reason']})" if model.get("reason") else ""
        lines.append(f"  model: {model['name']} v{model['version']}, {champion}{reason}")
    if run.get("error"):
        lines.append(f"  error: {run['error']}")
    return lines


def describe_run(run: dict[str, Any]) -> str:
    lines = [
        f"run {run['id']}  {run['status']}",
        f"  recipe {run['recipe']}  data {run['data']}  params {json.dumps(run.get('params', {}))}",
    ]
    for stage in run["stages"]:
        duration = stage.get("duration_s")
        lines.append(
            f"  {stage['name']:<12} {stage['status']:<10} attempt {stage['attempt']}"
            + (f"  {duration:.2f}s" if duration is not None else "")
            + ("  cached" if stage.get("cached") else "")
            + (f"  {stage['error']}" if stage.get("error") else "")
        )
    return "\n".join([*lines, *_outcome_lines(run)])


def clock_offset(date_header: str | None, local_now: datetime) -> timedelta:
    """How far the coordinator's clock (its HTTP ``Date``, whole seconds) is ahead of ours;
    zero unless clearly off, so a running stage's time is right on a skewed machine."""
    try:
        offset = parsedate_to_datetime(date_header) - local_now if date_header else timedelta()
    except (TypeError, ValueError):
        return timedelta()
    return offset if abs(offset) > timedelta(seconds=2) else timedelta()


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def watch_run_live(
    client: httpx.Client,
    run_id: str,
    *,
    stream: TextIO,
    poll_s: float = POLL_S,
    frame_s: float = FRAME_S,
    timeout_s: float | None = None,
    color: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wall: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    """Redraw ``render_progress`` in place on a terminal until the run finishes; returns it."""
    unicode = _can_encode(stream, SPINNER + "".join(SYMBOLS.values()))
    started = clock()
    next_poll = started
    offset = timedelta()
    run: dict[str, Any] = {}
    drawn = frame = 0
    stream.write(_HIDE_CURSOR)
    try:
        while True:
            if clock() >= next_poll:
                response = client.get(f"/runs/{run_id}")
                run = _checked(response)
                offset = clock_offset(response.headers.get("date"), wall())
                next_poll = clock() + poll_s
            lines = render_progress(
                run, now=wall() + offset, frame=frame, unicode=unicode, color=color
            )
            drawn = _redraw(stream, lines, drawn)
            if run["status"] in TERMINAL:
                return run
            if timeout_s is not None and clock() - started > timeout_s:
                raise CliError(f"run {run_id} still {run['status']} after {timeout_s:.0f} s")
            frame += 1
            sleep(frame_s)
    finally:
        stream.write(_SHOW_CURSOR)
        stream.flush()


def _redraw(stream: TextIO, lines: list[str], drawn: int) -> int:
    """Write ``lines`` over the ``drawn`` lines written last time; returns how many are shown."""
    width = shutil.get_terminal_size().columns - 1  # never wrap: the cursor maths needs it
    text = f"\x1b[{drawn}F" if drawn else ""
    for line in lines:
        text += f"{_CLEAR_LINE}{_fit(line, width)}\n"
    text += f"{_CLEAR_LINE}\n" * (drawn - len(lines))
    stream.write(text)
    stream.flush()
    return max(drawn, len(lines))


def _fit(line: str, width: int) -> str:
    """``line`` cut to ``width`` visible characters (colour codes do not count)."""
    plain = _ANSI.sub("", line)
    if len(plain) <= width or width <= 1:
        return line
    return plain[: width - 1] + "…"


def follow_run(
    client: httpx.Client, run_id: str, *, plain: bool = False, timeout_s: float | None = None
) -> dict[str, Any]:
    """Watch a run to its end, a live table on a terminal or a line per change otherwise, then
    print what it came to; returns the final run."""
    stream = sys.stdout
    live = not plain and stream.isatty() and os.environ.get("TERM") != "dumb"
    if live:
        color = "NO_COLOR" not in os.environ
        final = watch_run_live(
            client,
            run_id,
            stream=stream,
            poll_s=POLL_S,
            frame_s=FRAME_S,
            timeout_s=timeout_s,
            color=color,
        )
        print(describe_outcome(final))
    else:
        final = watch_run(client, run_id, poll_s=POLL_S, timeout_s=timeout_s)
        print(describe_run(final))
    return final


# -- local state -----------------------------------------------------------------------------


def upload_sample_data(settings: CommonSettings, recipe_name: str, prefix: str, seed: int) -> int:
    """Generate a recipe's sample data and upload it under ``prefix``; skipped if present.

    Without blob events: whoever uploads sample data starts its run (``retrainer demo``), so a
    trigger rule must not start a second one."""
    from shared.blobs.transfer import upload_directory
    from shared.recipe_registry import get_recipe

    store = create_blob_store(settings.model_copy(update={"blob_events": False}))
    existing = list(store.list_blobs(prefix.rstrip("/") + "/"))
    if existing:
        return len(existing)
    recipe = get_recipe(recipe_name, tuple(settings.recipe_modules))
    with tempfile.TemporaryDirectory() as tmp:
        recipe.write_sample_data(Path(tmp), seed)
        return len(upload_directory(store, Path(tmp), prefix.rstrip("/")))


def write_baseline(
    settings: CommonSettings,
    recipe_name: str,
    data_prefix: str,
    out_blob: str,
    params: dict[str, Any],
    *,
    overwrite: bool = False,
) -> str:
    """A first baseline profile of the data under ``data_prefix``, uploaded to ``out_blob``
    (never over an existing one unless ``overwrite``: a person keeps it from then on)."""
    from pydantic import ValidationError

    from shared.blobs.transfer import download_prefix
    from shared.errors import BlobExistsError, RetrainerError
    from shared.recipe_registry import get_recipe

    try:
        recipe = get_recipe(recipe_name, tuple(settings.recipe_modules))
        if recipe.write_baseline is None:
            raise CliError(f"recipe {recipe_name!r} does not validate against a baseline profile")
        parsed = recipe.parse_params(params)
        store = create_blob_store(settings.model_copy(update={"blob_events": False}))
        with tempfile.TemporaryDirectory() as tmp:
            data_dir, out_file = Path(tmp) / "data", Path(tmp) / "baseline.json"
            if not download_prefix(store, data_prefix.rstrip("/") + "/", data_dir):
                raise CliError(f"no blobs under {data_prefix.rstrip('/')}/")
            recipe.write_baseline(data_dir, out_file, parsed)
            return store.upload_blob(out_blob, out_file.read_bytes(), overwrite=overwrite).name
    except BlobExistsError as exc:
        raise CliError(f"{out_blob} exists; pass --force to replace it") from exc
    except ValidationError as exc:
        raise CliError(f"invalid params: {exc}") from exc
    except RetrainerError as exc:
        raise CliError(str(exc)) from exc


def prepare_state(settings: CommonSettings) -> None:
    """Create the state directory and the bus once, before several processes race to do it
    (an unwritable directory fails here, not in six logs). The MLflow database is created by
    the first process that uses it (``shared/tracking.py``), not at start-up."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    create_bus(settings).close()


def default_port() -> int:
    return int(os.environ.get("RETRAINER_PORT", DEFAULT_PORT))


def default_url() -> str:
    """``RETRAINER_URL``, else the coordinator ``retrainer up`` starts (``RETRAINER_PORT``)."""
    return os.environ.get("RETRAINER_URL") or f"http://127.0.0.1:{default_port()}"


def stack_env(settings: CommonSettings, port: int) -> dict[str, str]:
    return {
        "RETRAINER_STATE_DIR": str(settings.state_dir.resolve()),
        "RETRAINER_PORT": str(port),
        "RETRAINER_HOST": "127.0.0.1",
    }


# -- commands --------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    """The stack in the foreground until Ctrl-C or SIGTERM; a service that dies is restarted.
    Exit status 1 if it does not come up (every service is stopped then)."""
    from cli.stack import Stack, StackError

    settings = CommonSettings()
    prepare_state(settings)
    stack = Stack(stack_env(settings, args.port), log_dir=settings.state_dir / "logs")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    url = f"http://127.0.0.1:{args.port}"
    print(f"starting the coordinator and {len(STAGES)} workers (logs in {stack.log_dir})")
    try:
        started = time.monotonic()
        stack.start()
        stack.wait_ready(
            url,
            level="api",
            timeout_s=args.startup_timeout,
            progress=_show_waiting,
            stop_requested=lambda: stopping,
        )
        print(f"API ready in {time.monotonic() - started:.1f} s: {url}")
        print(f"  dashboard {url}/dashboard   API docs {url}/docs")
        if url != f"http://127.0.0.1:{DEFAULT_PORT}":
            print(f"  for the other commands: export RETRAINER_URL={url}")
        print("  runs started now queue until the workers are warm", flush=True)
        _wait_warm(stack, url, started, args.startup_timeout, lambda: stopping)
        print("Ctrl-C stops it.", flush=True)
        while not stopping:
            stack.restart_dead()
            time.sleep(0.2)
    except StackError as exc:
        if not stopping:
            print(f"error: retrainer did not come up: {exc}", file=sys.stderr)
            return 1
    finally:
        stopped_at = time.monotonic()
        killed = stack.stop()
        print(
            f"stopped in {time.monotonic() - stopped_at:.1f} s"
            + (f" (killed: {', '.join(killed)})" if killed else ""),
            flush=True,
        )
    return 0


def _wait_warm(
    stack: Stack,
    url: str,
    started: float,
    timeout_s: float | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> None:
    """After "API ready": until every worker has warmed up (``started``: the stack's start,
    monotonic, for the times shown)."""
    offset = time.monotonic() - started
    stack.wait_ready(
        url,
        timeout_s=timeout_s,
        progress=lambda elapsed, waiting: _show_waiting(offset + elapsed, waiting),
        stop_requested=stop_requested,
    )
    print(
        f"workers warm in {time.monotonic() - started:.1f} s: retrainer is up, "
        "a run starts at once",
        flush=True,
    )


def _show_waiting(elapsed: float, waiting: dict[str, str]) -> None:
    if waiting:
        shown = ", ".join(
            name if why == "starting" else f"{name} ({why})" for name, why in waiting.items()
        )
        print(f"  {elapsed:5.1f} s  waiting for {shown}", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """Sample data, the stack, one run, the champion's prediction: each step starts as soon as
    what it needs is there. The services start first (the sample data is written while they
    import); the run is posted once the API is ready and queues while the workers warm up;
    MLflow and pandas for loading the champion are imported here while the run goes."""
    from cli.stack import Stack, free_port

    settings = CommonSettings()
    recipe = "state_identifier"
    prefix = "datasets/state-identifier/sample"
    print(f"state in {settings.state_dir.resolve()}")
    prepare_state(settings)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    stack = Stack(stack_env(settings, port), log_dir=settings.state_dir / "logs")
    print(f"starting the coordinator and {len(STAGES)} workers (logs in {stack.log_dir})")
    stack.start()
    try:
        count = upload_sample_data(settings, recipe, prefix, seed=args.seed)
        print(f"sample data: {count} blobs under {prefix}/")
        stack.wait_ready(url, level="api", progress=_show_waiting)
        print(f"API ready in {time.monotonic() - started:.1f} s: {url}")
        with httpx.Client(base_url=url, timeout=10.0) as client:
            run = start_run(client, recipe, prefix, {})
            print(
                f"run {run['id']} queued; it starts as the workers warm up "
                f"(dashboard: {url}/dashboard/runs/{run['id']})",
                flush=True,
            )
            champion_imports = threading.Thread(target=_import_champion_libraries, daemon=True)
            champion_imports.start()
            final = follow_run(client, run["id"], timeout_s=args.timeout)
        if final["status"] != "succeeded":
            return 1
        champion_imports.join()
        _show_champion_prediction(settings, recipe, prefix)
    finally:
        stack.stop()
    print(f"demo done in {time.monotonic() - started:.1f} s")
    # Without the interpreter's teardown of MLflow, scikit-learn and pandas (seconds).
    exit_now(0)


def _import_champion_libraries() -> None:
    """What loading the champion imports (seconds of CPU), in a thread at the workers'
    warm-up priority (Linux: a thread's own nice value), so the coordinator and the stages
    the run waits for go first. No lower: once the run is done the demo waits for this
    thread (an import half done holds its module's lock), an unprivileged process cannot
    raise a thread's priority again, and at nice 19 a machine with three busy loops left it
    a few per cent of a core (4 minutes of the demo). Only an earlier start: loading imports
    whatever is still missing."""
    from shared.worker import WARM_UP_NICE

    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WARM_UP_NICE)
    with contextlib.suppress(Exception):
        import mlflow.pyfunc  # noqa: F401
        import pandas  # noqa: F401
        import skops.io  # noqa: F401  (the scikit-learn flavour's format)


def _show_champion_prediction(settings: CommonSettings, recipe_name: str, prefix: str) -> None:
    import mlflow
    import pandas as pd

    from shared.tracking import CHAMPION_ALIAS

    mlflow.set_tracking_uri(settings.resolved_mlflow_tracking_uri)
    # The demo loads in the environment that trained the model: no requirements check.
    model = mlflow.pyfunc.load_model(
        f"models:/{recipe_name}@{CHAMPION_ALIAS}", suppress_warnings=True
    )
    store = create_blob_store(settings)
    first = next(iter(store.list_blobs(prefix + "/")))
    raw = pd.read_csv(io.BytesIO(store.download_blob(first.name).data)).head(600)
    labels = [int(label) for label in model.predict(raw.drop(columns=["timestamp"]))]
    print(
        f"champion {recipe_name}@{CHAMPION_ALIAS} loaded with mlflow.pyfunc: "
        f"{len(raw)} raw rows of {first.name} -> {len(labels)} windows, states {labels}"
    )


def cmd_sample_data(args: argparse.Namespace) -> int:
    settings = CommonSettings()
    prefix = args.prefix or f"datasets/{args.recipe.replace('_', '-')}/sample"
    count = upload_sample_data(settings, args.recipe, prefix, seed=args.seed)
    print(f"{count} blobs under {prefix}/")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    params = dict(_parse_param(p) for p in args.param)
    name = write_baseline(
        CommonSettings(), args.recipe, args.data, args.out, params, overwrite=args.force
    )
    print(f"baseline profile written to {name}; review it, then run with")
    print(f"  retrainer run {args.recipe} DATA -p baseline_profile={name}")
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from shared.blobs.transfer import upload_directory
    from shared.triggers import covered, load_trigger_rules

    settings = CommonSettings()
    source = Path(args.path)
    prefix = args.prefix.rstrip("/")
    store = create_blob_store(settings)
    if source.is_dir():
        names = list(upload_directory(store, source, prefix))
    elif source.is_file():
        names = [store.upload_blob(f"{prefix}/{source.name}", source.read_bytes()).name]
    else:
        raise CliError(f"no such file or directory: {source}")
    print(f"{len(names)} blob(s) under {prefix}/")
    rules = load_trigger_rules(settings.trigger_rules, settings.trigger_rules_file)
    if not any(covered(name, rules) for name in names):
        print(f"no trigger rule covers them; start a run with: retrainer run RECIPE {prefix}")
    elif settings.blob == "local" and not settings.blob_events:
        print("a trigger rule covers them, but blob events are off (RETRAINER_BLOB_EVENTS)")
    else:
        print("a trigger rule covers them: the coordinator starts a run (see: retrainer runs list)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    params = dict(_parse_param(p) for p in args.param)
    with _client(args) as client:
        run = start_run(client, args.recipe, args.data, params)
        print(run["id"])
        if not args.watch:
            return 0
        return _watch(client, run["id"], plain=args.plain)


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _watch(client, resolve_id(client, args.run_id), plain=args.plain)


def _watch(client: httpx.Client, run_id: str, *, plain: bool) -> int:
    """Exit status: 0 if the run succeeded, 1 if it failed or was cancelled, 130 on Ctrl-C."""
    try:
        final = follow_run(client, run_id, plain=plain)
    except KeyboardInterrupt:
        print(f"\nstopped watching; the run goes on (retrainer watch {run_id})", file=sys.stderr)
        return 130
    return 0 if final["status"] == "succeeded" else 1


def cmd_runs_list(args: argparse.Namespace) -> int:
    filters = {"status": args.status, "recipe": args.recipe, "entity": args.entity}
    query = {"limit": args.limit, **{key: value for key, value in filters.items() if value}}
    with _client(args) as client:
        body = _checked(client.get("/runs", params=query))
    runs = body["runs"] if isinstance(body, dict) else body
    print(describe_runs(runs))
    return 0


def describe_runs(runs: list[dict[str, Any]]) -> str:
    """A table with a header: short id (any unique prefix is accepted back), status, recipe,
    trigger, created, model version."""
    header = ("ID", "STATUS", "RECIPE", "TRIGGER", "CREATED", "MODEL")
    rows = [header]
    for run in runs:
        model = run.get("model") or {}
        version = f"v{model['version']}" if model.get("version") else "-"
        if model.get("version") and model.get("champion"):
            version += " champion"
        created = str(run.get("created_at") or "")[:19].replace("T", " ")
        rows.append(
            (
                str(run["id"])[:8],
                str(run["status"]),
                str(run["recipe"]),
                str(run.get("trigger") or "-"),
                created,
                version,
            )
        )
    return _table(rows) if len(rows) > 1 else "no runs"


def _table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as columns two spaces apart, every column but the last padded to its widest."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    )


def cmd_runs_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = _checked(client.get(f"/runs/{resolve_id(client, args.run_id)}"))
    print(json.dumps(run, indent=2) if args.json else describe_run(run))
    return 0


def cmd_runs_cancel(args: argparse.Namespace) -> int:
    """Cancel a queued or running run; work handed to Azure ML is cancelled too."""
    with _client(args) as client:
        run = _checked(client.post(f"/runs/{resolve_id(client, args.run_id)}/cancel"))
    print(describe_run(run))
    return 0


def cmd_runs_retry(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = _checked(client.post(f"/runs/{resolve_id(client, args.run_id)}/retry"))
        if not args.watch:
            print(describe_run(run))
            return 0
        return _watch(client, run["id"], plain=args.plain)


def cmd_schedules(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = _checked(client.get("/schedules"))
    print(json.dumps(body, indent=2) if args.json else describe_schedules(body["schedules"]))
    return 0


def describe_schedules(schedules: list[dict[str, Any]]) -> str:
    """A table: cron and time zone, next and last tick (UTC), what each tick starts."""
    header = ("CRON", "TIMEZONE", "NEXT (UTC)", "LAST (UTC)", "STARTS")
    rows = [header]
    for schedule in schedules:
        kind = "a group of " if schedule["group"] else ""
        what = f"{kind}{schedule['recipe']} on {schedule['data']}"
        rows.append(
            (
                str(schedule["cron"]),
                str(schedule["timezone"]),
                _minute(schedule["next_tick"]),
                _minute(schedule["last_tick"]) if schedule["last_tick"] else "-",
                what,
            )
        )
    if len(rows) == 1:
        return "no schedules (RETRAINER_SCHEDULES, or a trigger rule with a schedule)"
    return _table(rows)


def _minute(stamp: str) -> str:
    return stamp[:16].replace("T", " ")


def cmd_models_champion(args: argparse.Namespace) -> int:
    with _client(args) as client:
        champion = _checked(client.get(f"/models/{_quoted(args.name)}/champion"))
    print(json.dumps(champion, indent=2) if args.json else describe_champion(champion))
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    """Make VERSION the champion whatever its metrics (a rollback is a promote of an older
    version): the same path as the tag stage's promotions, recorded on the version."""
    body = {"version": args.version, "reason": args.reason, "requested_by": _local_user()}
    with _client(args) as client:
        change = _checked(client.post(f"/models/{_quoted(args.name)}/champion", json=body))
    champion = change["champion"]
    if not change["changed"]:
        print(f"{champion['model_name']} v{champion['version']} is the champion already")
    print(describe_champion(champion))
    return 0


def describe_champion(champion: dict[str, Any]) -> str:
    previous = champion.get("previous_version")
    lines = [
        f"champion  {champion['model_name']} v{champion['version']}"
        + (f" (replaced v{previous})" if previous else ""),
        f"promoted  {champion.get('promoted_at') or '?'} by {champion.get('promoted_by') or '?'}",
        f"reason    {champion.get('reason') or '?'}",
    ]
    metrics = champion.get("metrics") or {}
    if metrics:
        lines.append("metrics   " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items())))
    return "\n".join(lines)


def _quoted(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _local_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a bare container)
        return None


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CliError(f"parameter {text!r} is not key=value")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


_PLAIN_HELP = "a line per change even on a terminal (no live table)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrainer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url",
        default=default_url(),
        help="coordinator URL (env RETRAINER_URL; default: 127.0.0.1 on RETRAINER_PORT or 8080)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("RETRAINER_API_TOKEN"),
        help="bearer token for the API: its static token or an Entra ID access token"
        " (env RETRAINER_API_TOKEN)",
    )
    parser.add_argument(
        "--scope",
        default=os.environ.get("RETRAINER_API_SCOPE"),
        help="Entra ID scope to get tokens for, e.g. api://<client id>/.default"
        " (env RETRAINER_API_SCOPE)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="sample data -> stack -> run -> champion model")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--timeout", type=float, default=600.0)
    demo.set_defaults(func=cmd_demo)

    up = commands.add_parser("up", help="run the coordinator and the five workers")
    up.add_argument(
        "--port", type=int, default=default_port(), help="env RETRAINER_PORT, default 8080"
    )
    up.add_argument(
        "--startup-timeout",
        type=float,
        default=None,
        help="seconds to wait for every service (env RETRAINER_STARTUP_TIMEOUT_S, default 300)",
    )
    up.set_defaults(func=cmd_up)

    sample = commands.add_parser("sample-data", help="upload a recipe's sample data")
    sample.add_argument("recipe")
    sample.add_argument("--prefix")
    sample.add_argument("--seed", type=int, default=7)
    sample.set_defaults(func=cmd_sample_data)

    upload = commands.add_parser(
        "upload", help="upload a file or a directory; a trigger rule may start a run"
    )
    upload.add_argument("path", help="a file, or a directory uploaded with its tree")
    upload.add_argument("prefix", help="blob prefix to upload under, e.g. datasets/x/2025-06-01")
    upload.set_defaults(func=cmd_upload)

    baseline = commands.add_parser(
        "baseline", help="write a first baseline profile from a data set (to edit by hand)"
    )
    baseline.add_argument("recipe")
    baseline.add_argument("data", help="blob prefix of the data set, e.g. datasets/x/sample")
    baseline.add_argument("--out", required=True, help="blob to write, e.g. baselines/x.json")
    baseline.add_argument("-p", "--param", action="append", default=[], help="key=value")
    baseline.add_argument("--force", action="store_true", help="replace an existing profile")
    baseline.set_defaults(func=cmd_baseline)

    run = commands.add_parser("run", help="start a run")
    run.add_argument("recipe")
    run.add_argument(
        "data",
        help="blob prefix of the raw data, e.g. datasets/x/sample; or asset:<name>@<version>"
        " (or @latest) to train on a data-asset version without aggregation and split",
    )
    run.add_argument("-p", "--param", action="append", default=[], help="key=value (JSON value)")
    run.add_argument("--watch", action="store_true", help="follow it until it finishes")
    run.add_argument("--plain", action="store_true", help=_PLAIN_HELP)
    run.set_defaults(func=cmd_run)

    watch = commands.add_parser(
        "watch",
        help="follow a run until it finishes (exit status 0 if it succeeded, 1 if not)",
    )
    watch.add_argument("run_id")
    watch.add_argument("--plain", action="store_true", help=_PLAIN_HELP)
    watch.set_defaults(func=cmd_watch)

    runs = commands.add_parser("runs", help="list, show, cancel or retry runs")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True)
    runs_list = runs_commands.add_parser("list")
    runs_list.add_argument("--status")
    runs_list.add_argument("--limit", type=int, default=20)
    runs_list.add_argument("--recipe", help="only this recipe's runs")
    runs_list.add_argument("--entity", help="only this entity's runs (a group member's, say)")
    runs_list.set_defaults(func=cmd_runs_list)
    runs_show = runs_commands.add_parser("show")
    runs_show.add_argument("run_id")
    runs_show.add_argument("--json", action="store_true")
    runs_show.set_defaults(func=cmd_runs_show)
    runs_cancel = runs_commands.add_parser(
        "cancel", help="stop a queued or running run (an Azure ML training job too)"
    )
    runs_cancel.add_argument("run_id")
    runs_cancel.set_defaults(func=cmd_runs_cancel)
    runs_retry = runs_commands.add_parser(
        "retry", help="a failed or cancelled run again, from the stage that stopped"
    )
    runs_retry.add_argument("run_id")
    runs_retry.add_argument("--watch", action="store_true", help="follow it until it finishes")
    runs_retry.add_argument("--plain", action="store_true", help=_PLAIN_HELP)
    runs_retry.set_defaults(func=cmd_runs_retry)

    # Imported here: cli.groups uses this module's HTTP helpers.
    from cli.groups import add_group_commands

    add_group_commands(commands)
    from cli.load_zip import add_load_zip_command

    add_load_zip_command(commands)
    schedules = commands.add_parser("schedules", help="the cron schedules: next and last tick")
    schedules.add_argument("--json", action="store_true")
    schedules.set_defaults(func=cmd_schedules)
    models = commands.add_parser("models", help="a model's champion: show it, or promote/roll back")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    champion = models_commands.add_parser("champion", help="show a model's champion")
    champion.add_argument("name", help="registered model name")
    champion.add_argument("--json", action="store_true")
    champion.set_defaults(func=cmd_models_champion)
    promote = models_commands.add_parser(
        "promote",
        help="make a version the champion whatever its metrics; a rollback is a promote of"
        " an older version",
    )
    promote.add_argument("name", help="registered model name")
    promote.add_argument("version")
    promote.add_argument("--reason", required=True, help="why; recorded on the version")
    promote.set_defaults(func=cmd_models_promote)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except httpx.ConnectError as exc:
        print(f"error: cannot reach the coordinator at {args.url}: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
