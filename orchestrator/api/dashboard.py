"""The workflow dashboard: one page at ``/dashboard`` for operators who want to look
rather than read — the workflow list, a workflow's graph, timeline and audit trail, and
the dead-letter queue with replay buttons.

The page is a shell of static files (``static/``: HTML, vanilla JS, SVG drawn by the
JS, CSS; no build step) that carries no data, so it is served without a token: the
browser could not send one when the operator first opens the URL anyway. Everything it
shows it reads from the JSON API with the bearer token the operator types in, so the
dashboard can see and do exactly what the token allows, and nothing more.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

PATH = "/dashboard"
STATIC_PATH = f"{PATH}/static"

# The shell loads only its own files and talks only to this origin: data from a
# workflow (a step id, an error text) can never run as script even if it slipped past
# the page's escaping, and the token cannot be sent anywhere else.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A new treadle version ships a new shell; a cached old one would call the API wrong.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get(PATH)
def page() -> HTMLResponse:
    html = files("orchestrator.api").joinpath("static", "index.html").read_text("utf-8")
    return HTMLResponse(html, headers=_HEADERS)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse(PATH)


def install(app: FastAPI) -> None:
    """Serve the page and its files, without the token (see the module's docstring)."""
    app.include_router(router)
    static = StaticFiles(packages=[("orchestrator.api", "static")])
    app.mount(STATIC_PATH, static, name="dashboard-static")
