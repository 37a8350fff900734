"""``retrainer up`` as a user runs it, in a subprocess: it comes up on a machine that is busy,
serves a run, stops on SIGTERM, and leaves no process behind when its start-up fails or when
it is killed itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.main import upload_sample_data, watch_run
from cli.stack import free_port
from shared.settings import CommonSettings
from tests.waiting import WAIT_S, wait_until

pytestmark = pytest.mark.slow

SAMPLE = "datasets/state-identifier/sample"
# Busy processes beside the stack (twice the cores of the project's machine), each spinning
# for at most LOAD_S: through the start-up and well into the run.
LOAD_PROCESSES = 4
LOAD_S = 90.0


class Up:
    """``retrainer up`` in a subprocess, its output collected line by line."""

    def __init__(self, state_dir: Path, port: int) -> None:
        env = {
            **os.environ,
            "RETRAINER_STATE_DIR": str(state_dir),
            "RETRAINER_PORT": str(port),
            "RETRAINER_STARTUP_TIMEOUT_S": str(WAIT_S),
        }
        env.pop("RETRAINER_URL", None)
        self.url = f"http://127.0.0.1:{port}"
        # A process group of its own: whatever the stack starts (services, their children)
        # stays in it, so "nothing left behind" is checked for the whole tree.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "up"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def children(self) -> list[int]:
        return children_of(self.process.pid)

    def group(self) -> list[int]:
        """The live processes of its process group (itself, the services, their children)."""
        return group_members(self.process.pid)

    def wait(self) -> int:
        code = self.process.wait(WAIT_S)
        self._reader.join(WAIT_S)
        return code


def _live_processes_where(field: int, value: int) -> list[int]:
    """The live processes whose /proc stat field ``field`` (after the state; 1 = ppid,
    2 = process group) is ``value`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its parenthesis.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[field]) == value and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    return _live_processes_where(1, pid)


def group_members(pgid: int) -> list[int]:
    """The live processes in process group ``pgid``."""
    return _live_processes_where(2, pgid)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def busy_machine() -> Iterator[None]:
    """``LOAD_PROCESSES`` processes spinning on the CPU for ``LOAD_S``."""
    spin = f"import time\nend = time.monotonic() + {LOAD_S}\nwhile time.monotonic() < end: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(LOAD_PROCESSES)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_up_comes_up_on_a_busy_machine_serves_a_run_and_stops_on_sigterm(
    tmp_path: Path, busy_machine: None
) -> None:
    state_dir = tmp_path / "state"
    upload_sample_data(CommonSettings(state_dir=state_dir), "state_identifier", SAMPLE, seed=5)
    up = Up(state_dir, free_port())
    try:
        wait_until(lambda: up.said("API ready") or up.process.poll() is not None, "the API")
        assert up.said("API ready in"), up.output
        assert up.said(up.url)
        with httpx.Client(base_url=up.url, timeout=30.0) as client:
            # Posted at the first level: it queues until the workers are there.
            started = client.post("/runs", json={"recipe": "state_identifier", "data": SAMPLE})
            assert started.status_code == 202, started.text
            wait_until(lambda: up.said("retrainer is up") or up.process.poll() is not None, "up")
            assert up.said("workers warm in"), up.output
            wait_until(lambda: client.get("/readyz").json()["workers_warm"], "warm workers")
            final = watch_run(
                client, started.json()["id"], out=lambda _: None, poll_s=0.2, timeout_s=WAIT_S
            )
        assert final["status"] == "succeeded", final
        children = up.children()
        assert len(children) == 6

        up.process.send_signal(signal.SIGTERM)
        assert up.wait() == 0, up.output
        assert up.said("stopped in"), up.output
        assert not up.said("killed"), up.output
        assert [pid for pid in children if alive(pid)] == []
        assert up.group() == [], "processes of the stack outlived it"
    finally:
        if up.process.poll() is None:
            up.process.kill()


def test_a_coordinator_dying_during_start_up_stops_everything_and_says_why(
    tmp_path: Path,
) -> None:
    up = Up(tmp_path / "state", free_port())
    try:
        # The stack's six processes are started together: kill the coordinator at once.
        wait_until(lambda: len(up.children()) == 6, "the stack's processes")
        children = up.children()
        coordinator = next(
            pid
            for pid in children
            if Path(f"/proc/{pid}/cmdline").read_bytes().endswith(b"-m\0coordinator\0")
        )
        os.kill(coordinator, signal.SIGKILL)

        assert up.wait() == 1, up.output
        assert up.said("coordinator exited with code -9 while starting"), up.output
        assert up.said("last lines of"), up.output
        assert [pid for pid in children if alive(pid)] == []
        assert up.group() == [], "processes of the stack outlived it"
    finally:
        if up.process.poll() is None:
            up.process.kill()


def test_services_stop_by_themselves_when_up_is_killed(tmp_path: Path) -> None:
    up = Up(tmp_path / "state", free_port())
    children: list[int] = []
    try:
        wait_until(lambda: len(up.children()) == 6, "the stack's processes")
        children = up.children()
        up.process.kill()  # no chance to stop its children
        up.wait()

        wait_until(lambda: not any(alive(pid) for pid in children), "the services to stop")
        wait_until(lambda: not up.group(), "every process of the stack to stop")
    finally:
        if up.process.poll() is None:
            up.process.kill()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
