"""``/metrics``: what ``orchestrator.metrics`` reads from Redis, for Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Response

from orchestrator import metrics
from orchestrator.api.deps import OrchestratorDep
from orchestrator.api.errors import documented

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format); the same from every replica",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "The exposition"},
        **documented(400, 401, 413, 415, 503),
    },
)
def serve_metrics(orchestrator: OrchestratorDep) -> Response:
    body, content_type = metrics.exposition(orchestrator.store, orchestrator.checker.topology)
    return Response(content=body, media_type=content_type)
