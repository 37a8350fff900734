"""CPU an idle embedded stack uses: the coordinator and the five workers, nothing to do.

    .venv/bin/python bench/bench_idle_cost.py [--seconds 60] [--baseline-tree /path/to/old/checkout]

Starts the process stack (SQLite bus, local blobs, MLflow on SQLite), waits until every
service is ready, lets it settle, then reads each process's CPU time (/proc) over the window.
``--baseline-tree`` starts a second stack at the same time from another checkout of the project
(its services start in it, so ``python -m`` imports that checkout first: ``PYTHONPATH`` alone
comes after the current directory), e.g. the commit before a change, so both are measured over
the same seconds of the shared machine's load. Target: <= 1 % of one core for the whole stack.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from cli.main import prepare_state, stack_env
from cli.stack import Stack, free_port
from shared.settings import CommonSettings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TARGET_CORE_SHARE = 0.01


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start(label: str, root: Path, tree: Path | None, exits: ExitStack) -> Stack:
    state = root / label
    state.mkdir()
    os.environ["RETRAINER_STATE_DIR"] = str(state)
    settings = CommonSettings()
    prepare_state(settings)
    env = {**stack_env(settings, free_port()), "RETRAINER_WARM_UP": "false"}
    cwd = None
    if tree:
        env["PYTHONPATH"] = str(tree)
        cwd = tree
    stack = exits.enter_context(Stack(env, log_dir=state / "logs", cwd=cwd))
    print(f"{label}: services run the code in {cwd or Path.cwd()}", flush=True)
    return stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--baseline-tree", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("RETRAINER_STARTUP_TIMEOUT_S", "1800")

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as exits:
        stacks = {"this tree": start("current", Path(tmp), None, exits)}
        if args.baseline_tree:
            stacks["baseline"] = start("baseline", Path(tmp), args.baseline_tree.resolve(), exits)
        for label, stack in stacks.items():
            port = stack.env["RETRAINER_PORT"]
            took = stack.wait_ready(f"http://127.0.0.1:{port}")
            print(f"{label}: ready in {took:.1f} s", flush=True)
        time.sleep(args.settle)
        pids = {label: {n: s.pid(n) for n in s.names} for label, s in stacks.items()}
        before = {label: {n: cpu_s(p) for n, p in named.items()} for label, named in pids.items()}
        t0 = time.monotonic()
        time.sleep(args.seconds)
        seconds = time.monotonic() - t0
        after = {label: {n: cpu_s(p) for n, p in named.items()} for label, named in pids.items()}

    load = os.getloadavg()
    print(
        f"\nidle for {seconds:.0f} s; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
        f" on {os.cpu_count()} cores\n"
    )
    names = list(next(iter(pids.values())))
    print(f"{'% of one core':<14}" + "".join(f"{n:>13}" for n in [*names, "total"]))
    for label in pids:
        shares = [(after[label][n] - before[label][n]) / seconds for n in names]
        cells = "".join(f"{share:>13.2%}" for share in [*shares, sum(shares)])
        print(f"{label:<14}{cells}")
        verdict = "met" if sum(shares) <= TARGET_CORE_SHARE else "NOT met"
        print(f"{'':<14}target: the stack <= {TARGET_CORE_SHARE:.0%} of one core: {verdict}")


if __name__ == "__main__":
    main()
