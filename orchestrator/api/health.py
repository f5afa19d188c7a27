"""Probes for process supervisors and load balancers; they need no token."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api.deps import OrchestratorDep
from orchestrator.api.models import ErrorBody, Health
from orchestrator.errors import Unreachable

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Redis answers: this replica can take requests",
    responses={503: {"model": ErrorBody, "description": "Redis does not answer"}},
)
def readyz(orchestrator: OrchestratorDep) -> Health:
    if not orchestrator.ready():
        raise Unreachable("Redis does not answer")
    return Health(status="ready")
