"""Scenarios on a small tmpfs, run as ``unshare -rm python -m tests.disk_scenarios NAME DIR``:
a private mount namespace where this process may mount a file system of its own (see
tests/integration/test_disk_full.py). Prints one JSON report on its last line.

* ``full``: the coordinator's state on an 8 MiB tmpfs, filled to the last byte while it serves.
* ``read-only``: the coordinator starting on a state directory mounted read-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from coordinator.api import create_app
from coordinator.bootstrap import build_coordinator
from coordinator.domain import Policy
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from coordinator.store import RunStore
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.errors import ConfigurationError
from shared.recipe_registry import get_recipe
from shared.topology import build_topology

REQUEST = {"recipe": "state_identifier", "data": "raw/set1", "params": {"n_clusters": 3}}


def mount_tmpfs(directory: Path, size: str, *, read_only: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the disk refuses another byte."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)
    return filler


def full(root: Path) -> dict[str, Any]:
    state = root / "state"
    mount_tmpfs(state, "8m")
    blobs = LocalBlobStore(state / "blobs")
    blobs.upload_blob("raw/set1/part-1.csv", b"timestamp,a\n1,2\n")
    store = RunStore.from_url(f"sqlite:///{state / 'coordinator.sqlite'}")
    store.create_tables()
    coordinator = Coordinator(
        bus=SqliteMessageBus(state / "bus.sqlite", topology=build_topology()),
        blobs=blobs,
        store=store,
        recipes=get_recipe,
        policy=Policy(),
        min_free_disk_bytes=1024 * 1024,
    )
    report: dict[str, Any] = {}
    app = create_app(CoordinatorSettings(state_dir=state), coordinator=coordinator, run_loops=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        accepted = [client.post("/runs", json=REQUEST).json()["id"]]
        report["ready_before"] = client.get("/readyz").status_code
        filler = fill(state)
        report["ready_when_full"] = client.get("/readyz").json()
        report["ready_when_full_status"] = client.get("/readyz").status_code
        answers = []
        for _ in range(20):
            response = client.post("/runs", json=REQUEST)
            answers.append((response.status_code, response.headers.get("retry-after")))
            if response.status_code == 202:
                accepted.append(response.json()["id"])
        report["answers_when_full"] = answers
        report["list_when_full"] = client.get("/runs").status_code
        filler.unlink()
        report["ready_after"] = client.get("/readyz").status_code
        after = client.post("/runs", json=REQUEST)
        report["post_after"] = after.status_code
        if after.status_code == 202:
            accepted.append(after.json()["id"])
        report["accepted"] = len(accepted)
        report["found"] = sum(client.get(f"/runs/{run}").status_code == 200 for run in accepted)
        report["total"] = client.get("/runs").json()["total"]
    with store._engine.connect() as conn:
        report["integrity"] = conn.exec_driver_sql("PRAGMA integrity_check").scalar()
    coordinator.close()
    return report


def read_only(root: Path) -> dict[str, Any]:
    state = root / "state"
    mount_tmpfs(state, "1m", read_only=True)
    try:
        build_coordinator(CoordinatorSettings(state_dir=state))
    except ConfigurationError as exc:
        return {"error": str(exc), "type": "ConfigurationError"}
    except Exception as exc:
        return {"error": str(exc), "type": type(exc).__name__}
    return {"error": None}


if __name__ == "__main__":
    scenario, directory = sys.argv[1], Path(sys.argv[2])
    result = {"full": full, "read-only": read_only}[scenario](directory)
    print(json.dumps(result))
