"""The OpenAPI docs, offline: ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) with their scripts
and stylesheets served by the coordinator from the ``fastapi-offline`` package's copy
(``/docs/static/...``), not from a CDN, so they work on a machine without internet.

FastAPI's own docs pages load Swagger UI and ReDoc from jsDelivr (and ReDoc's fonts from
Google); the app is built with ``docs_url=None, redoc_url=None`` and these routes instead.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_STATIC = "/docs/static"
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))

router = APIRouter(include_in_schema=False)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title="retrainer coordinator - API",
        swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
    )


@router.get("/redoc", response_class=HTMLResponse)
def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_redoc_html(
        openapi_url=f"{root}/openapi.json",
        title="retrainer coordinator - API",
        redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
        with_google_fonts=False,
    )


def add_docs_routes(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(DOCS_STATIC, StaticFiles(directory=ASSETS_DIR), name="docs-static")
