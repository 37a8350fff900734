"""``/events/blob``: the Event Grid webhook for ``Microsoft.Storage.BlobCreated`` events.

* ``OPTIONS`` answers the CloudEvents 1.0 abuse-protection handshake: ``WebHook-Request-Origin``
  in, ``WebHook-Allowed-Origin`` out. It needs no key: it grants nothing, and Event Grid may
  not send custom delivery headers with it.
* ``POST`` takes an Event Grid-schema array, a CloudEvent or a CloudEvents batch. An Event Grid
  ``SubscriptionValidationEvent`` is answered with ``{"validationResponse": code}``. Anything
  else is recorded (``Coordinator.receive_blob_events``) and the runs that are due start.

Who may post: with ``trigger_webhook_secret`` set, a caller passing it (``?code=`` or the
``aeg-sas-key`` header, as Event Grid's webhook destination sends it); with API authentication
configured, a caller with a bearer token that is the static token or an Entra ID token for the
API's audience carrying the app role ``trigger_webhook_role`` (Event Grid's Entra-authenticated
delivery: ``AzureEventGridSecureWebhookSubscriber``). With neither configured, anyone (the
server then listens on 127.0.0.1 only).

Checks, in order: the size (413, ``coordinator.http.BodyLimits``: from ``Content-Length``
before anything else, or once the bytes read pass ``trigger_webhook_max_bytes``), the caller
(401), the content type (415), JSON and the events themselves (400 naming the problem; nothing
of the body is recorded). Events that no rule covers, and event types other than BlobCreated,
are answered 200 and ignored with a log line.
Event Grid does not retry a 400 or 413; it retries 401, 5xx and timeouts.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal
from uuid import UUID

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from coordinator.auth import AuthenticationError, AuthenticationUnavailable, Authenticator
from coordinator.http import query_secret
from coordinator.service import Coordinator
from coordinator.startup import Startup
from shared.errors import RetryableError
from shared.events import EVENT_LIMITS, MalformedEventError, decode_events
from shared.limits import truncate

log = logging.getLogger(__name__)

_RETRY_LATER = {"Retry-After": "5"}

PATH = "/events/blob"
KEY_HEADER = "aeg-sas-key"
KEY_QUERY = "code"
JSON_TYPES = frozenset(
    {"application/json", "application/cloudevents+json", "application/cloudevents-batch+json"}
)


@dataclass(frozen=True)
class WebhookConfig:
    secret: str | None = None
    auth: Authenticator = field(default_factory=Authenticator)
    # The app role of Event Grid's Entra-authenticated deliveries.
    role: str = "AzureEventGridSecureWebhookSubscriber"


class BlobEventsOut(BaseModel):
    received: int
    accepted: int
    duplicates: int
    ignored: int
    runs_started: list[UUID]


class ValidationOut(BaseModel):
    validationResponse: str  # Event Grid's name for it


_TEXT = EVENT_LIMITS.max_string_chars


class EventGridEvent(BaseModel):
    """An event in the Event Grid schema; a webhook receives a JSON array of them."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=_TEXT)
    topic: str | None = Field(default=None, max_length=_TEXT)
    subject: str = Field(
        max_length=_TEXT,
        examples=["/blobServices/default/containers/datasets/blobs/state-identifier/a.csv"],
    )
    eventType: str = Field(
        min_length=1, max_length=_TEXT, examples=["Microsoft.Storage.BlobCreated"]
    )
    eventTime: str = Field(max_length=_TEXT, examples=["2026-11-30T03:00:00Z"])
    data: dict[str, Any] = Field(
        description="BlobCreated: api, eTag, contentLength, url, ...; "
        "SubscriptionValidationEvent: validationCode, validationUrl"
    )
    dataVersion: str | None = Field(default=None, max_length=_TEXT)
    metadataVersion: str | None = Field(default=None, max_length=_TEXT)


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event in structured mode."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=_TEXT)
    source: str = Field(min_length=1, max_length=_TEXT)
    type: str = Field(min_length=1, max_length=_TEXT, examples=["Microsoft.Storage.BlobCreated"])
    subject: str | None = Field(default=None, max_length=_TEXT)
    time: str | None = Field(default=None, max_length=_TEXT)
    data: dict[str, Any] | None = None


def _request_body() -> dict[str, Any]:
    """The webhook's body in the OpenAPI document (the route reads the raw body itself)."""
    event_grid = EventGridEvent.model_json_schema()
    cloud_event = CloudEvent.model_json_schema()

    def batch(item: dict[str, Any]) -> dict[str, Any]:
        return {"type": "array", "items": item, "minItems": 1, "maxItems": EVENT_LIMITS.max_items}

    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"anyOf": [batch(event_grid), event_grid, cloud_event]}},
            "application/cloudevents+json": {"schema": cloud_event},
            "application/cloudevents-batch+json": {"schema": batch(cloud_event)},
        },
    }


def add_event_routes(app: FastAPI) -> None:
    @app.options(PATH, status_code=HTTPStatus.OK, responses={HTTPStatus.BAD_REQUEST: {}})
    def abuse_protection_handshake(request: Request) -> Response:
        origin = request.headers.get("webhook-request-origin")
        if not origin:
            return _problem(HTTPStatus.BAD_REQUEST, "WebHook-Request-Origin header is missing")
        log.info("CloudEvents webhook handshake from %s", origin)
        return Response(
            status_code=HTTPStatus.OK,
            headers={
                "WebHook-Allowed-Origin": origin,
                "WebHook-Allowed-Rate": "*",
                "Allow": "OPTIONS, POST",
            },
        )

    @app.post(
        PATH,
        response_model=BlobEventsOut | ValidationOut,
        responses={
            HTTPStatus.BAD_REQUEST: {"description": "not JSON, or a malformed event"},
            HTTPStatus.UNAUTHORIZED: {"description": "missing or wrong key"},
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE: {},
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE: {},
        },
        openapi_extra={"requestBody": _request_body()},
    )
    async def blob_events(request: Request) -> Response:
        config: WebhookConfig = request.app.state.webhook
        try:
            allowed = await run_in_threadpool(_caller_allowed, request, config)
        except AuthenticationUnavailable as exc:
            # Event Grid retries a 503.
            return _problem(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        if not allowed:
            return _problem(
                HTTPStatus.UNAUTHORIZED,
                f"missing or wrong key: pass it as ?{KEY_QUERY}=... or in the {KEY_HEADER}"
                " header, or send Event Grid's Entra ID token",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and content_type not in JSON_TYPES:
            return _problem(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"content type {content_type!r} is not one of {', '.join(sorted(JSON_TYPES))}",
            )
        # At most trigger_webhook_max_bytes: coordinator.http.BodyLimits answers 413 beyond.
        body = await request.body()
        try:
            events = decode_events(body)
        except MalformedEventError as exc:
            problem = truncate(str(exc), 1000)
            log.warning("refusing blob events: %s", problem)
            return _problem(HTTPStatus.BAD_REQUEST, problem)
        startup: Startup = request.app.state.startup
        coordinator: Coordinator = await run_in_threadpool(startup.get)
        try:
            report = await run_in_threadpool(coordinator.receive_blob_events, events)
        except RetryableError as exc:
            # Event Grid retries a 503: nothing was recorded.
            return _problem(
                HTTPStatus.SERVICE_UNAVAILABLE, truncate(str(exc), 1000), headers=_RETRY_LATER
            )
        if report.validations:
            validation = report.validations[0]
            log.info(
                "Event Grid subscription validation %s answered (url %s)",
                validation.event_id,
                validation.validation_url,
            )
            return JSONResponse({"validationResponse": validation.validation_code})
        runs_started: list[UUID] = []
        if report.accepted:
            try:
                runs = await run_in_threadpool(coordinator.fire_due_triggers)
                runs_started = [run.id for run in runs]
            except Exception:
                # The events are recorded: the triggers loop starts their runs.
                log.exception("could not start due runs now; the triggers loop will")
        out = BlobEventsOut(
            received=report.received,
            accepted=report.accepted,
            duplicates=report.duplicates,
            ignored=report.ignored,
            runs_started=runs_started,
        )
        return JSONResponse(out.model_dump(mode="json"))


def _caller_allowed(request: Request, config: WebhookConfig) -> bool:
    """The shared secret, or a bearer token (static, or Entra ID with the webhook role)."""
    if config.secret is None and not config.auth.enabled:
        return True
    if config.secret is not None and _key_ok(request, config.secret):
        return True
    authorization = request.headers.get("authorization")
    if not authorization or not config.auth.enabled:
        return False
    try:
        principal = config.auth.authenticate(authorization)
    except AuthenticationError as exc:
        log.warning("refusing blob events: %s", exc.reason)
        return False
    return principal.static or config.role in principal.roles


def _key_ok(request: Request, secret: str) -> bool:
    given = query_secret(request, KEY_QUERY) or request.headers.get(KEY_HEADER)
    return given is not None and hmac.compare_digest(given.encode(), secret.encode())


def _problem(
    status: HTTPStatus, detail: str, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)
