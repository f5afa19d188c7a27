"""The app factory: ``create_app(orchestrator, settings)``.

Nothing in the app keeps state another replica would need: every request reads and
writes Redis through the orchestrator, so any number of orchestrator processes can serve
the API against one Redis, behind any load balancer.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Depends, FastAPI

from config.settings import Settings
from orchestrator.api import dashboard, dead_letters, docs, errors, health, metrics, workflows
from orchestrator.api.auth import Auth, require_token
from orchestrator.api.body import BodyGuard
from orchestrator.service import Orchestrator

DESCRIPTION = (
    "Submit, watch and steer treadle workflows; work the dead-letter queue. Every route but "
    "/healthz and /readyz needs `Authorization: Bearer <TREADLE_API_TOKEN>`. Only JSON in "
    "and out; errors are `{error, message, problems?, retry_after_s?}`."
)


class TreadleApi(FastAPI):
    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = docs.build_openapi(self)
        return self.openapi_schema


def include_protected(app: FastAPI, router: APIRouter) -> None:
    """Serve ``router``'s routes behind the API token (one line, e.g. for /metrics)."""
    app.include_router(router, dependencies=[Depends(require_token)])


def create_app(
    orchestrator: Orchestrator,
    settings: Settings,
    *,
    auth: Auth | None = None,
    extra_routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The HTTP API of ``orchestrator``. ``auth`` defaults to the settings' (and raises
    InvalidInput when they give no token and do not turn auth off); ``extra_routers``
    are served behind the token too."""
    app = TreadleApi(
        title="treadle",
        version=_version(),
        description=DESCRIPTION,
        openapi_url=None,  # served by docs.router, behind the token
        docs_url=None,
        redoc_url=None,
    )
    app.state.orchestrator = orchestrator
    app.state.auth = auth or Auth.from_settings(settings)
    errors.install(app)
    app.add_middleware(BodyGuard, max_bytes=settings.api_max_body_bytes)
    app.include_router(health.router)
    dashboard.install(app)
    routers = (workflows.router, dead_letters.router, metrics.router, docs.router)
    for router in (*routers, *extra_routers):
        include_protected(app, router)
    return app


def _version() -> str:
    try:
        return version("treadle")
    except PackageNotFoundError:
        return "0"
