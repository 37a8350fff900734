"""``python -m coordinator``: the REST API and the background loops in one process.

uvicorn turns SIGTERM/SIGINT into a graceful shutdown, which stops the loops (app lifespan)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from coordinator.api import create_app
from coordinator.auth import check_exposure
from coordinator.settings import CoordinatorSettings
from shared.errors import ConfigurationError
from shared.lifecycle import stop_with_supervisor
from shared.telemetry import configure_from_settings

log = logging.getLogger("coordinator")


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
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_keep_alive=int(settings.http_keep_alive_s),
    )


if __name__ == "__main__":
    main()
