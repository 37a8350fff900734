"""Start-up and stop of the local stack as a user sees them, and what each service imports.

* ``up``: ``retrainer up`` in a subprocess, from its start to "API ready" (the first level:
  the API takes runs) and to "retrainer is up" (the second: every worker is warm), then
  SIGTERM when idle and the time until it has exited with every service
  (stop). ``--repeat`` times on a warm page cache; with ``--cold`` one more run first after
  evicting the venv's and the project's files from the page cache (``posix_fadvise
  DONTNEED``, no root needed: what a first start after a reboot reads from disk).
* ``demo``: the whole ``retrainer demo`` command's wall and CPU time on a fresh state
  directory (sample data, start-up, one run, the champion's prediction, stop), and when each
  of its phases ended.
* ``imports``: ``python -X importtime`` of each service's entry module; the packages that cost
  the most (cumulative, top-level packages).

``--root DIR`` runs another checkout of the project with this venv (e.g. a ``git worktree`` at
an older commit, for before/after figures): its code comes first on the path. The load average
is recorded before each measurement: on a shared machine, compare figures from one session.

    .venv/bin/python bench/bench_startup.py --repeat 3 --cold --json bench-startup.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
# ``--env NAME=VALUE`` settings for the stack (e.g. RETRAINER_WARM_UP=false).
EXTRA_ENV: dict[str, str] = {}
SERVICES = {
    "coordinator": "coordinator.__main__",
    **{
        stage: f"services.{stage}.__main__"
        for stage in ("aggregation", "split", "train", "register", "tag")
    },
}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def env_for(root: Path, state_dir: Path, port: int) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "RETRAINER_STATE_DIR": str(state_dir),
        "RETRAINER_PORT": str(port),
    }
    env.pop("RETRAINER_URL", None)
    env.update(EXTRA_ENV)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def evict_page_cache(roots: list[Path]) -> int:
    """Ask the kernel to drop the cached pages of every file under ``roots``; returns how many
    files. Clean pages only (nothing to write back here), which is all of them."""
    count = 0
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    count += 1
                finally:
                    os.close(fd)
    return count


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the live processes ``pids`` used so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def measure_up(root: Path, timeout_s: float) -> dict[str, Any]:
    """One ``retrainer up``: seconds to ready, seconds from SIGTERM (idle) to exit."""
    with tempfile.TemporaryDirectory() as tmp:
        before = load()
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "up"],
            cwd=root,
            env=env_for(root, Path(tmp) / "state", free_port()),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so that whatever it leaves behind can be cleaned up
        )
        try:
            return {**_time_up(process, started, timeout_s), "load_before": before}
        finally:
            # An old checkout's failed start-up left its services running: not on our watch.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def _time_up(process: subprocess.Popen[str], started: float, timeout_s: float) -> dict[str, Any]:
    lines: list[str] = []
    ready = threading.Event()
    api_ready: list[float] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())
            if "API ready" in line:
                api_ready.append(time.monotonic() - started)
            if "retrainer is up" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = started + timeout_s
    while not ready.wait(0.05):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            reader.join(10)
            raise RuntimeError("retrainer up did not come up:\n" + "\n".join(lines[-30:]))
    ready_s = time.monotonic() - started
    # CPU the stack spent getting ready: the cost a busy machine stretches into wall time.
    ready_cpu_s = cpu_seconds([process.pid, *children_of(process.pid)])
    # Idle: let the workers settle into their receive loops, as a user's stack would be.
    time.sleep(2.0)
    stop_started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(120)
    stop_s = time.monotonic() - stop_started
    reader.join(10)
    said = next((line for line in lines if line.startswith("stopped in")), "")
    return {
        # The first level (the API serves runs); None for a checkout that has only one.
        "api_ready_s": round(api_ready[0], 2) if api_ready else None,
        "ready_s": round(ready_s, 2),
        "ready_cpu_s": round(ready_cpu_s, 2),
        "stop_s": round(stop_s, 2),
        "exit_code": code,
        "killed": "killed" in said,
    }


# Lines of ``retrainer demo``'s output that end a phase (the first line that starts so).
DEMO_PHASES = {
    "sample data": "sample_data_s",
    "API ready": "api_ready_s",
    "run ": "run_posted_s",
    "champion ": "champion_s",
}


def measure_demo(root: Path, timeout_s: float) -> dict[str, Any]:
    """The whole command's wall and CPU seconds (itself and the stack it starts), and when
    each phase ended (seconds from the start)."""
    with tempfile.TemporaryDirectory() as tmp:
        before = load()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "demo"],
            cwd=root,
            env=env_for(root, Path(tmp) / "state", free_port()),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        phases: dict[str, float] = {}
        lines: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            for prefix, name in DEMO_PHASES.items():
                if line.startswith(prefix) and name not in phases:
                    phases[name] = round(time.monotonic() - started, 2)
            if " succeeded" in line and line.startswith("run ") and "run_done_s" not in phases:
                phases["run_done_s"] = round(time.monotonic() - started, 2)
        code = process.wait(timeout_s)
        wall_s = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if code != 0:
            raise RuntimeError("retrainer demo failed:\n" + "".join(lines[-40:]))
        cpu_s = (after.ru_utime - cpu_before.ru_utime) + (after.ru_stime - cpu_before.ru_stime)
        return {
            "wall_s": round(wall_s, 2),
            "cpu_s": round(cpu_s, 2),
            **phases,
            "load_before": before,
        }


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def import_profile(root: Path, module: str, top: int) -> dict[str, Any]:
    """``-X importtime`` of ``module``: total seconds, module count, and the top-level packages
    with the largest self time summed (what the service pays for each of them)."""
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    )
    wall_s = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    by_package: collections.Counter[str] = collections.Counter()
    modules = 0
    for line in result.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match is None:
            continue
        modules += 1
        by_package[match.group(4).split(".")[0]] += int(match.group(1))
    return {
        "wall_s": round(wall_s, 2),
        "cpu_s": round(cpu_s, 2),
        "modules": modules,
        "self_us_total": sum(by_package.values()),
        "top_packages_ms": {name: round(us / 1000, 1) for name, us in by_package.most_common(top)},
    }


def attempt(measure: Any, *args: Any) -> dict[str, Any]:
    """A measurement, or what went wrong (an old checkout's fixed start-up limit, say)."""
    before = load()
    try:
        result: dict[str, Any] = measure(*args)
        return result
    except (RuntimeError, subprocess.SubprocessError) as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return {"error": lines[-1] if lines else type(exc).__name__, "load_before": before}


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=HERE, help="checkout to measure")
    parser.add_argument("--repeat", type=int, default=3, help="warm runs of up and demo")
    parser.add_argument("--cold", action="store_true", help="one run on an evicted page cache")
    parser.add_argument("--skip", nargs="*", default=[], choices=["up", "demo", "imports"])
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--top", type=int, default=8, help="packages per import profile")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the stack")
    args = parser.parse_args()
    for setting in args.env:
        name, _, value = setting.partition("=")
        EXTRA_ENV[name] = value
    root = args.root.resolve()
    report: dict[str, Any] = {
        "root": str(root),
        "commit": subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "env": EXTRA_ENV,
    }
    cached_roots = [Path(sysconfig.get_paths()["purelib"]), root]
    if "up" not in args.skip:
        if args.cold:
            files = evict_page_cache(cached_roots)
            report["up_cold"] = {**attempt(measure_up, root, args.timeout), "evicted_files": files}
            print("up, cold page cache:", report["up_cold"], flush=True)
        report["up_warm"] = [attempt(measure_up, root, args.timeout) for _ in range(args.repeat)]
        for run in report["up_warm"]:
            print("up, warm:", run, flush=True)
    if "demo" not in args.skip:
        if args.cold:
            evict_page_cache(cached_roots)
            report["demo_cold"] = attempt(measure_demo, root, args.timeout)
            print("demo, cold page cache:", report["demo_cold"], flush=True)
        report["demo_warm"] = [
            attempt(measure_demo, root, args.timeout) for _ in range(args.repeat)
        ]
        for run in report["demo_warm"]:
            print("demo, warm:", run, flush=True)
    if "imports" not in args.skip:
        report["imports"] = {
            name: import_profile(root, module, args.top) for name, module in SERVICES.items()
        }
        for name, profile in report["imports"].items():
            print(f"imports, {name}:", profile, flush=True)
    warm = report.get("up_warm", [])
    print()
    print(f"commit {report['commit']} at {root}, {report['cpus']} CPUs")
    ok = [r for r in warm if "error" not in r]
    demos = [r for r in report.get("demo_warm", []) if "error" not in r]
    print("up API ready s, warm:", summary([r["api_ready_s"] for r in ok if r["api_ready_s"]]))
    print("up workers warm s, warm:", summary([r["ready_s"] for r in ok]))
    print("up ready CPU s, warm:", summary([r["ready_cpu_s"] for r in ok]))
    print("up stop s, warm:", summary([r["stop_s"] for r in ok]))
    print("demo wall s, warm:", summary([r["wall_s"] for r in demos]))
    print("demo CPU s, warm:", summary([r["cpu_s"] for r in demos]))
    for failed in [r for r in [*warm, *report.get("demo_warm", [])] if "error" in r]:
        print("failed:", failed["error"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
