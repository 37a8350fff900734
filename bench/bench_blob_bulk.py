"""Bulk blob transfers through the blob port against a bare-HTTP ceiling, on Azurite.

    .venv/bin/python bench/bench_blob_bulk.py [--blobs 2000] [--size 1024] [--rounds 5]

What a stage does with a directory of blobs, measured three ways in interleaved rounds (the
order rotates each round, so load drift on the shared machine lands on every method alike):

* ``http``: the ceiling: bare aiohttp requests, a container SAS in the query, 32 in flight:
  GET each blob and write its file (no listing), or PUT each file (``x-ms-blob-type``).
* ``obstore``: ``download_prefix`` (list + download + write files) / ``upload_directory``
  through ``AzureBlobStore`` with its default bulk client (obstore, ``shared/blobs/azure_bulk.py``).
* ``sdk``: the same through the Azure SDK path (``bulk_client="sdk"``), the only one before.

With ``--processes 1 2`` each method also runs in two processes at once, each on half the
blobs (its own prefix); blobs/s is all blobs over the wall time of the slowest process.
Beside it, the client's CPU per blob (every thread of every process, median): on this
2-core machine Azurite needs a core of its own at the ceiling, so the wall-clock ratio swings
with load (a round's ceiling varies by half), while the CPU figure says what the client costs.
Target: the port's download and upload at >= 80 % of the ceiling measured in the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # for tests.azurite, when run as a script

import aiohttp  # noqa: E402
from azure.storage.blob import ContainerSasPermissions, generate_container_sas  # noqa: E402

from shared.blobs.azure import AzureBlobStore  # noqa: E402
from shared.blobs.transfer import download_prefix, upload_directory  # noqa: E402
from tests.azurite import ACCOUNT_KEY, ACCOUNT_NAME, running_azurite  # noqa: E402

TARGET = 0.8
CONCURRENCY = 32
METHODS = ("http", "obstore", "sdk")


def write_files(root: Path, count: int, size: int) -> list[str]:
    rels = [f"part-{i % 16:02d}/blob-{i:06d}.bin" for i in range(count)]
    base = os.urandom(size)
    for i, rel in enumerate(rels):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((i.to_bytes(8, "big") + base)[:size])
    return rels


async def http_many(
    endpoint: str, sas: str, container: str, jobs: list[tuple[str, Path]], upload: bool
) -> None:
    slots = asyncio.Semaphore(CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(blob: str, file: Path) -> None:
            url = f"{endpoint}/{container}/{blob}?{sas}"
            async with slots:
                if upload:
                    headers = {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-08-06"}
                    async with session.put(url, data=file.read_bytes(), headers=headers) as r:
                        r.raise_for_status()
                else:
                    async with session.get(url) as r:
                        r.raise_for_status()
                        data = await r.read()
                    file.parent.mkdir(parents=True, exist_ok=True)
                    file.write_bytes(data)

        await asyncio.gather(*(one(blob, file) for blob, file in jobs))


def one_process(
    method: Literal["http", "obstore", "sdk"],
    direction: str,
    conn_str: str,
    endpoint: str,
    sas: str,
    container: str,
    prefix: str,
    rels: list[str],
    src: Path,
    work: Path,
    start_at: float,
) -> tuple[float, float]:
    """Runs in a (forked) process; returns its wall seconds from the common start and the
    CPU seconds it used meanwhile (all its threads)."""
    dest = work / uuid.uuid4().hex
    store = None
    if method != "http":
        store = AzureBlobStore.from_connection_string(
            conn_str, max_concurrency=CONCURRENCY, bulk_client=method
        )
        assert store.bulk_client == method
        # Loop, session and bulk client up (a directory listing goes through obstore), as a
        # worker's long-lived store is; the ceiling's aiohttp is imported here too.
        store.list_blobs(f"{container}/{prefix}/{rels[0].rpartition('/')[0]}/")
    while time.time() < start_at:
        time.sleep(0.001)
    t0, cpu0 = time.perf_counter(), time.process_time()
    if method == "http":
        if direction == "download":
            jobs = [(f"{prefix}/{rel}", dest / rel) for rel in rels]
        else:
            up = f"up-{uuid.uuid4().hex[:8]}"
            jobs = [(f"{up}/{prefix}/{rel}", src / rel) for rel in rels]
        asyncio.run(http_many(endpoint, sas, container, jobs, direction == "upload"))
    elif direction == "download":
        assert store is not None
        got = download_prefix(store, f"{container}/{prefix}", dest)
        assert len(got) == len(rels), len(got)
    else:
        assert store is not None
        # Beside the downloaded prefix, not under it.
        sent = upload_directory(store, src, f"{container}/up-{uuid.uuid4().hex[:8]}/{prefix}")
        assert len(sent) == len(rels), len(sent)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if store is not None:
        store.close()
    return seconds, cpu


def _child(args: tuple[Any, ...], results: Any) -> None:
    results.put(one_process(*args))


def measure(
    processes: int, method: str, direction: str, env: dict[str, Any]
) -> tuple[float, float]:
    """Blobs per second of ``method`` over all blobs, split among ``processes``, and the
    client's CPU milliseconds per blob (all processes)."""
    start_at = time.time() + 1.5
    ctx = multiprocessing.get_context("fork")
    results: Any = ctx.Queue()
    children = []
    for k in range(processes):
        prefix, rels, src = env["shards"][processes][k]
        args = (
            method,
            direction,
            env["conn_str"],
            env["endpoint"],
            env["sas"],
            env["container"],
            prefix,
            rels,
            src,
            env["work"],
            start_at,
        )
        child = ctx.Process(target=_child, args=(args, results))
        child.start()
        children.append(child)
    timings = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join()
    wall = max(seconds for seconds, _ in timings)
    cpu = sum(cpu for _, cpu in timings)
    return env["blobs"] / wall, 1000 * cpu / env["blobs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blobs", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as tmp,
        running_azurite(Path(tmp) / "az", in_memory=True) as az,
    ):
        work = Path(tmp) / "work"
        container = f"bench-{uuid.uuid4().hex[:8]}"
        sas = generate_container_sas(
            ACCOUNT_NAME,
            container,
            account_key=ACCOUNT_KEY,
            permission=ContainerSasPermissions(read=True, write=True, create=True, list=True),
            expiry=datetime.now(UTC) + timedelta(hours=3),
        )
        shards: dict[int, list[tuple[str, list[str], Path]]] = {}
        # The SDK here: obstore's runtime would not survive the fork of the measured processes.
        with AzureBlobStore.from_connection_string(
            az.connection_string, bulk_client="sdk"
        ) as store:
            for n in args.processes:
                per = args.blobs // n
                shards[n] = []
                for k in range(n):
                    src = Path(tmp) / f"src-{n}-{k}"
                    rels = write_files(src, per, args.size)
                    prefix = f"p{n}-{k}"
                    upload_directory(store, src, f"{container}/{prefix}")
                    shards[n].append((prefix, rels, src))
        env: dict[str, Any] = {
            "conn_str": az.connection_string,
            "endpoint": az.blob_endpoint,
            "sas": sas,
            "container": container,
            "shards": shards,
            "work": work,
            "blobs": args.blobs,
        }
        # Each process uploads its own shard's directory: the port's upload_directory sends
        # every file under it, so a shared directory would make it send n times the ceiling's.
        figures: dict[tuple[int, str, str], list[float]] = {}
        cpu_ms: dict[tuple[int, str, str], list[float]] = {}
        ratios: dict[tuple[int, str, str], list[float]] = {}
        for r in range(args.rounds):
            for n in args.processes:
                env["blobs"] = (args.blobs // n) * n
                for direction in ("download", "upload"):
                    order = METHODS[r % 3 :] + METHODS[: r % 3]
                    got = {m: measure(n, m, direction, env) for m in order}
                    for m, (value, ms) in got.items():
                        figures.setdefault((n, direction, m), []).append(value)
                        cpu_ms.setdefault((n, direction, m), []).append(ms)
                        if m != "http":
                            of_ceiling = value / got["http"][0]
                            ratios.setdefault((n, direction, m), []).append(of_ceiling)
            print(f"round {r + 1} done", flush=True)

    load = os.getloadavg()
    print(
        f"\n{args.blobs} blobs of {args.size} B, concurrency {CONCURRENCY}, {args.rounds} rounds;"
        f" load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores\n"
    )
    print(
        f"{'processes':<10}{'direction':<10}{'method':<9}{'blobs/s min':>12}{'median':>9}"
        f"{'max':>9}{'of ceiling (median)':>21}{'client CPU ms/blob':>20}"
    )
    for (n, direction, m), values in sorted(figures.items()):
        ratio = ratios.get((n, direction, m))
        share = f"{statistics.median(ratio):.0%}" if ratio else "ceiling"
        print(
            f"{n:<10}{direction:<10}{m:<9}{min(values):>12,.0f}{statistics.median(values):>9,.0f}"
            f"{max(values):>9,.0f}{share:>21}{statistics.median(cpu_ms[n, direction, m]):>20.2f}"
        )
    for (n, direction, m), ratio in sorted(ratios.items()):
        if m == "obstore":
            verdict = "met" if statistics.median(ratio) >= TARGET else "NOT met"
            print(f"target >= {TARGET:.0%} of the ceiling, {direction}, {n} process(es): {verdict}")


if __name__ == "__main__":
    main()
