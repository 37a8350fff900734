"""Who may call the coordinator's API.

Callers send ``Authorization: Bearer <token>``, where the token is either

* the static token (``RETRAINER_API_TOKEN``, compared in constant time), for compose and local
  stacks; it holds every role; or
* a Microsoft Entra ID access token (``RETRAINER_AUTH_TENANT_ID`` + ``RETRAINER_AUTH_AUDIENCE``):
  RS256-signed by one of the tenant's published keys (its JWKS, fetched and cached by PyJWT),
  issued by that tenant (v1.0 or v2.0 issuer), for the API's audience (its client id, or its
  application id URI), unexpired. Its ``roles`` claim holds the app roles the caller was
  assigned: ``runs.read`` to read, ``runs.write`` to start, cancel and retry runs (and read).

Reading (GET, HEAD) needs ``runs.read``; anything else ``runs.write``: a route added later is
protected by default. Public: the health probes, the dashboard's pages and files (static
shells; the data they show comes from the API, with the token), the OpenAPI docs, and the Event
Grid webhook, which checks its own shared secret or Event Grid's Entra token
(``coordinator/webhook.py``).

With neither the static token nor Entra ID configured the API is open, and the server refuses
to listen beyond the loopback interface (``check_exposure``).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request
from starlette.routing import Match

from shared.errors import ConfigurationError

if TYPE_CHECKING:
    from coordinator.settings import CoordinatorSettings

log = logging.getLogger(__name__)

READ_ROLE = "runs.read"
WRITE_ROLE = "runs.write"
READ_METHODS = frozenset({"GET", "HEAD"})
# Paths anyone may call; everything else needs a token once authentication is configured.
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/", "/docs", "/redoc", "/openapi.json", "/events/blob"}
)
PUBLIC_PREFIXES = ("/dashboard",)
# Entra ID access tokens are RS256: any other algorithm (none, HS256 with the public key as a
# secret, ...) is refused before the signature is looked at.
ALGORITHMS = ("RS256",)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


class AuthenticationError(Exception):
    """The request carries no usable credentials (401); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthenticationUnavailable(Exception):
    """The tenant's signing keys could not be fetched (503: the caller may retry)."""


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[str]
    # The static token: every role.
    static: bool = False

    def allows(self, role: str) -> bool:
        if self.static or role in self.roles:
            return True
        return role == READ_ROLE and WRITE_ROLE in self.roles


class EntraTokenValidator:
    """Validates Entra ID access tokens for one tenant and audience against its JWKS."""

    def __init__(
        self,
        *,
        tenant_id: str,
        audience: str,
        jwks_url: str | None = None,
        authority: str = "https://login.microsoftonline.com",
        leeway_s: float = 60.0,
    ) -> None:
        import jwt

        self._jwt = jwt
        self.tenant_id = tenant_id
        self._jwks = jwt.PyJWKClient(
            jwks_url or f"{authority}/{tenant_id}/discovery/v2.0/keys",
            cache_keys=True,
            lifespan=3600,
            timeout=10,
        )
        # A v2.0 token's audience is the client id; a v1.0 token's the application id URI,
        # api://<client id> unless the app registration names another.
        self._audiences = [audience]
        if _GUID.match(audience):
            self._audiences.append(f"api://{audience}")
        self._issuers = [f"{authority}/{tenant_id}/v2.0", f"https://sts.windows.net/{tenant_id}/"]
        self._leeway_s = leeway_s

    def validate(self, token: str) -> Principal:
        jwt = self._jwt
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"not a JWT: {exc}") from None
        if header.get("alg") not in ALGORITHMS:
            raise AuthenticationError(f"token algorithm {header.get('alg')!r} is not accepted")
        try:
            key = self._jwks.get_signing_key(str(header.get("kid")))
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthenticationUnavailable(
                f"cannot fetch the tenant's signing keys: {exc}"
            ) from exc
        except jwt.PyJWKClientError:
            raise AuthenticationError("token signed by a key the tenant does not publish") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=list(ALGORITHMS),
                audience=self._audiences,
                issuer=self._issuers,
                leeway=self._leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("token expired") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("token issued by another tenant") from None
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"invalid token: {exc}") from None
        roles = claims.get("roles", [])
        if not isinstance(roles, list):
            raise AuthenticationError("token roles claim is not a list")
        subject = claims.get("oid") or claims.get("sub") or "?"
        return Principal(subject=str(subject), roles=frozenset(str(role) for role in roles))


class Authenticator:
    """The static token and/or an Entra ID validator; ``enabled`` when either is set."""

    def __init__(
        self, *, static_token: str | None = None, entra: EntraTokenValidator | None = None
    ) -> None:
        self._static_token = static_token.encode() if static_token else None
        self._entra = entra

    @classmethod
    def from_settings(cls, settings: CoordinatorSettings) -> Authenticator:
        token = settings.api_token.get_secret_value() if settings.api_token else None
        entra = None
        if settings.auth_tenant_id or settings.auth_audience:
            if not (settings.auth_tenant_id and settings.auth_audience):
                raise ConfigurationError(
                    "Entra ID authentication needs both RETRAINER_AUTH_TENANT_ID and"
                    " RETRAINER_AUTH_AUDIENCE"
                )
            entra = EntraTokenValidator(
                tenant_id=settings.auth_tenant_id,
                audience=settings.auth_audience,
                jwks_url=settings.auth_jwks_url,
            )
        return cls(static_token=token, entra=entra)

    @property
    def enabled(self) -> bool:
        return self._static_token is not None or self._entra is not None

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value; raises AuthenticationError
        (or AuthenticationUnavailable). May fetch the tenant's keys: call it off the loop."""
        if not authorization:
            raise AuthenticationError("missing Authorization: Bearer <token> header")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("expected Authorization: Bearer <token>")
        if self._static_token is not None and hmac.compare_digest(
            token.encode(), self._static_token
        ):
            return Principal(subject="static-token", roles=frozenset(), static=True)
        if self._entra is None:
            raise AuthenticationError("wrong token")
        return self._entra.validate(token)


def is_public(request: Request) -> bool:
    path = _route_path(request)
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _route_path(request: Request) -> str:
    """The matched route's path template (``/runs/{run_id}``), so a path with odd
    characters cannot pass for a public one; the raw path when nothing matched."""
    route = request.scope.get("route")
    if route is not None:
        return str(getattr(route, "path", request.url.path))
    for candidate in request.app.router.routes:
        match, _ = candidate.matches(request.scope)
        if match is Match.FULL:
            return str(getattr(candidate, "path", request.url.path))
    return request.url.path


def authorize(request: Request) -> None:
    """The app-wide dependency: 401 without valid credentials, 403 without the role."""
    auth: Authenticator | None = getattr(request.app.state, "auth", None)
    if auth is None:
        raise HTTPException(HTTPStatus.SERVICE_UNAVAILABLE, "the API is starting")
    if not auth.enabled or is_public(request):
        return
    try:
        principal = auth.authenticate(request.headers.get("authorization"))
    except AuthenticationError as exc:
        raise HTTPException(
            HTTPStatus.UNAUTHORIZED,
            exc.reason,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None
    except AuthenticationUnavailable as exc:
        log.warning("%s", exc)
        raise HTTPException(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
    role = READ_ROLE if request.method in READ_METHODS else WRITE_ROLE
    if not principal.allows(role):
        raise HTTPException(HTTPStatus.FORBIDDEN, f"the token does not carry the app role {role}")
    # Who made the request, for what records it (a manual promotion's promoted_by).
    request.state.principal = principal


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: CoordinatorSettings) -> None:
    """Refuse to serve an open API beyond this machine: raises ConfigurationError when the
    host is not a loopback address and neither the static token nor Entra ID is configured."""
    if is_loopback(settings.host):
        return
    if settings.api_token is None and not (settings.auth_tenant_id and settings.auth_audience):
        raise ConfigurationError(
            f"refusing to listen on {settings.host}: the API would be open to the network. Set"
            " RETRAINER_API_TOKEN, or RETRAINER_AUTH_TENANT_ID and RETRAINER_AUTH_AUDIENCE"
            " (Entra ID), or listen on 127.0.0.1"
        )
