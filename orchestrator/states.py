"""Workflow and step states, and which of them are final."""

from __future__ import annotations

from enum import StrEnum


class WorkflowState(StrEnum):
    pending = "pending"
    parked = "parked"  # load shedding: held back, not started, resumed when load falls
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    compensating = "compensating"
    compensated = "compensated"
    cancelled = "cancelled"


class StepState(StrEnum):
    pending = "pending"
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    retrying = "retrying"
    skipped = "skipped"
    cancelled = "cancelled"
    compensated = "compensated"
    dead_lettered = "dead-lettered"


WORKFLOW_FINAL = frozenset(
    {
        WorkflowState.succeeded,
        WorkflowState.failed,
        WorkflowState.compensated,
        WorkflowState.cancelled,
    }
)
STEP_FINAL = frozenset(
    {
        StepState.succeeded,
        StepState.failed,
        StepState.skipped,
        StepState.cancelled,
        StepState.compensated,
        StepState.dead_lettered,
    }
)
# Steps nothing has started yet: these are what cancel and a failure policy may stop.
STEP_NOT_STARTED = frozenset({StepState.pending, StepState.queued, StepState.retrying})
