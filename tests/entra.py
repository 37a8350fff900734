"""A stand-in Microsoft Entra ID tenant for tests: RSA signing keys, their JWKS served over HTTP
on 127.0.0.1 (what ``RETRAINER_AUTH_JWKS_URL`` points the coordinator at), and access tokens
shaped like Entra's (v2.0 issuer, ``aud``, ``roles``, ``oid``, ``kid`` header).

Nothing here reaches the internet; the coordinator validates these tokens with the same PyJWT
code that validates real ones.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

AUTHORITY = "https://login.microsoftonline.com"


def new_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class FakeTenant:
    tenant_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    audience: str = field(default_factory=lambda: str(uuid.uuid4()))
    kid: str = "test-key-1"
    key: RSAPrivateKey = field(default_factory=new_key)
    jwks_url: str = ""
    # How many times the JWKS was fetched.
    fetches: int = 0

    @property
    def issuer(self) -> str:
        return f"{AUTHORITY}/{self.tenant_id}/v2.0"

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def token(
        self,
        roles: Sequence[str] = (),
        *,
        audience: str | None = None,
        issuer: str | None = None,
        expires_in_s: float = 3600.0,
        key: RSAPrivateKey | None = None,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload = {
            "aud": audience or self.audience,
            "iss": issuer or self.issuer,
            "iat": now - 60,
            "nbf": now - 60,
            "exp": int(now + expires_in_s),
            "tid": self.tenant_id,
            "oid": str(uuid.uuid4()),
            "roles": list(roles),
            **claims,
        }
        return jwt.encode(
            payload, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid}
        )


@contextmanager
def serving_tenant(tenant: FakeTenant | None = None) -> Iterator[FakeTenant]:
    """The tenant with its JWKS at ``tenant.jwks_url`` (127.0.0.1, a free port) for the block."""
    served = tenant or FakeTenant()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.fetches += 1
            body = json.dumps(served.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served.jwks_url = f"http://127.0.0.1:{server.server_address[1]}/{served.tenant_id}/keys"
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
