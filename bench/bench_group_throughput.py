"""Members per minute of a run group on the embedded process stack.

    .venv/bin/python bench/bench_group_throughput.py [--members 200] [--concurrency 8]
        [--rows 600] [--json out.json]

Every member is the state_identifier recipe on its own small data set (``--rows`` readings of
the synthetic machine, a different seed each, so no stage is served from another member's
cache), one model per member (the entity). Measured from POST /run-groups until every member
is terminal; then it checks that every member succeeded and that each member's model has
exactly one version (no duplicate registration). The stack: the coordinator and one worker
process per stage (``retrainer up``), SQLite bus, local blobs, MLflow on SQLite.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from cli.main import prepare_state, stack_env
from cli.stack import Stack, free_port
from recipes.state_identifier.sample_data import generate
from shared.bootstrap import create_blob_store
from shared.settings import CommonSettings

PREFIX = "datasets/bench-group"


def upload_members(settings: CommonSettings, members: int, rows: int) -> None:
    store = create_blob_store(settings.model_copy(update={"blob_events": False}))
    for index in range(members):
        buffer = io.StringIO()
        generate(seed=index, rows=rows).frame.to_csv(buffer, index=False)
        store.upload_blob(f"{PREFIX}/m{index:04d}/readings.csv", buffer.getvalue().encode())


def run(members: int, concurrency: int, rows: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        settings = CommonSettings(state_dir=state)
        upload_members(settings, members, rows)
        prepare_state(settings)
        port = free_port()
        env = {**stack_env(settings, port), "RETRAINER_GROUP_MAX_MEMBERS": str(max(members, 1))}
        stack = Stack(env, log_dir=state / "logs")
        stack.start()
        try:
            url = f"http://127.0.0.1:{port}"
            stack.wait_ready(url, timeout_s=600)
            with httpx.Client(base_url=url, timeout=60.0) as client:
                started = time.perf_counter()
                response = client.post(
                    "/run-groups",
                    json={
                        "recipe": "state_identifier",
                        "expand": {"kind": "sub_prefixes", "prefix": PREFIX},
                        "concurrency": concurrency,
                    },
                )
                response.raise_for_status()
                group_id = response.json()["id"]
                while True:
                    summary = client.get("/run-groups", params={"limit": 1}).json()["groups"][0]
                    if summary["status"] != "running":
                        break
                    time.sleep(1.0)
                elapsed = time.perf_counter() - started
                group = client.get(f"/run-groups/{group_id}").json()
        finally:
            stack.stop()
        versions = _model_versions(settings)
    terminal = {"succeeded", "failed", "cancelled"}
    return {
        "members": members,
        "concurrency": concurrency,
        "rows_per_member": rows,
        "seconds": round(elapsed, 1),
        "members_per_min": round(members / elapsed * 60, 1),
        "counts": group["counts"],
        "all_terminal": all(m["status"] in terminal for m in group["member_runs"]),
        "models": len(versions),
        "duplicate_versions": sorted(name for name, count in versions.items() if count != 1),
    }


def _model_versions(settings: CommonSettings) -> dict[str, int]:
    import mlflow

    client = mlflow.MlflowClient(settings.resolved_mlflow_tracking_uri)
    counts: dict[str, int] = {}
    for version in client.search_model_versions(max_results=100_000):
        counts[version.name] = counts.get(version.name, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.members, args.concurrency, args.rows)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
