"""The API authenticates its callers when it listens beyond loopback.

``python -m coordinator`` runs bound to 0.0.0.0 with a static token and Entra ID configured (a
stand-in tenant whose JWKS is served on 127.0.0.1); requests go to 127.0.0.1 only. Without
either, it refuses to start on 0.0.0.0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from cli.main import main as cli_main
from cli.stack import Stack, free_port
from tests.entra import FakeTenant, new_key, serving_tenant

pytestmark = pytest.mark.slow

STATIC_TOKEN = "static-token-for-tests-" + "x" * 20
NO_RUN = "00000000-0000-0000-0000-000000000000"


@pytest.fixture(scope="module")
def tenant() -> Iterator[FakeTenant]:
    with serving_tenant() as running:
        yield running


@pytest.fixture(scope="module")
def api(tenant: FakeTenant, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state_dir = tmp_path_factory.mktemp("auth")
    port = free_port()
    env = {
        "RETRAINER_STATE_DIR": str(state_dir),
        "RETRAINER_HOST": "0.0.0.0",
        "RETRAINER_PORT": str(port),
        "RETRAINER_API_TOKEN": STATIC_TOKEN,
        "RETRAINER_AUTH_TENANT_ID": tenant.tenant_id,
        "RETRAINER_AUTH_AUDIENCE": tenant.audience,
        "RETRAINER_AUTH_JWKS_URL": tenant.jwks_url,
        "RETRAINER_TRIGGER_RULES": "[]",
    }
    stack = Stack(env, log_dir=state_dir / "logs", services={"coordinator": "coordinator"})
    with stack:
        url = f"http://127.0.0.1:{port}"
        # /readyz is public: the probes need no token.
        stack.wait_ready(url, timeout_s=120)
        yield url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_without_a_token_the_api_answers_401(api: str) -> None:
    response = httpx.get(f"{api}/runs")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert httpx.post(f"{api}/runs", json={}).status_code == 401
    assert httpx.get(f"{api}/runs", headers={"Authorization": "Basic abc"}).status_code == 401


def test_the_static_token_reads_and_writes(api: str) -> None:
    assert httpx.get(f"{api}/runs", headers=bearer(STATIC_TOKEN)).status_code == 200
    wrong = httpx.get(f"{api}/runs", headers=bearer(STATIC_TOKEN + "x"))
    assert wrong.status_code == 401
    # Past authentication: the body is judged (no such data), not the caller.
    started = httpx.post(
        f"{api}/runs",
        headers=bearer(STATIC_TOKEN),
        json={"recipe": "state_identifier", "data": "datasets/none"},
    )
    assert started.status_code == 422, started.text


def test_an_entra_token_with_runs_read_reads_but_cannot_post(api: str, tenant: FakeTenant) -> None:
    reader = bearer(tenant.token(["runs.read"]))
    assert httpx.get(f"{api}/runs", headers=reader).status_code == 200
    posted = httpx.post(
        f"{api}/runs", headers=reader, json={"recipe": "state_identifier", "data": "datasets/x"}
    )
    assert posted.status_code == 403
    assert "runs.write" in posted.json()["detail"]
    cancelled = httpx.post(f"{api}/runs/{NO_RUN}/cancel", headers=reader)
    assert cancelled.status_code == 403


def test_an_entra_token_with_runs_write_posts(api: str, tenant: FakeTenant) -> None:
    writer = bearer(tenant.token(["runs.write"]))
    assert httpx.get(f"{api}/runs", headers=writer).status_code == 200
    posted = httpx.post(
        f"{api}/runs", headers=writer, json={"recipe": "state_identifier", "data": "datasets/x"}
    )
    assert posted.status_code == 422, posted.text
    # A v1.0 token: the sts.windows.net issuer and the application id URI as audience.
    v1 = tenant.token(
        ["runs.read"],
        audience=f"api://{tenant.audience}",
        issuer=f"https://sts.windows.net/{tenant.tenant_id}/",
    )
    assert httpx.get(f"{api}/runs", headers=bearer(v1)).status_code == 200


@pytest.mark.parametrize(
    "case",
    ["forged", "expired", "wrong audience", "other tenant", "unknown key", "alg none", "no roles"],
)
def test_bad_entra_tokens_are_refused(api: str, tenant: FakeTenant, case: str) -> None:
    if case == "forged":  # the tenant's key id, someone else's key
        token = tenant.token(["runs.write"], key=new_key())
    elif case == "expired":
        token = tenant.token(["runs.write"], expires_in_s=-600)
    elif case == "wrong audience":
        token = tenant.token(["runs.write"], audience="api://another-app")
    elif case == "other tenant":
        token = tenant.token(["runs.write"], issuer="https://login.microsoftonline.com/other/v2.0")
    elif case == "unknown key":
        token = tenant.token(["runs.write"], key=new_key(), kid="not-published")
    elif case == "alg none":
        claims = jwt.decode(tenant.token(["runs.write"]), options={"verify_signature": False})
        token = jwt.encode(claims, "", algorithm="none", headers={"kid": tenant.kid})
    else:
        token = tenant.token([])
    response = httpx.get(f"{api}/runs", headers=bearer(token))
    expected = 403 if case == "no roles" else 401
    assert response.status_code == expected, (case, response.text)


def test_probes_and_dashboard_pages_need_no_token(api: str) -> None:
    assert httpx.get(f"{api}/healthz").status_code == 200
    assert httpx.get(f"{api}/readyz").status_code == 200
    assert httpx.get(f"{api}/dashboard").status_code == 200
    assert httpx.get(f"{api}/dashboard/static/dashboard.js").status_code == 200
    # The data behind the pages does.
    assert httpx.get(f"{api}/runs/{NO_RUN}").status_code == 401


def test_the_cli_sends_the_token(
    api: str, tenant: FakeTenant, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["--url", api, "runs", "list"]) == 2
    assert "401" in capsys.readouterr().err
    assert cli_main(["--url", api, "--token", STATIC_TOKEN, "runs", "list"]) == 0
    entra = tenant.token(["runs.read"])
    assert cli_main(["--url", api, "--token", entra, "runs", "list"]) == 0
    # runs.read cannot start a run: the CLI reports the refusal.
    assert cli_main(["--url", api, "--token", entra, "run", "state_identifier", "datasets/x"]) == 2
    assert "runs.write" in capsys.readouterr().err


def test_an_open_api_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RETRAINER_STATE_DIR": str(tmp_path),
        "RETRAINER_HOST": "0.0.0.0",
        "RETRAINER_PORT": str(free_port()),
        "RETRAINER_TRIGGER_RULES": json.dumps([]),
    }
    for name in ("RETRAINER_API_TOKEN", "RETRAINER_AUTH_TENANT_ID", "RETRAINER_AUTH_AUDIENCE"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "coordinator"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "RETRAINER_API_TOKEN" in result.stderr
