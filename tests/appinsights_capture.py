"""A local stand-in for Application Insights' ingestion endpoint, for tests.

The azure-monitor exporters POST JSON arrays of envelopes (sometimes gzip-compressed) to
``{IngestionEndpoint}v2.1/track``. ``running_capture()`` serves that path on a free port of
127.0.0.1, keeps every envelope and answers as the real service does (200 with
``itemsReceived``/``itemsAccepted``), so the exporters neither retry nor store offline.
``Capture.connection_string`` points an exporter at it.
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

INSTRUMENTATION_KEY = "00000000-0000-0000-0000-000000000000"
TRACK_PATH = "/v2.1/track"

Envelope = dict[str, Any]


class Capture:
    """The envelopes received so far, with helpers to pick them by kind."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._lock = threading.Lock()
        self._envelopes: list[Envelope] = []
        self.posts = 0

    @property
    def connection_string(self) -> str:
        return (
            f"InstrumentationKey={INSTRUMENTATION_KEY};"
            f"IngestionEndpoint=http://127.0.0.1:{self.port}/"
        )

    def add(self, envelopes: list[Envelope]) -> None:
        with self._lock:
            self.posts += 1
            self._envelopes.extend(envelopes)

    @property
    def envelopes(self) -> list[Envelope]:
        with self._lock:
            return list(self._envelopes)

    def of_type(self, base_type: str) -> list[Envelope]:
        """``RequestData``, ``RemoteDependencyData``, ``EventData``, ``MessageData``,
        ``MetricData``, ``ExceptionData``."""
        return [e for e in self.envelopes if base_type_of(e) == base_type]

    def requests(self, name: str | None = None) -> list[Envelope]:
        found = self.of_type("RequestData")
        return found if name is None else [e for e in found if base_data(e).get("name") == name]

    def events(self, name: str | None = None) -> list[Envelope]:
        found = self.of_type("EventData")
        return found if name is None else [e for e in found if base_data(e).get("name") == name]

    def metrics(self, name: str) -> list[Envelope]:
        return [
            e
            for e in self.of_type("MetricData")
            if any(m.get("name") == name for m in base_data(e).get("metrics", []))
        ]


def base_type_of(envelope: Envelope) -> str | None:
    data = envelope.get("data") or {}
    base_type: str | None = data.get("baseType")
    return base_type


def base_data(envelope: Envelope) -> dict[str, Any]:
    data: dict[str, Any] = (envelope.get("data") or {}).get("baseData") or {}
    return data


def properties(envelope: Envelope) -> dict[str, str]:
    props: dict[str, str] = base_data(envelope).get("properties") or {}
    return props


def tag(envelope: Envelope, key: str) -> str | None:
    value: str | None = (envelope.get("tags") or {}).get(key)
    return value


def operation_id(envelope: Envelope) -> str | None:
    return tag(envelope, "ai.operation.id")


def cloud_role(envelope: Envelope) -> str | None:
    return tag(envelope, "ai.cloud.role")


def _decode_body(raw: bytes, encoding: str) -> Any:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        raw = gzip.decompress(raw)
    elif encoding == "deflate":
        raw = zlib.decompress(raw)
    elif encoding not in ("", "identity"):
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    return json.loads(raw)


def _handler(capture: Capture) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.split("?")[0] != TRACK_PATH:
                self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}"})
                return
            try:
                body = _decode_body(raw, self.headers.get("Content-Encoding", ""))
            except (ValueError, OSError) as exc:
                self._answer(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            envelopes = body if isinstance(body, list) else [body]
            capture.add(envelopes)
            count = len(envelopes)
            self._answer(
                HTTPStatus.OK, {"itemsReceived": count, "itemsAccepted": count, "errors": []}
            )

        def _answer(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def running_capture() -> Iterator[Capture]:
    """A capture server on a free port of 127.0.0.1 for the duration of the block."""
    capture = Capture()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(capture))
    capture.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="appinsights-capture", daemon=True)
    thread.start()
    try:
        yield capture
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
