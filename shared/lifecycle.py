"""How a service process ends: with its supervisor, and quickly.

``stop_with_supervisor``: a service started by ``retrainer up`` (``cli/stack.py``) is told its
supervisor's pid (``RETRAINER_SUPERVISOR_PID``); when the supervisor is gone, even killed
without a chance to stop its children, the service stops itself as if it got SIGTERM. So no
service outlives the stack that started it.

``exit_now``: exit once everything is flushed, without the interpreter's teardown.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import NoReturn

log = logging.getLogger(__name__)

SUPERVISOR_POLL_S = 0.5


def stop_with_supervisor(supervisor_pid: int | None) -> None:
    """Send this process SIGTERM once ``supervisor_pid`` is no longer its parent."""
    if supervisor_pid is None:
        return

    def watch() -> None:
        _wait_for_exit(supervisor_pid)
        while os.getppid() == supervisor_pid:
            time.sleep(SUPERVISOR_POLL_S)
        log.warning("supervisor %s is gone: stopping", supervisor_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def _wait_for_exit(supervisor_pid: int) -> None:
    """Until the supervisor exits, sleeping on a pidfd (no wake-up until then); returns at once
    where pidfds are not available, and the caller polls."""
    try:
        pidfd = os.pidfd_open(supervisor_pid)
    except (AttributeError, OSError):
        return
    try:
        # Opened after the supervisor was checked to be the parent: if it still is, the pidfd
        # is that process, not another that reused its pid.
        if os.getppid() == supervisor_pid:
            select.select([pidfd], [], [])
    finally:
        os.close(pidfd)


def exit_now(code: int) -> NoReturn:
    """Exit skipping the interpreter's teardown: freeing the ~2,000 modules of pandas,
    scikit-learn and MLflow took 1-8 s on a busy 2-core machine, enough for the stack's stop
    to kill the process (docs/benchmarks.md). The exit hooks still run (log handlers,
    temporary directories of abandoned stages); daemon threads end with the process."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
