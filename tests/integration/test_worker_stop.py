"""A worker process stops at once on SIGTERM, also in the middle of its warm-up (importing a
recipe's ML stack takes tens of seconds on a busy machine; ``retrainer up`` would otherwise kill
it after its stop timeout). Waits on events, never on a stopwatch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.waiting import WAIT_S, wait_until


def test_a_worker_stopped_while_importing_its_recipes_exits_cleanly(tmp_path: Path) -> None:
    marker = tmp_path / "importing"
    log_path = tmp_path / "aggregation.log"
    env = {
        **os.environ,
        "RETRAINER_STATE_DIR": str(tmp_path / "state"),
        "RETRAINER_RECIPE_MODULES": '["tests.stop_fixtures"]',
        "RETRAINER_WARM_UP": "true",
        "RETRAINER_HEALTH_FILE": str(tmp_path / "alive"),
        "RETRAINER_TEST_IMPORT_MARKER": str(marker),
    }
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "services.aggregation"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: marker.exists() or worker.poll() is not None, "the warm-up import")
        assert worker.poll() is None, log_path.read_text()

        worker.send_signal(signal.SIGTERM)

        assert worker.wait(WAIT_S) == 0, log_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    output = log_path.read_text()
    assert "stopped while warming up" in output, output
    assert "Traceback" not in output, output
    assert not (tmp_path / "alive").exists(), "reported alive before its warm-up ended"
