"""Crash recovery with a name: find workflows a crash left half-done and finish the job.

- submitted but never dispatched (the submitter died between storing and publishing):
  dispatch them;
- every step ended but the workflow is not final (a worker died between recording its
  step and finishing the workflow): finish them;
- a counter step whose dependencies all ended but which was never published (a worker
  died between recording the last dependency's end and publishing): publish it;
- a message a dead worker had taken (see ``orchestrator.stranded``): put it back;
- after a worker lost its broker connection or died, a message lost on the way, or a
  chain cut short (see ``orchestrator.orphans``): publish it again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from orchestrator.delays import DelayedMessages
from orchestrator.dispatch import dispatch_stored, mark_queued, publish_steps
from orchestrator.finish import finish_workflow
from orchestrator.orphans import OrphanReport, repair
from orchestrator.service import Orchestrator
from orchestrator.states import WORKFLOW_FINAL
from orchestrator.stranded import restore_stranded

log = logging.getLogger("treadle.recovery")

# Under disruptions that do not settle, repair this many settling times after the last.
_UNSETTLED_REPAIR = 3

_FIELDS = ("state", "submitted_at", "dispatched_at", "steps_done", "steps_total")


@dataclass
class SweepReport:
    dispatched: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # "workflow/step"
    restored: list[str] = field(default_factory=list)  # task ids a dead worker had taken
    orphans: OrphanReport = field(default_factory=OrphanReport)


def sweep(orchestrator: Orchestrator, undispatched_after_s: float = 10.0) -> SweepReport:
    store = orchestrator.store
    report = SweepReport()
    now = time.time()
    report.restored = restore_stranded(store, orchestrator.settings.stranded_message_after_s, now)
    # A retry taken for publishing by a process that died before confirming it.
    DelayedMessages(store).requeue_stale(older_than_s=undispatched_after_s, now=now)
    _repair_orphans(orchestrator, report, now, settle_s=undispatched_after_s)
    ids = list(store.ids())
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        with store.redis.pipeline(transaction=False) as pipe:
            for wid in batch:
                pipe.hmget(store.keys.workflow(wid), *_FIELDS)
            rows = pipe.execute()
        for wid, row in zip(batch, rows, strict=True):
            state, submitted, dispatched, done, total = (
                v.decode() if isinstance(v, bytes) else v for v in row
            )
            if state is None or state in WORKFLOW_FINAL:
                continue
            if not dispatched and now - float(submitted or now) > undispatched_after_s:
                log.warning("workflow %s was stored but never dispatched: dispatching", wid)
                dispatch_stored(orchestrator.app, store, wid)
                report.dispatched.append(wid)
            elif int(done or 0) >= int(total or 0) and finish_workflow(
                orchestrator.app, store, wid
            ):
                log.warning("workflow %s had ended without being finished: finished", wid)
                report.finished.append(wid)
            elif dispatched:
                for step in _stranded_counter_steps(orchestrator, wid, now - undispatched_after_s):
                    log.warning("workflow %s step %s was ready but never published", wid, step)
                    report.released.append(f"{wid}/{step}")
    return report


def _repair_orphans(
    orchestrator: Orchestrator, report: SweepReport, now: float, settle_s: float
) -> None:
    store = orchestrator.store
    gone = [
        i.decode() if isinstance(i, bytes) else str(i)
        for i in store.redis.smembers(store.keys.incarnations)
    ]
    dead = [i for i in gone if not store.worker_alive(i)]
    if dead:
        log.warning("workers %s died: looking for messages they lost", ", ".join(dead))
        store.redis.srem(store.keys.incarnations, *dead)
        store.mark_disrupted(now)
    disrupted, repaired = store.disruption()
    if disrupted <= repaired:
        return
    if now - disrupted >= settle_s:
        # Once it has settled: reconnected workers first put back what they still held.
        before = disrupted
    elif now - repaired >= _UNSETTLED_REPAIR * settle_s:
        # Disruptions that never settle (workers dying over and over) must not keep a lost
        # message waiting for ever: what was queued settle_s ago and has no message
        # anywhere by now is lost, whatever comes next (a copy still on its way back is
        # harmless: a step runs once).
        before = now - settle_s
    else:
        return
    report.orphans = repair(orchestrator.app, store, before=before)
    store.mark_repaired(before)


def _stranded_counter_steps(
    orchestrator: Orchestrator, workflow_id: str, before: float
) -> list[str]:
    """Publish counter steps at zero that are still pending although their last dependency
    ended before ``before`` and that were never published (no ticket kept): the step
    runtime publishes a ready step at once, so one without a message that long after was
    lost. (One published but still waiting in a long queue is left alone: a second copy
    of a chord's gate would publish its whole held part again.)"""
    store = orchestrator.store
    zero = [step for step, count in store.waiting_counts(workflow_id).items() if int(count) <= 0]
    if not zero:
        return []
    records = store.step_records(workflow_id)
    zero = [step for step in zero if records.get(step, {}).get("state") == "pending"]
    if not zero:
        return []
    defs = store.step_defs_of(workflow_id, zero)
    published = store.tickets_of(workflow_id, zero)
    stranded = []
    for step in zero:
        if step in published:
            continue
        ends = [records.get(d, {}).get("finished_at") or 0 for d in defs[step].get("after", [])]
        if max(ends, default=0) < before:
            stranded.append(step)
    if stranded:
        fields = store.workflow_fields(workflow_id)
        mark_queued(store, workflow_id, stranded)
        publish_steps(orchestrator.app, store, workflow_id, stranded, fields["priority"])
    return stranded
