"""Aggregation-style throughput of the Azure blob adapter over many small blobs, on Azurite.

An aggregation stage reads a whole "directory" of small blobs. For each concurrency level this
uploads N blobs of SIZE bytes under a fresh prefix (``upload_many``, as ``upload_directory``
does), lists the prefix, downloads them without touching the disk (``download_many``), and
runs ``download_prefix`` into a temp dir (list + download + write the files: the number an
aggregation worker sees). Reported per phase: blobs/s, and CPU milliseconds per blob of this
process's two busy threads (the store's event-loop thread, where the SDK and aiohttp run, and
the calling thread, which writes the files) and of Azurite.

``--diagnose`` adds the ceiling without the SDK: anonymous GETs of the same blobs straight
through aiohttp (the container made public), which is what Azurite can serve.
``--profile`` adds a cProfile of the store's loop thread during ``download_many``, summed by
package, to show where the SDK spends its time.

    .venv/bin/python bench/bench_blob_aggregation.py --blobs 5000 --json bench-blob.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import json
import os
import platform
import pstats
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # for tests.azurite, when run as a script

import aiohttp  # noqa: E402
import azure.storage.blob  # noqa: E402
from azure.storage.blob import (  # noqa: E402
    BlobServiceClient,
    ContainerSasPermissions,
    generate_container_sas,
)

from shared.blobs.azure import AzureBlobStore  # noqa: E402
from shared.blobs.transfer import download_prefix  # noqa: E402
from tests.azurite import running_azurite  # noqa: E402

T = TypeVar("T")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PHASES = ["upload", "list", "download", "download_prefix"]


class CpuClocks:
    """CPU seconds used so far by the calling thread, the store's loop thread and Azurite."""

    def __init__(self, azurite_pid: int | None) -> None:
        self.azurite_pid = azurite_pid
        self.loop_clock: int | None = None

    def attach(self) -> None:
        """Find the store's loop thread (it starts at the store's first call)."""
        (loop,) = [t for t in threading.enumerate() if t.name.startswith("blob-loop")]
        assert loop.ident is not None
        self.loop_clock = time.pthread_getcpuclockid(loop.ident)

    def read(self) -> dict[str, float | None]:
        return {
            "caller": time.thread_time(),
            "loop": time.clock_gettime(self.loop_clock) if self.loop_clock is not None else None,
            "azurite": self._azurite(),
        }

    def _azurite(self) -> float | None:
        if self.azurite_pid is None:
            return None
        try:
            fields = Path(f"/proc/{self.azurite_pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def measure(clocks: CpuClocks, blobs: int, action: Callable[[], T]) -> tuple[T, dict[str, Any]]:
    before = clocks.read()
    start = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - start
    after = clocks.read()
    row: dict[str, Any] = {"seconds": seconds, "blobs_per_s": blobs / seconds}
    for key in ("loop", "caller", "azurite"):
        b, a = before[key], after[key]
        row[f"{key}_cpu_ms_per_blob"] = None if a is None or b is None else (a - b) / blobs * 1e3
    return result, row


def payload(size: int) -> Iterator[bytes]:
    counter = 0
    base = os.urandom(size)
    while True:
        counter += 1
        tag = counter.to_bytes(8, "big")
        yield (tag + base)[:size] if size >= 8 else base


def run_level(
    conn_str: str, azurite_pid: int | None, blobs: int, size: int, concurrency: int
) -> dict[str, Any]:
    container = f"bench-c{concurrency}-{uuid.uuid4().hex[:12]}"
    prefix = f"{container}/agg"
    data = payload(size)
    with AzureBlobStore.from_connection_string(conn_str, max_concurrency=concurrency) as store:
        # Warm up: the loop, the container and a full pool of connections.
        warm = [(f"{container}/warm/{i:05d}", next(data)) for i in range(2 * concurrency)]
        store.upload_many(warm)
        for _ in store.download_many([name for name, _ in warm]):
            pass
        clocks = CpuClocks(azurite_pid)
        clocks.attach()

        names = [f"{prefix}/part-{i % 16:02d}/blob-{i:06d}.json" for i in range(blobs)]
        _, upload = measure(
            clocks, blobs, lambda: store.upload_many(zip(names, data, strict=False))
        )
        listed, listing = measure(clocks, blobs, lambda: list(store.list_blobs(f"{prefix}/")))
        assert len(listed) == blobs, f"listed {len(listed)} of {blobs}"

        def download_only() -> int:
            return sum(len(c.data) for c in store.download_many(names))

        total, download = measure(clocks, blobs, download_only)
        assert total == blobs * size
        with tempfile.TemporaryDirectory(prefix="bench-blob-") as tmp:
            etags, to_files = measure(
                clocks, blobs, lambda: download_prefix(store, prefix, Path(tmp))
            )
            assert len(etags) == blobs
    return {
        "concurrency": concurrency,
        "container": container,
        "upload": upload,
        "list": listing,
        "download": download,
        "download_prefix": to_files,
    }


def raw_ceiling(
    conn_str: str, azurite_pid: int | None, container: str, concurrency: int
) -> dict[str, Any]:
    """GETs of the level's blobs through bare aiohttp, no SDK: anonymous (the container made
    public) and with a container SAS (the service checks a signature, as for the SDK)."""
    sdk = BlobServiceClient.from_connection_string(conn_str)
    client = sdk.get_container_client(container)
    client.set_container_access_policy(signed_identifiers={}, public_access="container")
    names = [b.name for b in client.list_blobs(name_starts_with="agg/")]
    base = client.url.rstrip("/")
    sas = generate_container_sas(
        sdk.account_name,  # type: ignore[arg-type]
        container,
        account_key=sdk.credential.account_key,
        permission=ContainerSasPermissions(read=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    sdk.close()

    async def fetch_all(query: str) -> None:
        semaphore = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def get(name: str) -> int:
                async with semaphore, session.get(f"{base}/{name}{query}") as response:
                    response.raise_for_status()
                    return len(await response.read())

            await asyncio.gather(*(get(n) for n in names))

    clocks = CpuClocks(azurite_pid)
    result = {}
    for label, query in (("anonymous", ""), ("sas", f"?{sas}")):
        asyncio.run(fetch_all(query))  # warm up
        _, row = measure(clocks, len(names), lambda q=query: asyncio.run(fetch_all(q)))  # type: ignore[misc]
        result[label] = row
    return result


def profile_download(conn_str: str, container: str, concurrency: int, top: int) -> list[str]:
    """cProfile of the store's loop thread while ``download_many`` runs, by package."""
    sdk = BlobServiceClient.from_connection_string(conn_str)
    names = [
        f"{container}/{b.name}"
        for b in sdk.get_container_client(container).list_blobs(name_starts_with="agg/")
    ]
    sdk.close()
    profiler = cProfile.Profile()
    with AzureBlobStore.from_connection_string(conn_str, max_concurrency=concurrency) as store:
        for _ in store.download_many(names[: 2 * concurrency]):
            pass
        # Reaches into the adapter: cProfile only sees the thread that enabled it.
        loop = store._runtime_now()._loop
        asyncio.run_coroutine_threadsafe(_call(profiler.enable), loop).result()
        start = time.perf_counter()
        for _ in store.download_many(names):
            pass
        seconds = time.perf_counter() - start
        asyncio.run_coroutine_threadsafe(_call(profiler.disable), loop).result()
    by_package: collections.Counter[str] = collections.Counter()
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _line, function), (_cc, _nc, own, _cum, _callers) in stats.items():
        by_package[_package(filename, function)] += own
    total = sum(by_package.values())
    lines = [
        f"loop thread under cProfile: {len(names) / seconds:,.0f} blobs/s "
        f"(profiling slows it), own time by package:"
    ]
    for package, own in by_package.most_common(top):
        lines.append(f"  {own / total:6.1%}  {own / len(names) * 1e3:6.3f} ms/blob  {package}")
    return lines


async def _call(function: Callable[[], object]) -> None:
    function()


def _package(filename: str, function: str) -> str:
    if filename.startswith(("~", "<")):
        if "socket" in function or "select" in function or "epoll" in function:
            return "syscalls (socket send/recv, epoll)"
        return "builtins"
    marker = "site-packages/"
    if marker in filename:
        parts = filename.split(marker, 1)[1].split("/")
        if parts[:2] == ["azure", "storage"]:
            sub = parts[3] if len(parts) > 4 else ""
            return "azure.storage.blob" + (f" ({sub})" if sub in ("_generated", "_shared") else "")
        if parts[0] == "azure":
            return "azure.core" + (" (policies)" if "policies" in parts else "")
        return parts[0].removesuffix(".py")
    if "/shared/" in filename:
        return "retrainer adapter"
    if "asyncio" in filename:
        return "asyncio"
    return "python stdlib"


def print_report(result: dict[str, Any]) -> None:
    config = result["config"]
    print(
        f"Azure blob adapter on Azurite ({config['azurite']}): {config['blobs']:,} blobs of "
        f"{config['size']} bytes, {config['cpus']} CPUs, Python {config['python']}, "
        f"azure-storage-blob {config['azure_storage_blob']}"
    )
    print("blobs/s (CPU ms per blob: store loop thread / calling thread / Azurite)")
    print(f"{'concurrency':>11}" + "".join(f"{p:>30}" for p in PHASES))
    for level in result["levels"]:
        cells = ""
        for phase in PHASES:
            row = level[phase]
            cpu = "/".join(_ms(row[f"{k}_cpu_ms_per_blob"]) for k in ("loop", "caller", "azurite"))
            cells += f"{row['blobs_per_s']:>12,.0f} ({cpu:>14})"
        print(f"{level['concurrency']:>11}{cells}")
    for level in result["levels"]:
        if "raw_get" in level:
            raw = level["raw_get"]
            cells = ", ".join(
                f"{label} {row['blobs_per_s']:,.0f}/s (client {row['caller_cpu_ms_per_blob']:.2f}"
                f" / Azurite {_ms(row['azurite_cpu_ms_per_blob'])} CPU ms per blob)"
                for label, row in raw.items()
            )
            print(f"no SDK, bare aiohttp GETs at concurrency {level['concurrency']}: {cells}")
    for line in result.get("profile", []):
        print(line)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blobs", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per blob")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument(
        "--connection-string", help="an existing account (default: start a fresh Azurite)"
    )
    parser.add_argument(
        "--in-memory", action="store_true", help="Azurite keeps blobs in memory, not on disk"
    )
    parser.add_argument("--diagnose", action="store_true", help="add the raw aiohttp ceiling")
    parser.add_argument("--profile", action="store_true", help="profile the loop thread")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    levels = []
    profile: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-azurite-") as tmp:
        if args.connection_string:
            emulator = None
            conn_str, azurite_pid = args.connection_string, None
        else:
            emulator = running_azurite(Path(tmp), in_memory=args.in_memory)
            running = emulator.__enter__()
            conn_str, azurite_pid = running.connection_string, running.pid
        try:
            for concurrency in args.concurrency:
                level = run_level(conn_str, azurite_pid, args.blobs, args.size, concurrency)
                if args.diagnose:
                    level["raw_get"] = raw_ceiling(
                        conn_str, azurite_pid, level["container"], concurrency
                    )
                levels.append(level)
            if args.profile:
                profile = profile_download(
                    conn_str, levels[-1]["container"], args.concurrency[-1], top=14
                )
        finally:
            if emulator is not None:
                emulator.__exit__(None, None, None)

    result = {
        "config": {
            "blobs": args.blobs,
            "size": args.size,
            "azurite": (
                "external"
                if args.connection_string
                else ("in memory" if args.in_memory else "on disk")
            ),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "azure_storage_blob": azure.storage.blob.__version__,
            "aiohttp": aiohttp.__version__,
            "platform": platform.platform(),
        },
        "levels": levels,
        "profile": profile,
    }
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
