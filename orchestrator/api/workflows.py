"""``/workflows``: submit, read, list, cancel, resume, and the audit trail."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import Response as PlainResponse

from config.topology import PRIORITY_ORDER, PriorityClass
from orchestrator.api.body import json_body
from orchestrator.api.deps import OrchestratorDep
from orchestrator.api.errors import documented
from orchestrator.api.models import (
    AUDIT_TAIL_HEADER,
    NDJSON,
    AuditVerdict,
    Cancelled,
    Resumed,
    Submitted,
    WorkflowStatus,
    WorkflowSummary,
)
from orchestrator.audit import ends_digest
from orchestrator.errors import InvalidInput, Problem
from orchestrator.service import parse_param, with_overrides
from orchestrator.states import WorkflowState

router = APIRouter(prefix="/workflows", tags=["workflows"])

PRIORITIES = [p.value for p in PRIORITY_ORDER]

_COMMON = (400, 401, 413, 415, 503)
_ID_PATH = "/{workflow_id}"


class NdjsonResponse(PlainResponse):
    media_type = NDJSON


def _overrides(param: list[str], priority: str | None) -> tuple[dict[str, Any], list[Problem]]:
    """The ``param=`` values that parse, and a problem for each one that does not (and for
    an unknown ``priority``), so that every problem can be reported at once."""
    params: dict[str, Any] = {}
    problems: list[Problem] = []
    for i, text in enumerate(param):
        try:
            key, value = parse_param(text, f"query.param[{i}]")
        except InvalidInput as exc:
            problems.extend(exc.problems)
            continue
        params[key] = value
    if priority is not None and priority not in PRIORITIES:
        problems.append(
            Problem("query.priority", f"{priority!r}: expected one of {', '.join(PRIORITIES)}")
        )
    return params, problems


@router.post(
    "",
    status_code=201,
    summary="Submit a workflow",
    description=(
        "The body is a workflow spec (the `treadle submit` schema) as JSON. `priority` and "
        "`param=KEY=VALUE` (repeatable; VALUE parsed as JSON if it is) override the spec's "
        "the way `--priority` and `--param` do. 201 with the new id; 200 with the first id "
        "when the spec's idempotency_key was submitted before. Nothing is written unless "
        "the whole submission is valid and admitted."
    ),
    responses={
        200: {"model": Submitted, "description": "The idempotency key was submitted before"},
        **documented(*_COMMON, 429),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/WorkflowSpec"}}
            },
        }
    },
)
def submit(
    orchestrator: OrchestratorDep,
    response: Response,
    spec: Annotated[Any, Depends(json_body)],
    # Checked here rather than by FastAPI, so that its problems join the spec's.
    priority: Annotated[
        str | None,
        Query(description="Override the spec's class", json_schema_extra={"enum": PRIORITIES}),
    ] = None,
    param: Annotated[list[str] | None, Query(description="KEY=VALUE, repeatable")] = None,
) -> Submitted:
    params, problems = _overrides(param or [], priority)
    merged: Any = None
    try:
        merged = with_overrides(spec, params, priority if priority in PRIORITIES else None)
        if problems:
            orchestrator.checker.check(merged)  # validation only: to report its problems too
    except InvalidInput as exc:
        problems.extend(exc.problems)
    if problems:
        raise InvalidInput(problems)
    done = orchestrator.submit(merged)
    if not done.created:
        response.status_code = 200
    return Submitted(id=done.id, created=done.created)


@router.get("", summary="Workflows, newest first", responses=documented(*_COMMON))
def list_workflows(
    orchestrator: OrchestratorDep,
    state: Annotated[
        WorkflowState | None, Query(description="Only workflows in this state")
    ] = None,
    priority: Annotated[
        PriorityClass | None, Query(description="Only workflows of this priority class")
    ] = None,
    tenant: Annotated[
        str | None,
        Query(min_length=1, max_length=200, description="Only this tenant's workflows"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[WorkflowSummary]:
    rows = orchestrator.store.summaries(
        state.value if state else None,
        limit,
        priority=priority.value if priority else None,
        tenant=tenant,
    )
    return [WorkflowSummary.model_validate(row) for row in rows]


@router.get(
    _ID_PATH,
    summary="A workflow's state and its steps' (treadle status --json)",
    responses=documented(*_COMMON, 404),
)
def status(orchestrator: OrchestratorDep, workflow_id: str) -> WorkflowStatus:
    return WorkflowStatus.model_validate(orchestrator.store.status(workflow_id))


@router.post(
    _ID_PATH + "/cancel",
    summary="Cancel: steps not started never start; running ones finish (or stop)",
    responses=documented(*_COMMON, 404),
)
def cancel(
    orchestrator: OrchestratorDep,
    workflow_id: str,
    terminate: Annotated[bool, Query(description="Also stop the running steps")] = False,
) -> Cancelled:
    return Cancelled(id=workflow_id, state=orchestrator.cancel(workflow_id, terminate))


@router.post(
    _ID_PATH + "/resume",
    summary="Re-run what did not succeed, keep the rest",
    responses=documented(*_COMMON, 404, 409),
)
def resume(orchestrator: OrchestratorDep, workflow_id: str) -> Resumed:
    return Resumed(id=workflow_id, steps=orchestrator.resume(workflow_id).steps)


@router.get(
    _ID_PATH + "/audit",
    summary="The audit trail as JSON lines",
    description=(
        "Every recorded transition, oldest first, one canonical JSON record a line, as "
        "stored: each carries the SHA-256 checksums of the step's input and output and "
        "`prev`, the hash of the record before it in its chain (each step's records are a "
        "chain, and the workflow's own records another). The "
        f"`{AUDIT_TAIL_HEADER}` header is the hash of where the store says the chains end "
        "(`orchestrator.audit.ends_digest`): with it the trail can be checked end to end "
        "(`orchestrator.audit.chain_problems`)."
    ),
    response_class=NdjsonResponse,
    responses={
        200: {
            "content": {NDJSON: {"schema": {"type": "string"}}},
            "headers": {AUDIT_TAIL_HEADER: {"schema": {"type": "string"}}},
        },
        **documented(*_COMMON, 404),
    },
)
def audit_log(orchestrator: OrchestratorDep, workflow_id: str) -> NdjsonResponse:
    entries, tails = orchestrator.store.audit_entries(workflow_id)
    text = "".join(f"{entry}\n" for entry in entries)
    return NdjsonResponse(text, headers={AUDIT_TAIL_HEADER: ends_digest(tails)})


@router.get(
    _ID_PATH + "/audit/check",
    summary="The audit verdict (treadle audit --json)",
    description="The chain checked, and the order of execution checked against the graph; "
    "`ok` false names each problem. Per-step waits and run times.",
    responses=documented(*_COMMON, 404),
)
def audit_check(orchestrator: OrchestratorDep, workflow_id: str) -> AuditVerdict:
    return AuditVerdict.model_validate(orchestrator.audit(workflow_id).to_json())
