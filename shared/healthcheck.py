"""A worker's health: ``python -m shared.healthcheck FILE MAX_AGE_S`` (Docker's exec check),
or ``serve_health`` (an HTTP endpoint, for platforms whose probes are HTTP only, such as Azure
Container Apps).

The worker touches FILE after every receive attempt and lock renewal (``RETRAINER_HEALTH_FILE``);
a file older than MAX_AGE_S means its receive loop is stuck or dead.
"""

from __future__ import annotations

import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HEALTH_PATH = "/healthz"


def is_fresh(path: Path, max_age_s: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime <= max_age_s
    except FileNotFoundError:
        return False


def serve_health(
    port: int, path: Path, max_age_s: float, *, host: str = "0.0.0.0"
) -> ThreadingHTTPServer:
    """Answer ``GET /healthz`` on ``host:port`` in a daemon thread: 200 while ``path`` is at
    most ``max_age_s`` old, else 503. The answer says nothing else; ``shutdown()`` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != HEALTH_PATH:
                self._answer(HTTPStatus.NOT_FOUND, b"not found\n")
            elif is_fresh(path, max_age_s):
                self._answer(HTTPStatus.OK, b"ok\n")
            else:
                self._answer(HTTPStatus.SERVICE_UNAVAILABLE, b"receive loop stale\n")

        def _answer(self, status: HTTPStatus, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a probe every few seconds is not worth a log line

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m shared.healthcheck FILE MAX_AGE_S", file=sys.stderr)
        return 2
    path, max_age_s = Path(argv[0]), float(argv[1])
    if is_fresh(path, max_age_s):
        return 0
    print(f"{path} missing or older than {max_age_s:g} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
