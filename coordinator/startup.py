"""The coordinator built in the background while the API already answers.

``python -m coordinator`` listens as soon as uvicorn is up, so ``/healthz`` answers within a
second of the process starting, before the run store, the bus and the recipes are connected.
A thread builds the ``Coordinator`` (and starts its loops); until it has, ``/readyz`` says
``starting`` and requests that need the coordinator wait for it (up to ``request_wait_s``, then
503). A build that fails with a ``RetryableError`` or an unexpected error (a database not up
yet) is retried with a backoff, its error shown by ``/readyz``; a ``PermanentError`` (a bad
setting, a recipe module that cannot be imported) ends the start-up: ``/healthz`` answers 503
from then on, so an orchestrator restarts the process, and ``/readyz`` names the error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Literal

from coordinator.service import BackgroundLoops, Coordinator
from shared.errors import PermanentError, RetryableError

log = logging.getLogger(__name__)

StartupStatus = Literal["starting", "ready", "failed"]
# Backoff between build attempts.
FIRST_RETRY_S = 0.5
MAX_RETRY_S = 10.0


class CoordinatorUnavailableError(RetryableError):
    """The coordinator is still starting, or failed to start (HTTP 503)."""


class Startup:
    def __init__(
        self,
        build: Callable[[], Coordinator],
        *,
        make_loops: Callable[[Coordinator], BackgroundLoops | None] | None,
        request_wait_s: float,
    ) -> None:
        self._build = build
        self._make_loops = make_loops
        self._request_wait_s = request_wait_s
        self._done = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.coordinator: Coordinator | None = None
        self.loops: BackgroundLoops | None = None
        self.status: StartupStatus = "starting"
        # The latest build error (retried, or final when failed).
        self.error: str | None = None

    @classmethod
    def of(cls, coordinator: Coordinator, loops: BackgroundLoops | None) -> Startup:
        """A start-up already done, with a coordinator someone else built."""
        startup = cls(lambda: coordinator, make_loops=None, request_wait_s=0.0)
        startup._ready(coordinator, loops)
        return startup

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="coordinator-startup", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop building (a build under way is waited for) and stop the loops."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.loops is not None:
            self.loops.stop()

    def get(self, wait_s: float | None = None) -> Coordinator:
        """The coordinator, waiting for the start-up up to ``wait_s`` (default
        ``request_wait_s``); ``CoordinatorUnavailableError`` if it is not there by then."""
        self._done.wait(self._request_wait_s if wait_s is None else wait_s)
        if self.coordinator is not None:
            return self.coordinator
        if self.status == "failed":
            raise CoordinatorUnavailableError(f"the coordinator failed to start: {self.error}")
        why = f" ({self.error})" if self.error else ""
        raise CoordinatorUnavailableError(f"the coordinator is still starting{why}")

    def _ready(self, coordinator: Coordinator, loops: BackgroundLoops | None) -> None:
        self.coordinator, self.loops = coordinator, loops
        self.status, self.error = "ready", None
        self._done.set()

    def _run(self) -> None:
        delay = FIRST_RETRY_S
        while not self._stopping.is_set():
            try:
                coordinator = self._build()
            except PermanentError as exc:
                self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
                log.error("coordinator start-up failed: %s", self.error)
                self._done.set()
                return
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                expected = isinstance(exc, RetryableError)
                log.warning(
                    "coordinator start-up: %s; retrying in %.1f s",
                    self.error,
                    delay,
                    exc_info=not expected,
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            if self._stopping.is_set():
                self.coordinator = coordinator  # closed by whoever stopped us
                return
            loops = self._make_loops(coordinator) if self._make_loops else None
            if loops is not None:
                loops.start()
            self._ready(coordinator, loops)
            log.info("coordinator ready")
            return
