"""Crash recovery with a name: find workflows a crash left half-done and finish the job.

- submitted but never dispatched (the submitter died between storing and publishing):
  dispatch them;
- every step ended but the workflow is not final (a worker died between recording its
  step and finishing the workflow): finish them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from orchestrator.dispatch import dispatch_stored
from orchestrator.service import Orchestrator
from orchestrator.states import WORKFLOW_FINAL
from workers.runtime import finish_workflow

log = logging.getLogger("treadle.recovery")

_FIELDS = ("state", "submitted_at", "dispatched_at", "steps_done", "steps_total")


@dataclass
class SweepReport:
    dispatched: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)


def sweep(orchestrator: Orchestrator, undispatched_after_s: float = 10.0) -> SweepReport:
    store = orchestrator.store
    report = SweepReport()
    now = time.time()
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
            elif int(done or 0) >= int(total or 0) and finish_workflow(store, wid):
                log.warning("workflow %s had ended without being finished: finished", wid)
                report.finished.append(wid)
    return report
