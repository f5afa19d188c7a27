"""Dynamic fan-out: a step with ``for_each: <step id>`` runs once per element of the list
that step returned, and its dependents receive the list of results, in order.

Each element becomes a step of its own in the state store (``train[3]``), with its own
state, attempts and retries. The fan-out step's Celery task replaces itself
(``Task.replace``, Celery's way of growing a canvas at run time) with a chord: the items,
in at most ``max_parallel`` lanes, then ``treadle.join``, which records the fan-out step
as succeeded with the joined results. A chain or chord the fan-out step was part of goes
on after the join, as Celery guarantees for a replaced task.
"""

from __future__ import annotations

import json
import time
from typing import Any, NoReturn

from celery import Task, chain, chord, group

from config.queues import queue_for
from orchestrator import audit
from orchestrator.dispatch import step_signature
from orchestrator.errors import Permanent
from orchestrator.states import StepState
from orchestrator.store import Applied, Change, Conflict, StateStore, StepView
from orchestrator.tickets import JOIN_TASK

MAX_ITEMS = 20_000  # as many as a workflow may have steps (Settings.max_steps default)
_NOT_INHERITED = ("for_each", "max_parallel", "release", "counter", "when", "trigger")


def item_id(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


def fan_out(store: StateStore, task: Task, view: StepView) -> NoReturn:
    """Create the items (once) and replace the running task by their chord."""
    source = view.definition["for_each"]
    items = view.results.get(source)
    if not isinstance(items, list):
        raise Permanent(
            f"for_each: the result of step {source} is {type(items).__name__}, not a list"
        )
    if len(items) > MAX_ITEMS:
        raise Permanent(f"for_each: {len(items)} items; a fan-out takes at most {MAX_ITEMS}")
    definitions = [_item_def(view, i, value) for i, value in enumerate(items)]
    if definitions:
        _create_items(store, view, definitions)
    priority = view.pool
    # Items that already succeeded (a resumed fan-out) keep their results and do not run
    # again; the join reads every item's result in order.
    records = store.step_records(view.workflow_id) if definitions else {}
    signatures = [
        step_signature(task.app, view.workflow_id, d["id"], d, view.priority)
        for d in definitions
        if records.get(d["id"], {}).get("state") != StepState.succeeded.value
    ]
    join = task.app.signature(
        JOIN_TASK,
        args=(view.workflow_id, view.step_id, len(items)),
        immutable=True,
        queue=queue_for(priority),
    )
    if not signatures:
        raise task.replace(join)
    lanes = min(view.definition.get("max_parallel") or len(signatures), len(signatures))
    header = [
        chain(*signatures[lane::lanes], app=task.app)
        if lanes < len(signatures)
        else signatures[lane]
        for lane in range(lanes)
    ]
    raise task.replace(chord(group(*header, app=task.app), join, app=task.app))


def _item_def(view: StepView, index: int, value: Any) -> dict[str, Any]:
    definition = {k: v for k, v in view.definition.items() if k not in _NOT_INHERITED}
    definition.update(
        id=item_id(view.step_id, index),
        # An item sees what its fan-out step saw: the same dependencies and their results.
        # The fan-out step already applied its trigger rule and condition for all items.
        trigger="all_done",
        item_of=view.step_id,
        index=index,
        item=value,
    )
    return definition


def _create_items(store: StateStore, view: StepView, definitions: list[dict[str, Any]]) -> None:
    """All items or none, once: a redelivered fan-out finds them already there."""
    now = time.time()
    changes = [
        Change(
            d["id"],
            "",
            StepState.pending.value,
            {"attempts": 0},
            {"at": now, "item_of": view.step_id, "index": d["index"]},
            definition=d,
        )
        for d in definitions
    ]
    try:
        store.apply(view.workflow_id, changes)
    except Conflict as conflict:
        if conflict.target != changes[0].target:
            raise


def join(
    store: StateStore, workflow_id: str, parent: str, count: int
) -> tuple[StepView, Applied] | None:
    """Record the fan-out step as succeeded with its items' results in order; None if it
    was already settled (a duplicate join, or a stopped workflow)."""
    view = store.load_step(workflow_id, parent)
    if view.record.get("state") != StepState.running.value:
        return None
    ids = [item_id(parent, i) for i in range(count)]
    values = store.results_of(workflow_id, ids)
    missing = [i for i in ids if i not in values]
    if missing:
        raise Permanent(f"fan-out {parent}: no result for {', '.join(missing[:5])}")
    joined = [values[i] for i in ids]  # already JSON values: no round trip needed
    result_json = json.dumps(joined)
    now = time.time()
    output = audit.sha256_of(joined)
    try:
        applied = store.apply(
            workflow_id,
            [
                Change(
                    parent,
                    StepState.running.value,
                    StepState.succeeded.value,
                    {"finished_at": now, "output_sha256": output, "error": None, "items": count},
                    {"at": now, "output_sha256": output, "items": count},
                    result_json,
                    release=view.definition.get("release") or (),
                )
            ],
            tails=view.tails,
        )
        return view, applied
    except Conflict:
        return None
