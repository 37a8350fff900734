"""Secrets that must not reach logs or telemetry: keys in query strings and in headers.

Event Grid passes a webhook's key as ``?code=...``; SAS URLs carry ``sig``; clients send
``Authorization``. Whatever logs or traces a request (uvicorn's access log, OpenTelemetry's
``url.query``) sees these names with the value ``REDACTED``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

REDACTED = "REDACTED"

# Compared case-insensitively.
SENSITIVE_QUERY_KEYS = frozenset(
    {
        "code",
        "sig",
        "signature",
        "key",
        "apikey",
        "api-key",
        "api_key",
        "x-api-key",
        "subscription-key",
        "token",
        "access_token",
        "id_token",
        "refresh_token",
        "client_secret",
        "secret",
        "password",
        "awsaccesskeyid",
        "x-goog-signature",
    }
)
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "aeg-sas-key", "x-api-key"}
)


def is_sensitive_query_key(name: str) -> bool:
    return name.lower() in SENSITIVE_QUERY_KEYS


def redact_query(query: str) -> tuple[str, dict[str, str]]:
    """``query`` with every sensitive value replaced, and the values it held (by name; the
    last one where a name repeats). Unchanged, and no values, when nothing was sensitive."""
    pairs = parse_qsl(query, keep_blank_values=True)
    hidden = {name: value for name, value in pairs if is_sensitive_query_key(name)}
    if not hidden:
        return query, {}
    shown = [(name, REDACTED if name in hidden else value) for name, value in pairs]
    return urlencode(shown), hidden
