"""Turn a compiled canvas into Celery signatures and publish it.

The only module that builds Celery canvas objects. Each step becomes an immutable
signature of its task with ``(workflow_id, step_id)`` as arguments: steps read their
inputs from the state store by step id, so no result travels inside a message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature

from config.queues import queue_for
from config.settings import Settings
from orchestrator.compiler import Chain, Chord, Group, Node, Task, first_steps, from_json
from orchestrator.states import StepState
from orchestrator.store import Change, Conflict, StateStore


def build_signature(
    app: Celery,
    workflow_id: str,
    node: Node,
    defs: Mapping[str, Mapping[str, Any]],
    workflow_priority: str,
    default_timeout_s: float,
) -> Signature:
    def build(n: Node) -> Signature:
        if isinstance(n, Task):
            step = defs[n.step]
            soft = float(step.get("timeout_s") or default_timeout_s)
            return app.signature(
                step["task"],
                args=(workflow_id, n.step),
                immutable=True,
                queue=queue_for(step.get("priority") or workflow_priority),
                soft_time_limit=soft,
                time_limit=Settings.hard_limit_s(soft),
            )
        if isinstance(n, Chain):
            return chain(*(build(i) for i in n.items), app=app)
        if isinstance(n, Group):
            return group(*(build(i) for i in n.items), app=app)
        assert isinstance(n, Chord)
        return chord(group(*(build(i) for i in n.header), app=app), build(n.body), app=app)

    return build(node)


def dispatch(
    app: Celery,
    store: StateStore,
    workflow_id: str,
    canvas: Node,
    defs: Mapping[str, Mapping[str, Any]],
    priority: str,
    default_timeout_s: float,
) -> None:
    """Publish a workflow's canvas. Safe to repeat: a step already claimed or finished
    ignores a second message for it."""
    signature = build_signature(app, workflow_id, canvas, defs, priority, default_timeout_s)
    _mark_queued(store, workflow_id, first_steps(canvas))
    signature.apply_async()
    store.set_fields(workflow_id, {"dispatched_at": repr(time.time())})


def dispatch_stored(
    app: Celery, store: StateStore, workflow_id: str, default_timeout_s: float
) -> None:
    """Publish a workflow from what the state store holds (recovery after a crash)."""
    fields = store.workflow_fields(workflow_id)
    canvas = from_json(json.loads(fields["canvas"]))
    dispatch(
        app,
        store,
        workflow_id,
        canvas,
        store.step_defs(workflow_id),
        fields["priority"],
        default_timeout_s,
    )


def _mark_queued(store: StateStore, workflow_id: str, step_ids: list[str]) -> None:
    """Record the first steps as queued before their messages can be taken. On a first
    dispatch they are all pending; a repeated dispatch reads which still are."""
    pending = list(step_ids)
    for _ in range(8):
        now = time.time()
        changes = [
            Change(
                sid,
                StepState.pending.value,
                StepState.queued.value,
                {"queued_at": now},
                {"at": now},
            )
            for sid in pending
        ]
        if not changes:
            return
        try:
            store.apply(workflow_id, changes)
            return
        except Conflict:
            records = store.step_records(workflow_id)
            pending = [s for s in step_ids if records.get(s, {}).get("state") == "pending"]
