"""Orphaned steps: steps whose message was lost, found and given their message back.

A message can vanish when a connection breaks while kombu moves it from its queue to the
``unacked`` hash (see ``orchestrator.tickets``), and a chain stops if a worker dies after
recording a step but before publishing the next link. Both can only happen when a worker
loses its broker connection or dies; workers record when that happens (the ``disrupted``
key), and once things have settled the recovery sweep looks at every unfinished step that
was waiting then:

- queued or retrying, or running for a worker that is dead, and no message for it
  anywhere (queues, ``unacked``, the delayed set): its ticket is published again (a
  bundle's once, for all its steps); with no ticket (its publisher died between
  recording it queued and keeping its message), a message is made afresh from its
  definition, or for a chain's link the link before it goes on;
- not started, every dependency ended before the disruption, not a counter step or one
  a chord's gate publishes (those have their own repair), and no message for it: its
  dependencies' tickets are published again with the keep-going header, so that their
  chains continue;
- a fan-out whose items all ended before the disruption and whose join has no message:
  the join's ticket is published again, or with none the join itself (idempotent).

A step whose message was only on its way at that moment gets a second copy: harmless,
a step runs once. The look costs a scan of the queues, so it runs only after a disruption
(and, while disruptions go on without settling, every few settling times:
``orchestrator.recovery``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from config.queues import queue_for
from config.topology import PRIORITY_ORDER
from orchestrator import tickets
from orchestrator.dispatch import publish_steps
from orchestrator.states import STEP_FINAL, WORKFLOW_FINAL, StepState
from orchestrator.store import StateStore
from orchestrator.stranded import UNACKED

log = logging.getLogger("treadle.recovery")

_SCAN_CHUNK = 1000


@dataclass
class OrphanReport:
    reissued: list[str] = field(default_factory=list)  # "workflow/step" given its message back
    continued: list[str] = field(default_factory=list)  # "workflow/step" whose chain went on


def present_steps(store: StateStore) -> set[tuple[str, str]]:
    """Every (workflow, step) that has a message somewhere Redis can see."""
    redis, found = store.redis, set[tuple[str, str]]()
    for queue in (queue_for(k) for k in PRIORITY_ORDER):
        length = int(redis.llen(queue))
        for start in range(0, length, _SCAN_CHUNK):
            for raw in redis.lrange(queue, start, start + _SCAN_CHUNK - 1):
                found.update(_payload_steps(raw))
    for _tag, raw in redis.hscan_iter(UNACKED, count=_SCAN_CHUNK):
        try:
            payload = json.loads(raw)[0]
        except (ValueError, TypeError, KeyError, IndexError):
            continue
        found.update(tickets.keys_of_payload(payload))
    for message_id in redis.hkeys(store.keys.delayed_entries):
        text = message_id.decode() if isinstance(message_id, bytes) else str(message_id)
        workflow_id, _, rest = text.partition("/")
        found.add((workflow_id, rest.rsplit("/", 1)[0]))
    return found


def repair(app: Celery, store: StateStore, before: float) -> OrphanReport:
    """Give back the messages of steps orphaned before ``before`` (a disruption's time)."""
    report = OrphanReport()
    present = present_steps(store)
    for workflow_id in _unfinished(store):
        records = store.step_records(workflow_id)
        lost, running, pending = [], [], []
        for step_id, record in records.items():
            state = record.get("state")
            if state == StepState.running:
                running.append(step_id)  # a fan-out's join may be missing even if it is not
            if (workflow_id, step_id) in present:
                continue
            if state in (StepState.queued, StepState.retrying):
                if float(record.get("queued_at") or 0) < before:
                    lost.append(step_id)
            elif state == StepState.running:
                if not store.worker_alive(record.get("incarnation") or ""):
                    lost.append(step_id)
            elif state == StepState.pending:
                pending.append(step_id)
        defs = store.step_defs_of(workflow_id, running + pending)
        fan_outs = {s for s in running if defs.get(s, {}).get("for_each")}
        # A fan-out stays running while its items run: what it may lack is its join.
        lost = [s for s in lost if s not in fan_outs] + [
            join
            for s in sorted(fan_outs)
            if (workflow_id, join := f"{s}{tickets.JOIN_SUFFIX}") not in present
            and _items_ended(s, records, before)
        ]
        stalled = _stalled(pending, defs, records, before)
        deps = sorted({d for s in stalled for d in defs[s]["after"]})
        _reissue(app, store, workflow_id, lost, report.reissued, keep_going=False)
        _reissue(app, store, workflow_id, deps, report.continued, keep_going=True)
    return report


def _items_ended(parent: str, records: dict[str, dict[str, Any]], before: float) -> bool:
    items = [r for sid, r in records.items() if sid.startswith(f"{parent}[")]
    return bool(items) and all(
        r.get("state") in STEP_FINAL and float(r.get("finished_at") or 0) < before for r in items
    )


def _stalled(
    pending: list[str],
    defs: dict[str, dict[str, Any]],
    records: dict[str, dict[str, Any]],
    before: float,
) -> list[str]:
    """Pending canvas steps all of whose dependencies ended before ``before``."""
    out = []
    for step_id in pending:
        definition = defs.get(step_id, {})
        deps = definition.get("after") or []
        if definition.get("counter") or not deps or {"item_of", "gate"} & definition.keys():
            # Counter steps, fan-out items and what a chord's gate publishes with it are
            # published by other means.
            continue
        ends = [records.get(d, {}) for d in deps]
        if all(
            e.get("state") in STEP_FINAL and float(e.get("finished_at") or 0) < before for e in ends
        ):
            out.append(step_id)
    return out


def _reissue(
    app: Celery,
    store: StateStore,
    workflow_id: str,
    step_ids: list[str],
    done: list[str],
    keep_going: bool,
    sent: set[Any] | None = None,
) -> None:
    sent = set() if sent is None else sent  # the message ids published again so far
    kept = store.tickets_of(workflow_id, step_ids)
    for step_id in step_ids:
        ticket = kept.get(step_id)
        if ticket is None and step_id.endswith(tickets.JOIN_SUFFIX):
            # The join was never published (its worker died before the chord fired, or
            # the chord counted an item twice and will never fire): published here. It
            # is idempotent, and reads every item's result from the state store.
            _publish_join(app, store, workflow_id, step_id.removesuffix(tickets.JOIN_SUFFIX))
            done.append(f"{workflow_id}/{step_id}")
            continue
        if ticket is None:
            carrier = (store.step_records_of(workflow_id, [step_id]).get(step_id) or {}).get(
                "inline_of"
            )
            if carrier and not keep_going:
                # Run in line (workers.inline): it had no message of its own; the step whose
                # message carried it goes on from where it ended.
                _reissue(app, store, workflow_id, [carrier], done, keep_going=True, sent=sent)
                continue
            if keep_going:
                log.error(
                    "workflow %s step %s lost its message and none was kept", workflow_id, step_id
                )
                continue
            # Recorded as queued, but its publisher died before keeping its message (a
            # worker killed between the two).
            definition = store.step_defs_of(workflow_id, [step_id]).get(step_id) or {}
            after = list(definition.get("after") or [])
            if after and not {"counter", "then", "item_of"} & definition.keys():
                # A link of a chain: its message is the rest of that chain, which the link
                # before it carries; that one goes on from where it ended.
                _reissue(app, store, workflow_id, after, done, keep_going=True, sent=sent)
                continue
            # A step its dependency counts release (or a first step): its message is made
            # again from its definition, as the worker that died would have made it.
            priority = store.workflow_fields(workflow_id)["priority"]
            publish_steps(app, store, workflow_id, [step_id], priority, share=False)
            log.warning(
                "workflow %s step %s: its message was lost before it was kept: published anew",
                workflow_id,
                step_id,
            )
            done.append(f"{workflow_id}/{step_id}")
            continue
        message_id = (ticket.get("headers") or {}).get("id")
        if message_id in sent:
            continue  # a bundle's: published again for one of its steps already
        sent.add(message_id)
        tickets.reissue(app, ticket, keep_going=keep_going)
        log.warning(
            "workflow %s step %s: %s",
            workflow_id,
            step_id,
            "chain continued after a lost link" if keep_going else "lost message published again",
        )
        done.append(f"{workflow_id}/{step_id}")


def _publish_join(app: Celery, store: StateStore, workflow_id: str, parent: str) -> None:
    """The join of the fan-out ``parent`` whose items all ended. What a chain after the
    fan-out step would have carried on with, the stall repair continues."""
    count = sum(1 for s in store.step_records(workflow_id) if s.startswith(f"{parent}["))
    definition = store.step_defs_of(workflow_id, [parent]).get(parent) or {}
    pool = definition.get("priority") or store.workflow_fields(workflow_id)["priority"]
    app.signature(
        tickets.JOIN_TASK, args=(workflow_id, parent, count), immutable=True, queue=queue_for(pool)
    ).apply_async()
    log.warning(
        "workflow %s step %s: its items ended and no join came: joined", workflow_id, parent
    )


def _unfinished(store: StateStore) -> Iterable[str]:
    ids = list(store.ids())
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        with store.redis.pipeline(transaction=False) as pipe:
            for workflow_id in batch:
                pipe.hget(store.keys.workflow(workflow_id), "state")
            states = store.execute(pipe)
        for workflow_id, state in zip(batch, states, strict=True):
            text = state.decode() if isinstance(state, bytes) else state
            if text is not None and text not in WORKFLOW_FINAL:
                yield workflow_id


def _payload_steps(raw: bytes | str) -> list[tuple[str, str]]:
    try:
        return tickets.keys_of_payload(json.loads(raw))
    except (ValueError, TypeError):
        return []
