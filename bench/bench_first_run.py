"""Time to ready and to the first result after starting the embedded stack, beside Prefect.

    .venv/bin/python bench/bench_first_run.py [--rounds 2] [--prefect /tmp/prefect-venv/bin/python]

Each round starts a fresh process stack (as ``retrainer up`` does) once per mode, the modes in
an order that alternates between rounds:

* ``warm``: the workers warm up (``RETRAINER_WARM_UP=true``, the default) and the run is
  posted once every worker is warm (``wait_ready()``): the first run after ready.
* ``at-api``: the same, but the run is posted as soon as the API is ready
  (``wait_ready(level="api")``) and queues while the workers warm up: what ``retrainer demo``
  does.
* ``no-warm-up``: ``RETRAINER_WARM_UP=false``: ready sooner, the first message pays the
  imports.

For each: seconds from the start to the API ready, to every worker warm, from ``POST /runs``
of ``state_identifier`` on its sample data until the run succeeded, and from the start until
then. The page cache is warm after the first (untimed) start. Target: first run <= 2 s after
ready.

``--prefect PYTHON``: also Prefect's peer figure, measured the same way with that
interpreter (a throwaway venv with Prefect installed, never this project's): ``prefect
server start`` on a fresh home until its API answers ``/api/health``, then a first flow of
five tasks (the same five steps' shape, trivial bodies) run against it until it is
recorded as completed.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

from cli.main import prepare_state, stack_env, upload_sample_data
from cli.stack import Stack, free_port
from shared.settings import CommonSettings

TARGET_FIRST_RUN_S = 2.0
MODES = ("warm", "at-api", "no-warm-up")


def once(root: Path, mode: str) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(dir=root))
    os.environ["RETRAINER_STATE_DIR"] = str(state)
    settings = CommonSettings()
    prepare_state(settings)
    upload_sample_data(settings, "state_identifier", "datasets/first/raw", seed=0)
    port = free_port()
    env = {
        **stack_env(settings, port),
        "RETRAINER_WARM_UP": "false" if mode == "no-warm-up" else "true",
    }
    url = f"http://127.0.0.1:{port}"
    figures: dict[str, float] = {}
    t0 = time.perf_counter()
    with Stack(env, log_dir=state / "logs") as stack:
        stack.wait_ready(url, level="api")
        figures["api"] = time.perf_counter() - t0
        if mode != "at-api":
            stack.wait_ready(url)
            figures["warm"] = time.perf_counter() - t0
        with httpx.Client(base_url=url, timeout=60.0) as client:
            t1 = time.perf_counter()
            body = {"recipe": "state_identifier", "data": "datasets/first/raw", "params": {}}
            run_id = client.post("/runs", json=body).json()["id"]
            while (status := client.get(f"/runs/{run_id}").json()["status"]) not in (
                "succeeded",
                "failed",
            ):
                time.sleep(0.02)
            figures["first_run"] = time.perf_counter() - t1
            figures["first_result"] = time.perf_counter() - t0
    assert status == "succeeded", status
    return figures


PREFECT_FLOW = textwrap.dedent(
    """
    import sys, time
    from prefect import flow, task

    @task
    def step(name, upstream):
        return upstream + [name]

    @flow
    def pipeline():
        done = []
        for name in ("aggregation", "split", "train", "register", "tag"):
            done = step(name, done)
        return done

    started = time.perf_counter()
    state = pipeline(return_state=True)
    assert state.is_completed(), state
    print(f"flow {time.perf_counter() - started:.3f}")
    """
)


def prefect_once(python: str) -> dict[str, float]:
    """``prefect server start`` on a fresh home, time to ``/api/health``; then a first flow
    (a new process, as a user's script would be) until it completed on that server."""
    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        env = {
            **os.environ,
            "PREFECT_HOME": home,
            "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        t0 = time.perf_counter()
        command = [python, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
        server = subprocess.Popen(
            [*command, "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"prefect server exited with {server.returncode}")
                try:
                    if httpx.get(f"{api}/health", timeout=2.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            ready = time.perf_counter() - t0
            t1 = time.perf_counter()
            subprocess.run([python, "-c", PREFECT_FLOW], env=env, check=True, capture_output=True)
            first = time.perf_counter() - t1
            return {"api": ready, "first_run": first, "first_result": time.perf_counter() - t0}
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


def _spread(values: list[float]) -> str:
    if not values:
        return f"{'-':>22}"
    return f"{min(values):>8.2f}{statistics.median(values):>7.2f}{max(values):>7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prefect", help="a Python with Prefect installed (its own venv)")
    args = parser.parse_args()
    os.environ.setdefault("RETRAINER_STARTUP_TIMEOUT_S", "1800")
    rows: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    if args.prefect:
        rows["prefect"] = []
    with tempfile.TemporaryDirectory() as tmp:
        once(Path(tmp), "warm")  # untimed: the page cache
        if args.prefect:
            prefect_once(args.prefect)
        for r in range(args.rounds):
            order = list(rows) if r % 2 == 0 else list(reversed(rows))
            for mode in order:
                figures = prefect_once(args.prefect) if mode == "prefect" else once(Path(tmp), mode)
                rows[mode].append(figures)
                shown = {name: round(value, 2) for name, value in figures.items()}
                print(f"round {r + 1} {mode}: {shown}", flush=True)
    load = os.getloadavg()
    print(f"\nload average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    print("seconds, min / median / max")
    print(
        f"{'':<12}{'API ready':>22}{'workers warm':>22}{'first run (post->done)':>24}"
        f"{'start->first result':>22}"
    )
    for mode, measured in rows.items():
        print(
            f"{mode:<12}"
            + "".join(
                _spread([f[key] for f in measured if key in f])
                for key in ("api", "warm", "first_run", "first_result")
            )
        )
    median = statistics.median(f["first_run"] for f in rows["warm"])
    verdict = "met" if median <= TARGET_FIRST_RUN_S else "NOT met"
    print(f"target: first run <= {TARGET_FIRST_RUN_S} s after workers warm: {median:.2f} {verdict}")
    if not args.prefect:
        print("Prefect peer: not measured (pass --prefect PYTHON, a venv with Prefect)")


if __name__ == "__main__":
    main()
