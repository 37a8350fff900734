"""The whole stack as local processes: the coordinator and the five stage workers.

Used by ``retrainer up``/``retrainer demo`` and by the end-to-end tests, so that the tests run
exactly what a user runs. Each service is ``python -m <module>`` with the same ``RETRAINER_*``
environment, its output in ``<log_dir>/<service>.log``.

* Start-up has two levels. ``wait_ready(level="api")`` waits until the coordinator's
  ``/readyz`` answers 200: the API takes runs, which queue until their stage's worker is warm.
  ``wait_ready()`` (``level="warm"``) waits further until every worker has finished its
  warm-up (imports, store set-up) and polled its topic once (its health file,
  ``RETRAINER_HEALTH_FILE``): a run then starts at once. Both report progress as they go, up
  to a limit (``RETRAINER_STARTUP_TIMEOUT_S``, generous by default: six processes importing
  at once on a busy 2-core machine take a while). A service that exits, a coordinator whose
  start-up failed, or the limit raise ``StackError`` naming the service and quoting the end
  of its log.
* Children never outlive the stack: ``stop`` sends SIGTERM to all and kills what is left after
  a timeout; every service also watches its supervisor's pid (``RETRAINER_SUPERVISOR_PID``,
  ``shared/lifecycle.py``) and stops itself when the process that started it is gone.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from shared.messages import STAGES

log = logging.getLogger(__name__)

SERVICE_MODULES: dict[str, str] = {
    "coordinator": "coordinator",
    **{stage: f"services.{stage}" for stage in STAGES},
}
COORDINATOR = "coordinator"
# How long start-up may take unless RETRAINER_STARTUP_TIMEOUT_S says otherwise.
DEFAULT_STARTUP_TIMEOUT_S = 300.0
LOG_TAIL_LINES = 15
# "api": the coordinator serves runs; "warm": every worker can also start one at once.
ReadyLevel = Literal["api", "warm"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def startup_timeout_s() -> float:
    return float(os.environ.get("RETRAINER_STARTUP_TIMEOUT_S", DEFAULT_STARTUP_TIMEOUT_S))


class StackError(Exception):
    """The stack did not come up: which service, why, and the end of its log."""


@dataclass
class _Service:
    name: str
    module: str
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)
    started_wall: float = field(default=0.0)


class Stack:
    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log_dir: Path,
        services: Mapping[str, str] = SERVICE_MODULES,
        health_dir: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        """``cwd``: where the services start (``python -m`` imports from there first: a
        benchmark's other checkout)."""
        self.env = {**os.environ, **env, "RETRAINER_SUPERVISOR_PID": str(os.getpid())}
        self.cwd = cwd
        self.log_dir = log_dir
        self.health_dir = health_dir or log_dir.parent / "health"
        self._services = {name: _Service(name, module) for name, module in services.items()}

    @property
    def names(self) -> list[str]:
        return list(self._services)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.health_dir.mkdir(parents=True, exist_ok=True)
        for name in self._services:
            self.start_service(name)

    def start_service(self, name: str) -> None:
        service = self._services[name]
        if service.log_file is None:
            service.log_file = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        env = {**self.env, "RETRAINER_HEALTH_FILE": str(self._health_file(name))}
        service.started_wall = time.time()
        service.process = subprocess.Popen(
            [sys.executable, "-m", service.module],
            env=env,
            cwd=self.cwd,
            stdout=service.log_file,
            stderr=subprocess.STDOUT,
        )
        service.started_at = time.monotonic()
        log.info("started %s (pid %s)", name, service.process.pid)

    def pid(self, name: str) -> int:
        process = self._services[name].process
        assert process is not None, f"{name} is not started"
        return process.pid

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self._services[name].process
        if process is not None:
            process.send_signal(sig)
            process.wait()

    def running(self) -> list[str]:
        """The services whose process is alive."""
        return [
            name
            for name, service in self._services.items()
            if service.process is not None and service.process.poll() is None
        ]

    def restart_dead(self) -> list[str]:
        """Start again every service that exited; returns their names."""
        restarted = []
        for name, service in self._services.items():
            if service.process is not None and service.process.poll() is not None:
                log.warning("%s exited with %s; restarting", name, service.process.returncode)
                service.restarts += 1
                self.start_service(name)
                restarted.append(name)
        return restarted

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            text = path.read_bytes()[-64 * 1024 :].decode(errors="replace")
        except FileNotFoundError:
            return f"({path} does not exist)"
        tail = text.splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in tail) or "    (empty)"

    # -- start-up ----------------------------------------------------------------------------

    def wait_ready(
        self,
        url: str,
        *,
        level: ReadyLevel = "warm",
        timeout_s: float | None = None,
        progress: Callable[[float, dict[str, str]], None] | None = None,
        stop_requested: Callable[[], bool] = lambda: False,
        poll_s: float = 0.1,
    ) -> float:
        """Wait until the stack is ready at ``level`` (the module's docstring); returns the
        seconds it took. ``progress`` gets (elapsed seconds, {service: what it waits for})
        whenever that changes.

        Raises ``StackError`` when a service exits, the coordinator's start-up fails, the
        limit passes or ``stop_requested()``."""
        limit = startup_timeout_s() if timeout_s is None else timeout_s
        started = time.monotonic()
        waiting: dict[str, str] = {}
        while True:
            elapsed = time.monotonic() - started
            self._check_alive()
            now_waiting = self._not_ready(url, level)
            if now_waiting != waiting and progress is not None:
                progress(elapsed, now_waiting)
            waiting = now_waiting
            if not waiting:
                return time.monotonic() - started
            if stop_requested():
                raise StackError("start-up interrupted")
            if elapsed > limit:
                raise StackError(
                    f"not ready after {limit:g} s (RETRAINER_STARTUP_TIMEOUT_S): "
                    + "; ".join(f"{name}: {why}" for name, why in waiting.items())
                    + self._tails(waiting)
                )
            time.sleep(poll_s)

    def _check_alive(self) -> None:
        for name, service in self._services.items():
            code = service.process.poll() if service.process is not None else None
            if code is not None:
                raise StackError(
                    f"{name} exited with code {code} while starting" + self._tails([name])
                )

    def _not_ready(self, url: str, level: ReadyLevel) -> dict[str, str]:
        waiting = {}
        if COORDINATOR in self._services:
            state = self._coordinator_state(url)
            if state is not None:
                waiting[COORDINATOR] = state
        for name, service in self._services.items():
            if name == COORDINATOR or level == "api":
                continue
            try:
                touched = self._health_file(name).stat().st_mtime
            except FileNotFoundError:
                touched = 0.0
            # A file left by an earlier run of the stack does not count.
            if touched < service.started_wall - 1.0:
                waiting[name] = "starting"
        return waiting

    def _coordinator_state(self, url: str) -> str | None:
        """None when ready, else what it is doing; raises StackError if its start-up failed."""
        # The standard library's client: no TLS context to build for a local probe.
        parsed = urllib.parse.urlsplit(url)
        connection = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=2.0)
        try:
            connection.request("GET", "/readyz")
            response = connection.getresponse()
            status, content = response.status, response.read()
        except OSError:
            return "starting"
        finally:
            connection.close()
        if status == 200:
            return None
        try:
            body = json.loads(content)
        except ValueError:
            return f"HTTP {status}"
        checks = body.get("checks") or {}
        if body.get("status") == "failed":
            raise StackError(
                f"the coordinator failed to start: {checks.get('startup')}"
                + self._tails([COORDINATOR])
            )
        problems = [str(v) for v in checks.values() if v != "ok"]
        return "connecting" + (f" ({'; '.join(problems)})" if problems else "")

    def _tails(self, names: Iterable[str]) -> str:
        return "".join(
            f"\nlast lines of {self.log_dir / f'{name}.log'}:\n{self.log_tail(name)}"
            for name in names
        )

    def _health_file(self, name: str) -> Path:
        return self.health_dir / name

    # -- stopping ----------------------------------------------------------------------------

    def stop(self, *, timeout_s: float = 15.0) -> list[str]:
        """SIGTERM every service, then SIGKILL what has not exited after ``timeout_s``;
        returns the names of the services that had to be killed."""
        running = [s for s in self._services.values() if s.process and s.process.poll() is None]
        for service in running:
            assert service.process is not None
            service.process.terminate()
        deadline = time.monotonic() + timeout_s
        killed = []
        for service in running:
            assert service.process is not None
            try:
                service.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", service.name)
                service.process.kill()
                service.process.wait()
                killed.append(service.name)
        for service in self._services.values():
            if service.log_file is not None:
                service.log_file.close()
                service.log_file = None
        return killed

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
