"""A full disk and a read-only one, on a real tmpfs: 503 with Retry-After and /readyz false
while the disk is full, nothing lost or corrupted, and a start-up error that names the path
and the cause. The scenarios (tests/disk_scenarios.py) run in a private mount namespace
(``unshare -rm``), skipped with the reason where this machine does not allow one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def mount_namespace_problem() -> str | None:
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    probe = subprocess.run(
        ["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"mounting a tmpfs in a user namespace is not allowed here: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def namespaces() -> None:
    problem = mount_namespace_problem()
    if problem is not None:
        pytest.skip(problem)


def run_scenario(name: str, directory: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["unshare", "-rm", sys.executable, "-m", "tests.disk_scenarios", name, str(directory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_a_full_disk_is_503_with_retry_after_and_not_ready_and_loses_nothing(
    namespaces: None, tmp_path: Path
) -> None:
    report = run_scenario("full", tmp_path)

    assert report["ready_before"] == 200
    assert report["ready_when_full_status"] == 503
    assert "nearly full" in report["ready_when_full"]["checks"]["database"]
    statuses = [status for status, _ in report["answers_when_full"]]
    assert set(statuses) <= {202, 503}, statuses
    assert 503 in statuses
    assert all(retry == "5" for status, retry in report["answers_when_full"] if status == 503)
    assert report["list_when_full"] == 200
    # Space again: ready, and taking runs; every run ever accepted is there, the file sound.
    assert (report["ready_after"], report["post_after"]) == (200, 202)
    assert report["found"] == report["accepted"] == report["total"]
    assert report["integrity"] == "ok"


def test_a_read_only_state_directory_fails_start_up_naming_the_path_and_the_cause(
    namespaces: None, tmp_path: Path
) -> None:
    report = run_scenario("read-only", tmp_path)

    assert report["type"] == "ConfigurationError"
    assert str(tmp_path / "state") in report["error"]
    assert "Read-only file system" in report["error"]
