"""A fake Azure ML workspace at the HTTP boundary, for a real ``azure.ai.ml.MLClient``.

``FakeAzureML`` is an azure-core ``HttpTransport``: ``fake_ml_client(fake)`` builds a real
``MLClient`` whose every service client sends through it, so job specs are built, validated and
serialized by the SDK itself and only the HTTP exchange is played here. It serves the part of the
Azure ML REST API (``management.azure.com``, Microsoft.MachineLearningServices) that
``AzureMLTrainingCompute`` reaches:

* ``GET  .../jobs/{name}``                     the stored job, or 404 ``UserError``;
* ``PUT  .../jobs/{name}``                     stores the body, answers 201 with status NotStarted;
* ``POST .../jobs/{name}/cancel``              202 + ``Location`` (an LRO), status CancelRequested;
* ``GET  .../locations/{loc}/mfeOperationResults/{id}``  the cancel LRO: 200, done;
* ``GET  .../environments/{name}/versions``    versions, newest first (``name@latest``);
* ``GET  .../codes/{name}/versions?hash=``     a code snapshot with that content hash, if any;
* ``GET  .../codes/{name}/versions/{version}`` a code version;
* ``GET  .../data``, ``.../data/{name}``, ``.../data/{name}/versions[/{version}]``: data assets
  (containers with ``latestVersion``/``nextVersion``, versions); ``PUT .../data/{name}/versions/
  {version}`` stores one (409 if that version exists with another ``dataUri``);
* ``GET  .../datastores/{name}``               404 (the SDK then skips reading a remote MLTable).

Not served: ``POST .../codes/{name}/versions/{version}/startPendingUpload``, the start of a new
code snapshot upload, after which the SDK writes the files to blob storage with its own storage
client (not through this transport). Tests use a registered code asset, or set
``snapshots_present`` so the SDK finds the snapshot by its content hash and uploads nothing.

Every request is recorded (``requests``: method, path, api-version, query, JSON body, headers).
A request nothing here answers, or one that never reaches the transport, fails loudly: the fake
raises ``UnexpectedRequest`` and remembers it in ``unexpected`` (the SDK wraps some errors, so
tests also check that list), and ``refuse_network`` turns any socket connect or DNS lookup into an
error, so nothing escapes to a real endpoint.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, NoReturn
from urllib.parse import parse_qs, unquote, urlsplit

from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest, HttpResponse
from azure.core.utils import CaseInsensitiveDict

SUBSCRIPTION = "00000000-0000-4000-8000-00000000a2e1"
RESOURCE_GROUP = "rg-retrainer"
WORKSPACE = "mlw-retrainer"
TENANT = "11111111-1111-4111-8111-111111111111"
LOCATION = "westeurope"
ARM = "https://management.azure.com"
PROVIDER = "Microsoft.MachineLearningServices"


def workspace_id(
    subscription: str = SUBSCRIPTION,
    resource_group: str = RESOURCE_GROUP,
    workspace: str = WORKSPACE,
) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
        f"/providers/{PROVIDER}/workspaces/{workspace}"
    )


class UnexpectedRequest(AssertionError):
    """A request the fake does not serve: the adapter (or the SDK) did something unforeseen."""


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # relative to the workspace when under it, else the URL path
    api_version: str | None
    query: Mapping[str, str]
    body: Any  # parsed JSON, or None
    headers: Mapping[str, str]


@dataclass
class _Fault:
    method: str | None
    path: re.Pattern[str] | None
    status: int = 0
    exception: Exception | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    times: int = 1


class FakeCredential:
    """A ``TokenCredential`` handing out an unsigned JWT (the SDK reads ``tid`` from it)."""

    def __init__(self, tenant_id: str = TENANT) -> None:
        self.tenant_id = tenant_id
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        expires = int(time.time()) + 3600
        claims = {"aud": ARM, "tid": self.tenant_id, "oid": "fake-oid", "exp": expires}
        token = ".".join(
            _b64url(json.dumps(part).encode()) for part in ({"alg": "HS256", "typ": "JWT"}, claims)
        )
        return AccessToken(f"{token}.{_b64url(b'not-a-signature')}", expires)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class FakeResponse(HttpResponse):
    """A complete, already-read ``azure.core.rest.HttpResponse``."""

    def __init__(
        self,
        request: HttpRequest,
        status: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._request = request
        self._status = status
        self._content = b"" if body is None else json.dumps(body).encode()
        self._headers: MutableMapping[str, str] = CaseInsensitiveDict(headers or {})
        if body is not None:
            self._headers.setdefault("Content-Type", "application/json; charset=utf-8")
        self._headers["Content-Length"] = str(len(self._content))
        self._headers.setdefault("x-ms-request-id", "fake-request-id")
        self._closed = False

    @property
    def request(self) -> HttpRequest:
        return self._request

    @property
    def status_code(self) -> int:
        return self._status

    @property
    def headers(self) -> MutableMapping[str, str]:
        return self._headers

    @property
    def reason(self) -> str:
        try:
            return HTTPStatus(self._status).phrase
        except ValueError:
            return ""

    @property
    def content_type(self) -> str | None:
        return self._headers.get("Content-Type")

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def is_stream_consumed(self) -> bool:
        return True

    @property
    def encoding(self) -> str | None:
        return "utf-8"

    @encoding.setter
    def encoding(self, value: str | None) -> None:
        pass

    @property
    def url(self) -> str:
        return self._request.url

    @property
    def content(self) -> bytes:
        return self._content

    def text(self, encoding: str | None = None) -> str:
        return self._content.decode(encoding or "utf-8")

    def json(self) -> Any:
        return json.loads(self._content) if self._content else None

    def raise_for_status(self) -> None:
        if self._status >= 400:
            raise HttpResponseError(response=self)

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True

    def read(self) -> bytes:
        return self._content

    def iter_raw(self, **kwargs: Any) -> Iterator[bytes]:
        yield self._content

    def iter_bytes(self, **kwargs: Any) -> Iterator[bytes]:
        yield self._content


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": []}}


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/jobs/(?P<name>[^/]+)"), "_get_job"),
    ("PUT", re.compile(r"/jobs/(?P<name>[^/]+)"), "_put_job"),
    ("POST", re.compile(r"/jobs/(?P<name>[^/]+)/cancel"), "_cancel_job"),
    ("GET", re.compile(r"/environments/(?P<name>[^/]+)/versions"), "_list_environment_versions"),
    ("GET", re.compile(r"/codes/(?P<name>[^/]+)/versions"), "_list_code_versions"),
    ("GET", re.compile(r"/codes/(?P<name>[^/]+)/versions/(?P<version>[^/]+)"), "_get_code"),
    ("GET", re.compile(r"/data"), "_list_data"),
    ("GET", re.compile(r"/data/(?P<name>[^/]+)"), "_get_data_container"),
    ("GET", re.compile(r"/data/(?P<name>[^/]+)/versions"), "_list_data_versions"),
    ("GET", re.compile(r"/data/(?P<name>[^/]+)/versions/(?P<version>[^/]+)"), "_get_data"),
    ("PUT", re.compile(r"/data/(?P<name>[^/]+)/versions/(?P<version>[^/]+)"), "_put_data"),
    ("GET", re.compile(r"/datastores/(?P<name>[^/]+)"), "_get_datastore"),
]
_OPERATION_RESULT = re.compile(
    rf"/subscriptions/[^/]+/providers/{PROVIDER}/locations/[^/]+/mfeOperationResults/[^/]+",
    re.IGNORECASE,
)


class FakeAzureML(HttpTransport):
    """One Azure ML workspace behind ``https://management.azure.com``, in memory."""

    def __init__(
        self,
        subscription: str = SUBSCRIPTION,
        resource_group: str = RESOURCE_GROUP,
        workspace: str = WORKSPACE,
    ) -> None:
        self.workspace_id = workspace_id(subscription, resource_group, workspace)
        self.subscription = subscription
        self.requests: list[Recorded] = []
        self.unexpected: list[str] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.environments: dict[str, list[str]] = {}  # name -> versions, oldest first
        self.codes: dict[tuple[str, str], dict[str, Any]] = {}
        self.data: dict[str, dict[str, dict[str, Any]]] = {}  # name -> version -> resource
        # True: the workspace already holds any code snapshot asked for by content hash (the
        # SDK then reuses it); False: the SDK would upload one to blob storage, outside this fake.
        self.snapshots_present = False
        self._faults: list[_Fault] = []
        self._operations = 0

    # --- the fake's own API, for tests ---------------------------------------------------------

    def add_environment(self, name: str, *versions: str) -> None:
        self.environments.setdefault(name, []).extend(versions)

    def add_code(self, name: str, version: str) -> str:
        arm_id = f"{self.workspace_id}/codes/{name}/versions/{version}"
        self.codes[(name, version)] = {
            "id": arm_id,
            "name": version,
            "type": f"{PROVIDER}/workspaces/codes/versions",
            "properties": {
                "codeUri": f"https://stfake.blob.core.windows.net/azureml-blobstore/LocalUpload/{name}",
                "isAnonymous": False,
                "isArchived": False,
                "properties": {},
                "tags": {},
            },
        }
        return arm_id

    def set_status(self, name: str, status: str) -> None:
        self.jobs[name]["properties"]["status"] = status

    def fail(
        self,
        status: int = 0,
        *,
        method: str | None = None,
        path: str | None = None,
        exception: Exception | None = None,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` requests matching ``method`` and ``path`` (a regex searched in the
        workspace-relative path) get HTTP ``status`` with an ARM error body, or raise
        ``exception`` the way a transport does when the connection fails."""
        self._faults.append(
            _Fault(
                method,
                re.compile(path) if path else None,
                status,
                exception,
                dict(headers or {}),
                times,
            )
        )

    def calls(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (path is None or re.search(path, r.path))
        ]

    def summary(self) -> list[str]:
        """``METHOD path`` of each request, in order (readable in assertion diffs)."""
        return [f"{r.method} {r.path}" for r in self.requests]

    # --- HttpTransport -------------------------------------------------------------------------

    def __enter__(self) -> FakeAzureML:
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, request: Any, **kwargs: Any) -> FakeResponse:
        if not isinstance(request, HttpRequest):
            self._unexpected(f"a legacy azure.core.pipeline.transport request: {request!r}")
        url = urlsplit(request.url)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        path = unquote(url.path)
        under_workspace = path.lower().startswith(self.workspace_id.lower() + "/")
        relative = path[len(self.workspace_id) :] if under_workspace else path
        body = json.loads(request.content) if request.content else None
        recorded = Recorded(
            request.method,
            relative,
            query.get("api-version"),
            query,
            body,
            dict(request.headers),
        )
        self.requests.append(recorded)
        if f"{url.scheme}://{url.netloc}" != ARM:
            self._unexpected(f"{request.method} {request.url}: not Azure Resource Manager")
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            self._unexpected(f"{request.method} {request.url} without a bearer token")

        fault = self._take_fault(recorded)
        if fault is not None:
            if fault.exception is not None:
                raise fault.exception
            code = "TooManyRequests" if fault.status == 429 else "UserError"
            if fault.status >= 500:
                code = "ServiceError"
            return FakeResponse(
                request,
                fault.status,
                _error(code, f"fake Azure ML: HTTP {fault.status} on {recorded.method}"),
                fault.headers,
            )

        if _OPERATION_RESULT.fullmatch(path):
            return FakeResponse(request, 200)
        if under_workspace:
            for method, pattern, handler in _ROUTES:
                match = pattern.fullmatch(relative)
                if match and method == request.method:
                    response: FakeResponse = getattr(self, handler)(
                        request, recorded, **match.groupdict()
                    )
                    return response
        if relative.endswith("/startPendingUpload"):
            self._unexpected(
                f"{request.method} {request.url}: a code snapshot upload, which the SDK then "
                "writes to blob storage with its own client, outside this transport (set "
                "snapshots_present, or use a registered code asset)"
            )
        self._unexpected(f"{request.method} {request.url} (nothing in the fake serves it)")

    def _unexpected(self, what: str) -> NoReturn:
        self.unexpected.append(what)
        raise UnexpectedRequest(f"fake Azure ML: unexpected request {what}")

    def _take_fault(self, recorded: Recorded) -> _Fault | None:
        for fault in self._faults:
            if fault.method not in (None, recorded.method):
                continue
            if fault.path is not None and not fault.path.search(recorded.path):
                continue
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            return fault
        return None

    # --- routes --------------------------------------------------------------------------------

    def _get_job(self, request: HttpRequest, recorded: Recorded, name: str) -> FakeResponse:
        job = self.jobs.get(name)
        if job is None:
            return FakeResponse(
                request,
                404,
                _error(
                    "UserError",
                    f"Could not find job with name {name} in workspace {self.workspace_id}",
                ),
            )
        return FakeResponse(request, 200, job)

    def _put_job(self, request: HttpRequest, recorded: Recorded, name: str) -> FakeResponse:
        if not isinstance(recorded.body, dict) or not isinstance(
            recorded.body.get("properties"), dict
        ):
            return FakeResponse(request, 400, _error("UserError", "a job needs properties"))
        created = name not in self.jobs
        properties = dict(recorded.body["properties"])
        properties.setdefault("experimentName", "Default")
        properties["status"] = "NotStarted" if created else self.jobs[name]["properties"]["status"]
        properties["services"] = {
            "Studio": {
                "jobServiceType": "Studio",
                "endpoint": f"https://ml.azure.com/runs/{name}?wsid={self.workspace_id}",
            },
            "Tracking": {
                "jobServiceType": "Tracking",
                "endpoint": f"azureml://{LOCATION}.api.azureml.ms/mlflow/v1.0{self.workspace_id}",
            },
        }
        self.jobs[name] = {
            "id": f"{self.workspace_id}/jobs/{name}",
            "name": name,
            "type": f"{PROVIDER}/workspaces/jobs",
            "properties": properties,
            "systemData": {"createdAt": "2025-01-01T00:00:00Z", "createdBy": "fake"},
        }
        return FakeResponse(request, 201 if created else 200, self.jobs[name])

    def _cancel_job(self, request: HttpRequest, recorded: Recorded, name: str) -> FakeResponse:
        job = self.jobs.get(name)
        if job is None:
            return FakeResponse(request, 404, _error("UserError", f"Could not find job {name}"))
        job["properties"]["status"] = "CancelRequested"
        self._operations += 1
        location = (
            f"{ARM}/subscriptions/{self.subscription}/providers/{PROVIDER}/locations/{LOCATION}"
            f"/mfeOperationResults/jc:fake-{self._operations}?api-version={recorded.api_version}"
        )
        return FakeResponse(request, 202, None, {"Location": location, "Retry-After": "0"})

    def _list_environment_versions(
        self, request: HttpRequest, recorded: Recorded, name: str
    ) -> FakeResponse:
        versions = list(reversed(self.environments.get(name, [])))  # createdtime desc
        top = int(recorded.query.get("$top", len(versions)))
        value = [
            {
                "id": f"{self.workspace_id}/environments/{name}/versions/{version}",
                "name": version,
                "type": f"{PROVIDER}/workspaces/environments/versions",
                "properties": {
                    "image": "mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04",
                    "osType": "Linux",
                    "isAnonymous": False,
                    "properties": {},
                    "tags": {},
                },
            }
            for version in versions[:top]
        ]
        return FakeResponse(request, 200, {"value": value})

    def _list_code_versions(
        self, request: HttpRequest, recorded: Recorded, name: str
    ) -> FakeResponse:
        content_hash = recorded.query.get("hash")
        if not content_hash:
            self._unexpected(f"GET {recorded.path}: code versions listed without a content hash")
        if not self.snapshots_present:
            return FakeResponse(request, 200, {"value": []})
        snapshot = f"snapshot-{content_hash[:16]}"
        if (snapshot, "1") not in self.codes:
            self.add_code(snapshot, "1")
            self.codes[(snapshot, "1")]["properties"]["isAnonymous"] = True
        return FakeResponse(request, 200, {"value": [self.codes[(snapshot, "1")]]})

    def _get_code(
        self, request: HttpRequest, recorded: Recorded, name: str, version: str
    ) -> FakeResponse:
        code = self.codes.get((name, version))
        if code is None:
            return FakeResponse(request, 404, _error("UserError", f"no code {name}:{version}"))
        return FakeResponse(request, 200, code)

    # --- data assets -----------------------------------------------------------------------------

    def _data_container(self, name: str) -> dict[str, Any]:
        numbers = [int(v) for v in self.data.get(name, {}) if v.isdigit()]
        latest = max(numbers, default=0)
        return {
            "id": f"{self.workspace_id}/data/{name}",
            "name": name,
            "type": f"{PROVIDER}/workspaces/data",
            "properties": {
                "dataType": "mltable",
                "isArchived": False,
                "latestVersion": str(latest),
                "nextVersion": str(latest + 1),
                "properties": {},
                "tags": {},
            },
        }

    def _list_data(self, request: HttpRequest, recorded: Recorded) -> FakeResponse:
        value = [self._data_container(name) for name in sorted(self.data)]
        return FakeResponse(request, 200, {"value": value})

    def _get_data_container(
        self, request: HttpRequest, recorded: Recorded, name: str
    ) -> FakeResponse:
        if name not in self.data:
            return FakeResponse(request, 404, _error("UserError", f"no data asset {name}"))
        return FakeResponse(request, 200, self._data_container(name))

    def _list_data_versions(
        self, request: HttpRequest, recorded: Recorded, name: str
    ) -> FakeResponse:
        versions = self.data.get(name, {})
        return FakeResponse(request, 200, {"value": list(versions.values())})

    def _get_data(
        self, request: HttpRequest, recorded: Recorded, name: str, version: str
    ) -> FakeResponse:
        found = self.data.get(name, {}).get(version)
        if found is None:
            return FakeResponse(request, 404, _error("UserError", f"no data {name}:{version}"))
        return FakeResponse(request, 200, found)

    def _put_data(
        self, request: HttpRequest, recorded: Recorded, name: str, version: str
    ) -> FakeResponse:
        body = recorded.body if isinstance(recorded.body, dict) else {}
        properties = dict(body.get("properties") or {})
        existing = self.data.get(name, {}).get(version)
        if existing is not None and existing["properties"]["dataUri"] != properties.get("dataUri"):
            return FakeResponse(
                request, 409, _error("UserError", f"data {name}:{version} exists with another path")
            )
        properties.setdefault("isAnonymous", False)
        properties.setdefault("isArchived", False)
        resource = {
            "id": f"{self.workspace_id}/data/{name}/versions/{version}",
            "name": version,
            "type": f"{PROVIDER}/workspaces/data/versions",
            "properties": properties,
            "systemData": {"createdAt": "2025-01-01T00:00:00Z", "createdBy": "fake"},
        }
        self.data.setdefault(name, {})[version] = resource
        return FakeResponse(request, 201 if existing is None else 200, resource)

    def _get_datastore(self, request: HttpRequest, recorded: Recorded, name: str) -> FakeResponse:
        return FakeResponse(request, 404, _error("UserError", f"no datastore {name} in the fake"))


def fake_ml_client(fake: FakeAzureML, **kwargs: Any) -> Any:
    """A real ``MLClient`` for the fake's workspace whose pipelines send through ``fake``.

    azure-core's retries are off (``retry_total=0``) unless asked for, so a 429/503 reaches the
    adapter at once instead of after the SDK's backoff."""
    from azure.ai.ml import MLClient

    subscription, resource_group, workspace = (fake.workspace_id.split("/")[i] for i in (2, 4, 8))
    options: dict[str, Any] = {"retry_total": 0, "enable_telemetry": False, **kwargs}
    return MLClient(
        FakeCredential(),
        subscription,
        resource_group,
        workspace,
        transport=fake,
        **options,
    )


@contextmanager
def refuse_network() -> Iterator[None]:
    """No socket connects and no DNS lookups: anything that bypasses the fake transport fails."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UnexpectedRequest(f"network access outside the fake Azure ML transport: {args!r}")

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo)
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.getaddrinfo = refuse
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = saved  # type: ignore[method-assign]
