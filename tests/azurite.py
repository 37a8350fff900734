"""A real Azurite (the Azure Storage emulator, from npm) for tests and benchmarks.

``running_azurite(location)`` starts ``node_modules/.bin/azurite-blob`` on a free port of
127.0.0.1, waits until it accepts connections, yields an ``Azurite`` (connection string of the
well-known development account, port, pid) and kills it at the end. ``make install`` installs
Azurite (``npm ci``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"

# The development account every Azurite has (documented, not a secret).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_START_ATTEMPTS = 3  # a free port can be taken between choosing it and Azurite binding it


class AzuriteMissingError(RuntimeError):
    pass


class AzuriteStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class Azurite:
    port: int
    pid: int
    location: Path

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return connection_string(self.port)


def connection_string(port: int, *, key: str = ACCOUNT_KEY) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT_NAME};"
    )


def missing_reason() -> str | None:
    """Why Azurite cannot be started here, or None."""
    if os.access(AZURITE_BIN, os.X_OK):
        return None
    return (
        f"Azurite is not installed ({AZURITE_BIN} is missing): run `make install` "
        "(it runs `npm ci`, which installs Azurite from package-lock.json)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_azurite(location: Path, *, in_memory: bool = False) -> Iterator[Azurite]:
    """Start Azurite with its data under ``location``; stop it when the block ends.

    ``in_memory`` keeps blobs in memory instead of extent files under ``location``."""
    problem = missing_reason()
    if problem is not None:
        raise AzuriteMissingError(problem)
    location.mkdir(parents=True, exist_ok=True)
    last_error: AzuriteStartError | None = None
    for _ in range(_START_ATTEMPTS):
        port = free_port()
        log_path = location / f"azurite-{port}.log"
        args = [
            str(AZURITE_BIN),
            "--silent",
            "--disableTelemetry",  # else it tries to reach the internet
            "--skipApiVersionCheck",  # the SDK may be newer than the emulator
            "--loose",
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
        ]
        # Azurite refuses a --location together with --inMemoryPersistence.
        args += ["--inMemoryPersistence"] if in_memory else ["--location", str(location / "data")]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=location,
                start_new_session=True,  # its own process group: node and any children
            )
        try:
            _wait_until_listening(process, port, log_path)
        except AzuriteStartError as exc:
            _stop(process)
            last_error = exc
            continue
        try:
            yield Azurite(port=port, pid=process.pid, location=location)
        finally:
            _stop(process)
        return
    raise AzuriteStartError(f"Azurite did not start in {_START_ATTEMPTS} attempts: {last_error}")


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AzuriteStartError(
                f"Azurite exited with status {process.returncode}: {_tail(log_path)}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AzuriteStartError(
        f"Azurite did not listen on port {port} within {START_TIMEOUT_S:.0f} s: {_tail(log_path)}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT_S)


def _tail(log_path: Path, limit: int = 2000) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-limit:].strip() or "(empty log)"
