"""What every request to the coordinator goes through, whatever its route.

* ``SecretsHiddenApp`` — the FastAPI app with the secrets of a request's query string (Event
  Grid's ``?code=``, a SAS ``sig``, ...) replaced by ``REDACTED`` before anything else sees
  the request: uvicorn's access log and FastAPI's and OpenTelemetry's spans (``url.query``,
  i.e. Application Insights) read the same ASGI scope. The webhook reads the real value with
  ``query_secret``.
* ``BodyLimits`` — every request body is bounded, per path: 413 from its declared length before
  the route runs, or as soon as the bytes read pass the limit (a body sent in chunks).
* ``UnexpectedErrors`` — an exception no handler knows is answered 500 with an error id (the
  request's trace id when it is traced) that the log line carries too, and the connection stays
  open: Starlette's own last resort re-raises, and the server then drops the connection.
* Handlers for errors every route may meet: a store, bus or blob store that is down or full
  (``RetryableError``) is 503 with ``Retry-After``; a request FastAPI could not validate is
  422 without echoing a large input back.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import RetryableError
from shared.limits import MAX_ERROR_CHARS, truncate
from shared.redaction import redact_query
from shared.telemetry import current_span, parse_traceparent

log = logging.getLogger(__name__)

# Where the hidden query values wait for the route that needs them (an ASGI scope key).
_HIDDEN = "retrainer.hidden_query"
# Inputs longer than this (as JSON) are not echoed back in a 422.
_ECHO_LIMIT = 200


class SecretsHiddenApp(FastAPI):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("query_string"):
            # In place: the server logs the request from this very dict once it is answered.
            query, hidden = redact_query(scope["query_string"].decode("latin-1"))
            if hidden:
                scope["query_string"] = query.encode("latin-1")
                scope[_HIDDEN] = hidden
        await super().__call__(scope, receive, send)


def query_secret(request: Request, name: str) -> str | None:
    """A sensitive query parameter's real value (``request.query_params`` shows REDACTED)."""
    hidden: dict[str, str] = request.scope.get(_HIDDEN, {})
    return hidden.get(name, request.query_params.get(name))


class BodyLimits:
    """413 for a body over ``limits[path]`` (``default`` for other paths)."""

    def __init__(self, app: ASGIApp, *, default: int, limits: Mapping[str, int]) -> None:
        self.app = app
        self._default = default
        self._limits = dict(limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limits.get(scope["path"], self._default)
        detail = f"request body larger than {limit} bytes"
        if _declared_length(scope) > limit:
            response = JSONResponse(
                {"detail": detail}, status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            )
            await response(scope, receive, send)
            return
        read = 0

        async def limited() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > limit:
                    # An HTTPException passes FastAPI's body parsing and its handlers as is.
                    raise HTTPException(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, detail)
            return message

        await self.app(scope, limited, send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


class UnexpectedErrors:
    """An unexpected exception becomes a 500 with an error id; the connection stays open."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            error_id = _error_id()
            log.error(
                "unexpected error %s answering %s %s",
                error_id,
                scope.get("method"),
                scope.get("path"),
                exc_info=exc,
            )
            current_span().fail(type(exc).__name__, truncate(str(exc), 500))
            if started:
                raise  # half an answer is out: only closing the connection can say so
            response = JSONResponse(
                {"detail": "internal error", "error_id": error_id},
                status_code=HTTPStatus.INTERNAL_SERVER_ERROR,
                headers={"X-Error-Id": error_id},
            )
            await response(scope, receive, send)


def add_common_error_handlers(app: FastAPI, *, retry_after_s: int) -> None:
    @app.exception_handler(RetryableError)
    def unavailable(request: Request, exc: RetryableError) -> JSONResponse:
        log.warning(
            "%s %s answered 503: %s", request.method, request.url.path, truncate(str(exc), 500)
        )
        return JSONResponse(
            {"detail": truncate(str(exc), MAX_ERROR_CHARS)},
            status_code=HTTPStatus.SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(retry_after_s)},
        )

    @app.exception_handler(RequestValidationError)
    def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": [_bounded(error) for error in exc.errors()]},
            status_code=HTTPStatus.UNPROCESSABLE_ENTITY,
        )


def _bounded(error: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's error without an echo of a large input (a 50 MiB parameter, say)."""
    shown = {key: value for key, value in error.items() if key not in ("input", "ctx", "url")}
    shown["msg"] = truncate(str(error.get("msg", "")), 500)
    shown["loc"] = [truncate(str(part), 100) for part in error.get("loc", ())]
    try:
        # allow_nan=False: a NaN echoed back would make the 422 itself unrenderable.
        echoed = json.dumps(jsonable_encoder(error.get("input")), allow_nan=False)
    except (TypeError, ValueError):
        echoed = None
    if echoed is not None and len(echoed) <= _ECHO_LIMIT:
        shown["input"] = json.loads(echoed)
    return shown


def _error_id() -> str:
    """The request's trace id when it is traced (App Insights' operation_Id), else random."""
    traced = parse_traceparent(current_span().traceparent)
    return f"{traced.trace_id:032x}" if traced else uuid.uuid4().hex
