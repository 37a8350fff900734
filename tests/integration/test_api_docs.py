"""``/docs`` and ``/redoc`` work offline: no external URL in the pages, every asset they name is
served by the coordinator itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coordinator.api import create_app
from tests.integration.test_coordinator_api import make_coordinator


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    coordinator = make_coordinator(tmp_path)
    with TestClient(create_app(coordinator=coordinator, run_loops=False)) as client:
        yield client
    coordinator.close()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_reference_no_external_url_and_their_assets_load(
    client: TestClient, page: str
) -> None:
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not re.findall(r"(?:https?:)?//[\w.-]+\.\w+/", html), "no CDN, no fonts"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    urls = re.findall(r"url: '([^']+)'|spec-url=\"([^\"]+)\"", html)
    assert assets, html
    for asset in assets:
        loaded = client.get(asset)
        assert loaded.status_code == 200, asset
        assert len(loaded.content) > 100, asset
    assert any("/openapi.json" in "".join(found) for found in urls) or "/openapi.json" in html
    assert client.get("/openapi.json").json()["info"]["title"] == "retrainer coordinator"


def test_the_swagger_ui_script_is_version_5_which_renders_openapi_3_1(client: TestClient) -> None:
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    script = client.get("/docs/static/swagger-ui-bundle.js")
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert re.search(r'"5\.\d+\.\d+"', script.text)
