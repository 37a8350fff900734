"""The whole stack as local processes: the coordinator and the five stage workers.

Used by ``retrainer up``/``retrainer demo`` and by the end-to-end tests, so that the tests run
exactly what a user runs. Each service is ``python -m <module>`` with the same ``RETRAINER_*``
environment; a supervisor restarts a service that dies.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from shared.messages import STAGES

log = logging.getLogger(__name__)

SERVICE_MODULES: dict[str, str] = {
    "coordinator": "coordinator",
    **{stage: f"services.{stage}" for stage in STAGES},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class _Service:
    name: str
    module: str
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)


class Stack:
    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log_dir: Path,
        services: Mapping[str, str] = SERVICE_MODULES,
    ) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self._services = {name: _Service(name, module) for name, module in services.items()}

    @property
    def names(self) -> list[str]:
        return list(self._services)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in self._services:
            self.start_service(name)

    def start_service(self, name: str) -> None:
        service = self._services[name]
        if service.log_file is None:
            service.log_file = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        service.process = subprocess.Popen(
            [sys.executable, "-m", service.module],
            env=self.env,
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

    def wait_ready(self, url: str, *, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        last_error = "no answer"
        while time.monotonic() < deadline:
            coordinator = self._services.get("coordinator")
            if coordinator and coordinator.process and coordinator.process.poll() is not None:
                raise RuntimeError(
                    f"coordinator exited with {coordinator.process.returncode}; "
                    f"see {self.log_dir / 'coordinator.log'}"
                )
            try:
                response = httpx.get(f"{url}/readyz", timeout=2.0)
                if response.status_code == 200:
                    return
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise TimeoutError(f"coordinator at {url} not ready after {timeout_s} s: {last_error}")

    def stop(self, *, timeout_s: float = 15.0) -> None:
        running = [s for s in self._services.values() if s.process and s.process.poll() is None]
        for service in running:
            assert service.process is not None
            service.process.terminate()
        deadline = time.monotonic() + timeout_s
        for service in running:
            assert service.process is not None
            try:
                service.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", service.name)
                service.process.kill()
                service.process.wait()
        for service in self._services.values():
            if service.log_file is not None:
                service.log_file.close()
                service.log_file = None

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
