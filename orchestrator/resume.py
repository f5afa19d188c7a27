"""Resume: re-run what did not succeed, keeping every succeeded step and its result.

The checkpoint is the state store itself: the steps to run again are those that failed,
were dead-lettered, skipped or cancelled (or never started), plus everything that depends
on them. They are compiled as a workflow of their own (edges to steps that already
succeeded are satisfied) and dispatched like a new submission; a fan-out runs again only
for its items that did not succeed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery

from orchestrator.compiler import compile_graph
from orchestrator.dag import Graph
from orchestrator.dead_letters import DeadLetters
from orchestrator.dispatch import dispatch
from orchestrator.errors import InvalidInput, WrongState
from orchestrator.model import Step, Workflow
from orchestrator.states import StepState, WorkflowState
from orchestrator.store import Change, Conflict, StateStore, step_definitions, waiting_counts

_RERUN = frozenset(
    {"failed", "dead-lettered", "skipped", "cancelled", "pending", "queued", "retrying"}
)
_RESET: dict[str, Any] = {
    "attempts": 0,
    "error": None,
    "traceback": None,
    "skip_reason": None,
    "queued_at": None,
    "started_at": None,
    "finished_at": None,
    "worker": None,
}


@dataclass(frozen=True)
class Resumed:
    workflow_id: str
    steps: list[str]  # declared steps that run again (fan-out items not listed)


def steps_to_rerun(records: Mapping[str, Mapping[str, Any]], defs: Mapping[str, Any]) -> set[str]:
    """Declared steps that did not succeed, and everything downstream of them. Pure."""
    declared = {s: d for s, d in defs.items() if "item_of" not in d and "compensates" not in d}
    rerun = {s for s in declared if records.get(s, {}).get("state") in _RERUN}
    changed = True
    while changed:
        changed = False
        for step, definition in declared.items():
            if step not in rerun and rerun.intersection(definition.get("after") or ()):
                rerun.add(step)
                changed = True
    return rerun


def resume(app: Celery, store: StateStore, workflow_id: str) -> Resumed:
    for _ in range(16):
        fields = store.workflow_fields(workflow_id)
        if fields["state"] in (WorkflowState.running, WorkflowState.pending):
            raise WrongState(f"workflow {workflow_id} is still {fields['state']}: cancel it first")
        records, defs = store.step_records(workflow_id), store.step_defs(workflow_id)
        rerun = steps_to_rerun(records, defs)
        if not rerun:
            return Resumed(workflow_id, [])
        order = [s for s in json.loads(fields["order"]) if s in rerun]
        residual = Workflow(
            name=fields["name"],
            steps=tuple(
                Step.from_json({**defs[s], "after": [d for d in defs[s]["after"] if d in rerun]})
                for s in order
            ),
        )
        compiled = compile_graph(Graph.from_after({s.id: s.after for s in residual.steps}))
        new_defs = step_definitions(residual, compiled)
        for step in order:  # keep the dependencies as declared (results, audit, status)
            new_defs[step]["after"] = defs[step]["after"]
        now = time.time()
        changes = [
            Change(
                None,
                fields["state"],
                WorkflowState.running.value,
                {"finished_at": ""},
                {"at": now, "reason": "resume", "steps": sorted(rerun)},
            )
        ]
        for step in order:
            changes.append(_reset(step, records[step]["state"], now, new_defs[step]))
        for item, definition in defs.items():
            parent = definition.get("item_of")
            state = records.get(item, {}).get("state")
            if parent in rerun and state != StepState.succeeded.value:
                changes.append(_reset(item, state or "", now, None))
        store.set_waiting(workflow_id, waiting_counts(new_defs, compiled))
        try:
            store.apply(workflow_id, changes, tails={"": fields.get("audit_tail") or ""})
        except Conflict:
            continue
        letters = DeadLetters(store)
        letters.remove(*[e["id"] for e in letters.of_workflow(workflow_id)])
        dispatch(app, store, workflow_id, compiled, new_defs, fields["priority"])
        return Resumed(workflow_id, order)
    raise InvalidInput(f"workflow {workflow_id} kept changing while resuming; try again")


def _reset(step: str, state: str, now: float, definition: dict[str, Any] | None) -> Change:
    return Change(
        step,
        state,
        StepState.pending.value,
        dict(_RESET),
        {"at": now, "reason": "resume"},
        definition=definition,
    )
