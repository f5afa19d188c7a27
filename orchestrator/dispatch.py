"""Turn a compiled plan into Celery messages and publish them.

The only module that builds Celery canvas objects. Each step becomes an immutable
signature of its task with ``(workflow_id, step_id)`` as arguments: steps read their
inputs from the state store by step id, so no result travels inside a message. The canvas
part is published as one chain/group/chord; steps that run on counters are published one
by one, the first ones here and the rest by the step runtime as their counts reach zero.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature
from kombu import Producer

from config.queues import queue_for
from config.settings import Settings
from orchestrator import tickets
from orchestrator.compiler import Chain, Chord, Compiled, Group, Node, Task, first_steps, from_json
from orchestrator.states import StepState
from orchestrator.step_messages import StepMessages
from orchestrator.store import Change, Conflict, StateStore

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
    def build(n: Node) -> Signature:
        if isinstance(n, Task):
            return step_signature(app, workflow_id, n.step, defs[n.step], priority)
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
    compiled: Compiled,
    defs: StepDefs,
    priority: str,
) -> None:
    """Publish a workflow. Safe to repeat: a step already claimed or finished ignores a
    second message for it."""
    sources = [s for s in sorted(compiled.counters) if not defs[s].get("waits_for")]
    first = (first_steps(compiled.canvas) if compiled.canvas is not None else []) + sources
    mark_queued(store, workflow_id, first)
    with publishing(app, store) as (producer, plain):
        for part in _parts(compiled.canvas):
            if isinstance(part, Task):
                plain.add(workflow_id, part.step, defs[part.step], priority)
            else:
                build_signature(app, workflow_id, part, defs, priority).apply_async(
                    producer=producer
                )
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
    app: Celery, store: StateStore, workflow_id: str, step_ids: Iterable[str], priority: str
) -> None:
    """Publish counter steps whose dependencies have all ended (the runtime calls this)."""
    ids = list(step_ids)
    if not ids:
        return
    defs = store.step_defs_of(workflow_id, ids)
    with publishing(app, store) as (_, plain):
        for step_id in ids:
            plain.add(workflow_id, step_id, defs[step_id], priority)


def _parts(canvas: Node | None) -> tuple[Node, ...]:
    """What a canvas publishes, each part on its own: a group with nothing after it is
    only its members (no chord waits on it), and a plain step is one message that
    ``StepMessages`` builds without Celery's per-message canvas work."""
    if canvas is None:
        return ()
    if isinstance(canvas, Group):
        return canvas.items
    return (canvas,)


# Messages a publish batch may hold: a stage's worth, so that it leaves in one round trip.
_BATCH_MAX = 1_000_000


@contextlib.contextmanager
def publishing(app: Celery, store: StateStore) -> Iterator[tuple[Producer, StepMessages]]:
    """A producer for canvases (passed ``producer=``) and a collector of plain steps'
    messages, all of which leave together when the block ends: Celery publishes a canvas
    one message at a time (kombu's ``Producer.batch`` buffers them into one pipelined
    round trip). Their tickets are written first, in one more round trip; a block that
    fails publishes nothing."""
    with app.producer_or_acquire() as producer, producer.batch(max_size=_BATCH_MAX):
        plain = StepMessages(app, producer)
        with tickets.capture(store):
            yield producer, plain
        plain.send()


def mark_queued(store: StateStore, workflow_id: str, step_ids: list[str]) -> None:
    """Record steps as queued before their messages can be taken. On a first dispatch
    they are all pending; a repeated dispatch reads which still are."""
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
