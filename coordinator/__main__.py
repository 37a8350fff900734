"""``python -m coordinator``: the REST API and the background loops in one process.

uvicorn turns SIGTERM/SIGINT into a graceful shutdown, which stops the loops (app lifespan)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from types import FrameType

import uvicorn
from uvicorn.main import STARTUP_FAILURE

from coordinator.api import create_app
from coordinator.auth import check_exposure
from coordinator.settings import CoordinatorSettings
from shared.errors import ConfigurationError
from shared.lifecycle import stop_with_supervisor
from shared.telemetry import configure_from_settings

log = logging.getLogger("coordinator")

# How often the idle server looks at its exit flag and refreshes its Date header.
TICK_S = 1.0


class QuietServer(uvicorn.Server):
    """uvicorn's server waking once a second instead of ten times to look at its exit flag (its
    Date header has one-second resolution anyway); a stop signal wakes it at once."""

    _loop: asyncio.AbstractEventLoop | None = None
    _woken: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._woken = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), TICK_S)
            # on_tick refreshes the Date header when the counter is a multiple of 10.
            counter = (counter + 10) % 864000

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self._woken is not None:
            self._loop.call_soon_threadsafe(self._woken.set)


def main() -> None:
    settings = CoordinatorSettings()
    stop_with_supervisor(settings.supervisor_pid)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        check_exposure(settings)
    except ConfigurationError as exc:
        log.error("%s", exc)
        sys.exit(2)
    # The Azure SDKs log every request's headers at INFO: the blob poller's every few seconds.
    sdk_requests = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    if sdk_requests.level == logging.NOTSET:
        sdk_requests.setLevel(logging.WARNING)
    # Before the app exists, so that its requests are traced too; the lifespan flushes.
    configure_from_settings("coordinator", settings)
    server = QuietServer(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            timeout_keep_alive=int(settings.http_keep_alive_s),
        )
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
