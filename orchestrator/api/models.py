"""What crosses the wire: the JSON bodies of the HTTP API, as pydantic models.

Status, summary and dead-letter objects allow extra fields: the contract says fields may
be added to them (``treadle status --json``), and the API passes on whatever the store
records rather than a copy of the list that could fall behind.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

AUDIT_TAIL_HEADER = "Treadle-Audit-Tail"
NDJSON = "application/x-ndjson"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Submitted(BaseModel):
    id: str = Field(description="The workflow id (the first one, for a repeated idempotency key).")
    created: bool = Field(description="False when the idempotency key was submitted before.")


class StepStatus(_Open):
    id: str
    task: str | None
    state: str | None
    attempts: int
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    worker: str | None
    after: list[str]
    priority: str | None = None
    error: str | None = None


class WorkflowStatus(_Open):
    """The ``treadle status --json`` object; times are Unix seconds."""

    id: str
    name: str
    state: str
    priority: str
    tenant: str | None = None
    submitted_at: float | None
    started_at: float | None = None
    finished_at: float | None
    steps_total: int = 0
    steps_done: int = 0
    error: str | None = None
    steps: list[StepStatus]


class WorkflowSummary(_Open):
    """One row of ``treadle list --json``."""

    id: str
    name: str
    state: str
    priority: str
    tenant: str | None = None
    submitted_at: float | None
    finished_at: float | None
    steps_done: int
    steps_total: int


class Cancelled(BaseModel):
    id: str
    state: str = Field(description="The workflow's state afterwards (unchanged if it had ended).")


class Resumed(BaseModel):
    id: str
    steps: list[str] = Field(description="Declared steps that run again; empty: all succeeded.")


class StepTimingOut(BaseModel):
    id: str
    attempts: int
    ready_at: float | None
    started_at: float | None
    finished_at: float | None
    wait_s: float | None
    run_s: float | None


class AuditVerdict(BaseModel):
    """The ``treadle audit --json`` object: the chain and the order of execution checked."""

    id: str
    ok: bool
    records: int
    problems: list[str]
    steps: list[StepTimingOut]


class DeadLetter(_Open):
    id: str
    kind: str | None = Field(default=None, description="step, or message (could not be read)")
    at: float | None = None
    workflow_id: str | None = None
    step_id: str | None = None
    task: str | None = None
    error: str | None = None
    attempts: int | None = None


class Replayed(BaseModel):
    id: str = Field(description="The dead letter replayed.")
    workflow_id: str = Field(description="Its workflow, which goes on.")


class ReplayedAll(BaseModel):
    workflows: list[str] = Field(description="The workflows resumed.")


class Purged(BaseModel):
    purged: int = Field(description="How many dead letters were deleted.")


class Health(BaseModel):
    status: str


class ProblemOut(BaseModel):
    where: str = Field(description="Where in the request: a spec path, query.X, body, ...")
    what: str


class ErrorBody(BaseModel):
    """Every error answer. ``error`` names the kind (the remote client's key back to the
    exception class)."""

    error: str = Field(
        description="invalid, not_json, too_large, wrong_state, refused, not_found, "
        "unauthorized, unreachable or error"
    )
    message: str
    problems: list[ProblemOut] | None = None
    retry_after_s: float | None = None
