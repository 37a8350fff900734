"""Secrets that must not reach logs or telemetry: keys in query strings and in headers.

Event Grid passes a webhook's key as ``?code=...``; SAS URLs carry ``sig``; clients send
``Authorization``. Whatever logs or traces a request (uvicorn's access log, OpenTelemetry's
``url.query``) sees these names with the value ``REDACTED``.
"""

from __future__ import annotations

import re
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


# In free text (a stage's error or log tail): ``name=value`` / ``name: value`` pairs whose name
# is sensitive (query strings, connection strings such as ``AccountKey=...;``, headers), bearer
# tokens, and the password of a URL's user info.
_TEXT_KEYS = "|".join(
    re.escape(name)
    for name in sorted(
        SENSITIVE_QUERY_KEYS
        | SENSITIVE_HEADERS
        | {"accountkey", "sharedaccesskey", "sharedaccesssignature", "passwd", "pwd"},
        key=len,
        reverse=True,
    )
)
_TEXT_PAIR = re.compile(
    rf"(?i)(?<![A-Za-z0-9_-])({_TEXT_KEYS})(\"?\s*[=:]\s*\"?)(?:Bearer\s+|Basic\s+)?([^\s&;,\"']+)"
)
_BEARER = re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s/@]+@")


def redact_text(text: str) -> str:
    """``text`` with the secrets it may hold replaced by REDACTED: values of sensitive names
    (``sig=...``, ``AccountKey=...``, ``Authorization: ...``, ``"password": "..."``), bearer
    tokens and the password in ``scheme://user:password@host``."""
    text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    text = _TEXT_PAIR.sub(rf"\1\2{REDACTED}", text)
    return _BEARER.sub(rf"\1 {REDACTED}", text)
