"""The coordinator's web dashboard: plain HTML, a small vanilla script and a stylesheet.

GET /dashboard                 the runs, newest first, filtered by status
GET /dashboard/runs/{run_id}   one run: its stage timeline, metrics and model version
GET /dashboard/groups          the run groups, newest first
GET /dashboard/groups/{id}     one group: a row per member, filtered by status and entity
GET /dashboard/schedules       the cron schedules: time zone, what a tick starts, next and last
GET /dashboard/static/...      the pages' script, stylesheet and icon (``coordinator/static/``)
GET /                          redirects to /dashboard

The pages are static shells: the script reads the JSON API (``GET /runs``, ``GET /runs/{id}``,
``GET /run-groups``, ``GET /run-groups/{id}``, ``GET /schedules``),
builds the DOM with text nodes only (run data is never parsed as HTML) and refreshes while runs
are active. Nothing is loaded from anywhere else, and the pages say so in their
Content-Security-Policy.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from uuid import UUID

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

# Only this origin: no CDN, no inline script; styles set from the script go through CSSOM.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@cache
def _template(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def _page(request: Request, name: str, **values: str) -> HTMLResponse:
    """``static/<name>`` with ``{{root}}`` (the app's mount path) and ``values`` filled in."""
    text = _template(name)
    for key, value in {"root": request.scope.get("root_path", "").rstrip("/"), **values}.items():
        text = text.replace("{{" + key + "}}", html.escape(value))
    return HTMLResponse(
        text,
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


@router.get("/")
def home(request: Request) -> RedirectResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return RedirectResponse(f"{root}/dashboard", status_code=307)


@router.get("/dashboard", response_class=HTMLResponse)
def runs_page(request: Request) -> HTMLResponse:
    return _page(request, "runs.html")


@router.get("/dashboard/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: UUID) -> HTMLResponse:
    return _page(request, "run.html", run_id=str(run_id))


@router.get("/dashboard/groups", response_class=HTMLResponse)
def groups_page(request: Request) -> HTMLResponse:
    return _page(request, "groups.html")


@router.get("/dashboard/groups/{group_id}", response_class=HTMLResponse)
def group_page(request: Request, group_id: UUID) -> HTMLResponse:
    return _page(request, "group.html", group_id=str(group_id))


@router.get("/dashboard/schedules", response_class=HTMLResponse)
def schedules_page(request: Request) -> HTMLResponse:
    return _page(request, "schedules.html")


def add_dashboard_routes(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
