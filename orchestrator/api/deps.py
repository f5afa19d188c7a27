"""What a route gets from the app it runs in."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from orchestrator.service import Orchestrator


def orchestrator_of(request: Request) -> Orchestrator:
    orchestrator: Orchestrator = request.app.state.orchestrator
    return orchestrator


OrchestratorDep = Annotated[Orchestrator, Depends(orchestrator_of)]
