"""The end of a workflow: its final state, or first its compensations (a saga).

Under ``on_failure: compensate``, once every step has ended and one has failed, the
compensation task of every step that succeeded runs, one after another, in reverse order
of completion — each a step of its own (``compensate:<step id>``) with its own record,
attempts and retries under its task's policy. The workflow then ends ``compensated``, or
``failed`` naming the compensation that failed.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from orchestrator.compiler import Chain, Compiled, Node, Task
from orchestrator.dispatch import dispatch
from orchestrator.states import WORKFLOW_FINAL, StepState, WorkflowState
from orchestrator.store import Change, Conflict, StateStore

COMPENSATION_PREFIX = "compensate:"


def finish_workflow(app: Celery, store: StateStore, workflow_id: str) -> str | None:
    """Move a workflow whose steps have all ended on: to its final state, or into
    compensation. Idempotent; returns the new state, or None if there was nothing to do."""
    wf = store.workflow_fields(workflow_id)
    if wf["state"] in WORKFLOW_FINAL or int(wf["steps_done"]) < int(wf["steps_total"]):
        return None
    failed = int(wf.get("steps_failed", 0))
    error = None
    if wf["state"] == WorkflowState.compensating:
        error = _failed_compensation(store, workflow_id)
        new = WorkflowState.failed if error else WorkflowState.compensated
    elif failed and wf.get("on_failure") == "compensate":
        if _start_compensation(app, store, workflow_id, wf):
            return WorkflowState.compensating.value
        new = WorkflowState.failed
    else:
        new = WorkflowState.failed if failed else WorkflowState.succeeded
    now = time.time()
    fields: dict[str, Any] = {"finished_at": repr(now)}
    if error:
        fields["error"] = error
    try:
        store.apply(
            workflow_id,
            [Change(None, wf["state"], new.value, fields, {"at": now, "steps_failed": failed})],
            tails={"": wf.get("audit_tail") or ""},
        )
    except Conflict:
        return None
    store.expire(workflow_id)
    return new.value


def compensation_order(
    records: dict[str, dict[str, Any]], defs: dict[str, dict[str, Any]]
) -> list[str]:
    """Steps to compensate, most recently completed first. Pure."""
    parents = {d["item_of"] for d in defs.values() if "item_of" in d}
    done = [
        (records[s].get("finished_at") or 0.0, s)
        for s, d in defs.items()
        if d.get("compensate")
        and s not in parents  # a fan-out is compensated item by item
        and records.get(s, {}).get("state") == StepState.succeeded.value
    ]
    return [s for _, s in sorted(done, reverse=True)]


def _start_compensation(
    app: Celery, store: StateStore, workflow_id: str, wf: dict[str, str]
) -> bool:
    records, defs = store.step_records(workflow_id), store.step_defs(workflow_id)
    steps = compensation_order(records, defs)
    if not steps:
        return False
    now = time.time()
    new_defs = {
        f"{COMPENSATION_PREFIX}{s}": {
            "id": f"{COMPENSATION_PREFIX}{s}",
            "task": defs[s]["compensate"],
            "args": {},
            "after": [s],  # it reads the compensated step's result
            "trigger": "all_done",
            "compensates": s,
            "timeout_s": defs[s]["timeout_s"],
            "priority": defs[s].get("priority"),
        }
        for s in steps
    }
    changes = [
        Change(
            None,
            wf["state"],
            WorkflowState.compensating.value,
            {},
            {"at": now, "compensating": steps},
        )
    ] + [
        Change(
            cid,
            "",
            StepState.pending.value,
            {"attempts": 0},
            {"at": now, "compensates": d["compensates"]},
            definition=d,
        )
        for cid, d in new_defs.items()
    ]
    try:
        store.apply(workflow_id, changes, tails={"": wf.get("audit_tail") or ""})
    except Conflict:
        return False
    ids = list(new_defs)
    canvas: Node = Task(ids[0]) if len(ids) == 1 else Chain(tuple(Task(i) for i in ids))
    dispatch(app, store, workflow_id, Compiled(canvas=canvas), new_defs, wf["priority"])
    return True


def _failed_compensation(store: StateStore, workflow_id: str) -> str | None:
    records, defs = store.step_records(workflow_id), store.step_defs(workflow_id)
    for step_id, definition in defs.items():
        if "compensates" not in definition:
            continue
        if records.get(step_id, {}).get("state") in ("failed", "dead-lettered"):
            return (
                f"compensation {step_id} ({definition['task']}) of step "
                f"{definition['compensates']} failed: {records[step_id].get('error')}"
            )
    return None
