"""Turn a compiled plan into Celery messages and publish them.

The only module that builds Celery canvas objects. Each step becomes an immutable
signature of its task with ``(workflow_id, step_id)`` as arguments: steps read their
inputs from the state store by step id, so no result travels inside a message. The canvas
is published as chains and groups, with each chord's header as a group; a chord's body,
and the steps that run on counters, are published by the step runtime when their
dependency counts reach zero (``compiler.split_joins``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from celery import Celery, chain, group
from celery.canvas import Signature
from kombu import Producer

from config.queues import queue_for
from config.settings import Settings
from orchestrator import tickets
from orchestrator.compiler import (
    Chain,
    Compiled,
    Group,
    Node,
    Task,
    first_steps,
    from_json,
    steps_of,
)
from orchestrator.states import StepState
from orchestrator.step_messages import BundleSizes, StepMessages
from orchestrator.store import ANY, Change, Conflict, StateStore

StepDefs = Mapping[str, Mapping[str, Any]]


def step_signature(
    app: Celery, workflow_id: str, step_id: str, step: Mapping[str, Any], priority: str
) -> Signature:
    soft = float(step["timeout_s"])
    pool = step.get("priority") or priority
    return app.signature(
        step["task"],
        args=(workflow_id, step_id),
        immutable=True,
        queue=queue_for(pool),
        soft_time_limit=soft,
        time_limit=Settings.hard_limit_s(soft),
        # What Flower and Celery's logs show as the task's arguments.
        argsrepr=f"workflow={workflow_id} step={step_id} pool={pool}",
        # Celery would declare the queue again before every message (kombu copies and
        # binds it each time: a third of publishing's CPU); treadle's queues are declared
        # when each worker starts (config.queues).
        declare=[],
    )


def build_signature(
    app: Celery, workflow_id: str, node: Node, defs: StepDefs, priority: str
) -> Signature:
    """Celery's signature of a canvas without chords (``Split.now`` or a held part)."""

    def build(n: Node) -> Signature:
        if isinstance(n, Task):
            return step_signature(app, workflow_id, n.step, defs[n.step], priority)
        if isinstance(n, Chain):
            return chain(*(build(i) for i in n.items), app=app)
        if isinstance(n, Group):
            return group(*(build(i) for i in n.items), app=app)
        raise TypeError(f"a chord is published as its header (split_joins), not {n!r}")

    return build(node)


def dispatch(
    app: Celery,
    store: StateStore,
    workflow_id: str,
    compiled: Compiled,
    defs: StepDefs,
    priority: str,
) -> None:
    """Publish a workflow. Safe to repeat: a step already claimed or finished ignores a
    second message for it."""
    sources = [s for s in sorted(compiled.counters) if not defs[s].get("waits_for")]
    now = compiled.split().now
    first = (first_steps(now) if now is not None else []) + sources
    mark_queued(store, workflow_id, first)
    with publishing(app, store) as (producer, plain):
        if now is not None:
            _send(app, producer, plain, workflow_id, now, defs, priority)
        for step_id in sources:
            plain.add(workflow_id, step_id, defs[step_id], priority)
    store.set_fields(workflow_id, {"dispatched_at": repr(time.time())})


def dispatch_stored(app: Celery, store: StateStore, workflow_id: str) -> None:
    """Publish a workflow from what the state store holds (recovery after a crash)."""
    fields = store.workflow_fields(workflow_id)
    stored_canvas = json.loads(fields["canvas"])
    defs = store.step_defs(workflow_id)
    compiled = Compiled(
        canvas=from_json(stored_canvas) if stored_canvas is not None else None,
        counters=frozenset(sid for sid, d in defs.items() if d.get("counter")),
    )
    dispatch(app, store, workflow_id, compiled, defs, fields["priority"])


def publish_steps(
    app: Celery,
    store: StateStore,
    workflow_id: str,
    step_ids: Iterable[str],
    priority: str,
    share: bool = True,
) -> None:
    """Publish steps whose dependency counts reached zero (the runtime calls this): a
    counter step alone, a chord's gate with the part it holds back. ``share=False``:
    each plain step in a message of its own, never a bundle."""
    ids = list(step_ids)
    if not ids:
        return
    defs = store.step_defs_of(workflow_id, ids)
    held = {s: from_json(defs[s]["then"]) for s in ids if "then" in defs[s]}
    others = sorted({s for node in held.values() for s in steps_of(node)} - set(defs))
    defs.update(store.step_defs_of(workflow_id, others))
    with publishing(app, store, share) as (producer, plain):
        for step_id in ids:
            node = held.get(step_id, Task(step_id))
            _send(app, producer, plain, workflow_id, node, defs, priority)


def _send(
    app: Celery,
    producer: Producer,
    plain: StepMessages,
    workflow_id: str,
    node: Node,
    defs: StepDefs,
    priority: str,
) -> None:
    """Publish ``node`` (no chords in it): a group's members each on their own, since no
    chord waits on a group (a chord's body waits on a counter), and a plain step as one
    message that ``StepMessages`` builds without Celery's per-message canvas work."""
    if isinstance(node, Task):
        plain.add(workflow_id, node.step, defs[node.step], priority)
    elif isinstance(node, Group):
        for item in node.items:
            _send(app, producer, plain, workflow_id, item, defs, priority)
    else:
        build_signature(app, workflow_id, node, defs, priority).apply_async(producer=producer)


# Messages a publish batch may hold: a stage's worth, so that it leaves in one round trip.
_BATCH_MAX = 1_000_000


@contextlib.contextmanager
def publishing(
    app: Celery, store: StateStore, share: bool = True
) -> Iterator[tuple[Producer, StepMessages]]:
    """A producer for canvases (passed ``producer=``) and a collector of plain steps'
    messages, all of which leave together when the block ends: Celery publishes a canvas
    one message at a time (kombu's ``Producer.batch`` buffers them into one pipelined
    round trip). Their tickets are written first, in one more round trip; a block that
    fails publishes nothing. Plain steps of a short task may share messages (see
    ``orchestrator.bundles``), as ``app.conf`` says (``Settings.bundle_target_s``)."""
    target_s = float(app.conf.get("treadle_bundle_target_s") or 0)
    most = int(app.conf.get("treadle_bundle_max") or 1)
    sizing = BundleSizes(store, target_s, most) if share and target_s > 0 else None
    with app.producer_or_acquire() as producer, producer.batch(max_size=_BATCH_MAX):
        plain = StepMessages(app, producer, sizing)
        with tickets.capture(store):
            yield producer, plain
            plain.build_held()
        plain.send()


def mark_queued(store: StateStore, workflow_id: str, step_ids: list[str]) -> None:
    """Record steps as queued before their messages can be taken. On a first dispatch
    they are all pending; a repeated dispatch reads which still are."""
    pending = list(step_ids)
    for _ in range(8):
        now = time.time()
        if not pending:
            return
        # One record for the batch, on the workflow's own chain: the steps' own chains then
        # begin with their first start, which a worker can seal without reading them.
        changes = [Change(None, ANY, ANY, {}, {"at": now, "queued": pending})]
        changes += [
            Change(sid, StepState.pending.value, StepState.queued.value, {"queued_at": now}, None)
            for sid in pending
        ]
        try:
            store.apply(workflow_id, changes)
            return
        except Conflict:
            records = store.step_records(workflow_id)
            pending = [s for s in step_ids if records.get(s, {}).get("state") == "pending"]
