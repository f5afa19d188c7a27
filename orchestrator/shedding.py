"""Load shedding: under overload, bulk workflows that have not started are parked, and
resumed, oldest first, when the load has fallen. Nothing is dropped.

Overload is a class at or over its ``high`` watermark of outstanding steps (the point
where its submissions are refused too); the load has fallen when every class is below
its ``low`` mark. Parking is a compare-and-set from ``pending`` (no step has started),
so a workflow that has begun is never parked. Its messages stay where they are: a worker
that takes one keeps it with the workflow (``lua/park_message.lua``) instead of running
it, and resuming publishes them again. Parked steps are no load, but still count against
their class's watermark, so admission goes on refusing while work is parked.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from config.topology import PriorityClass
from orchestrator.admission import Admission, Load
from orchestrator.errors import NotFound
from orchestrator.states import WORKFLOW_FINAL, WorkflowState
from orchestrator.store import Change, Conflict, StateStore, text

log = logging.getLogger("treadle.shedding")

PARKABLE = PriorityClass.bulk
BATCH = 100  # workflows parked or resumed per round at most

Publish = Callable[[Mapping[str, Any]], None]


@dataclass
class ShedReport:
    parked: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)


def overload_of(loads: Mapping[str, Load]) -> Load | None:
    """The first class (highest first) at or over its watermark, if any."""
    return next((load for load in loads.values() if load.overloaded), None)


def all_calm(loads: Mapping[str, Load]) -> bool:
    return all(load.calm for load in loads.values())


class LoadShedder:
    def __init__(self, store: StateStore, admission: Admission, publish: Publish):
        self.store = store
        self.admission = admission
        self.publish = publish

    def run(self) -> ShedReport:
        """One round: park while overloaded, resume while calm, finish interrupted resumes."""
        report = ShedReport()
        self._finish_resumed()
        loads = self.admission.loads()
        overload = overload_of(loads)
        if overload is not None:
            self._park(overload, report)
        elif all_calm(loads) and self.store.redis.zcard(self.store.keys.parked):
            self._resume(report)
        return report

    def _park(self, overload: Load, report: ShedReport) -> None:
        keys, redis = self.store.keys, self.store.redis
        why = (
            f"load shedding: the {overload.klass} class has {overload.outstanding} "
            f"outstanding steps, at or over its watermark of {overload.high}"
        )
        # The newest first: the oldest bulk work keeps its place.
        for raw in redis.zrevrange(keys.unstarted, 0, BATCH - 1):
            workflow_id = text(raw)
            now = time.time()
            if not self._move(workflow_id, WorkflowState.pending, WorkflowState.parked, why):
                redis.zrem(keys.unstarted, workflow_id)  # it has started, or ended
                continue
            with redis.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.unstarted, workflow_id)
                pipe.zadd(keys.parked, {workflow_id: now})
                pipe.execute()
            report.parked.append(workflow_id)
            log.warning("workflow %s parked (%s)", workflow_id, why)
            if overload.klass == PARKABLE.value:
                # Parking relieves this class itself: stop once it is under again.
                current = self.admission.loads()[overload.klass]
                if not current.overloaded:
                    break

    def _resume(self, report: ShedReport) -> None:
        keys, redis = self.store.keys, self.store.redis
        for raw in redis.zrange(keys.parked, 0, BATCH - 1):
            workflow_id = text(raw)
            why = "load fell below every class's low mark"
            # If it was cancelled meanwhile, _republish clears it up all the same.
            if self._move(workflow_id, WorkflowState.parked, WorkflowState.pending, why):
                report.resumed.append(workflow_id)
                log.warning("workflow %s resumed: the load has fallen", workflow_id)
            self._republish(workflow_id)
            # Each resumed workflow adds load: stop at the low mark, go on next round.
            if not all_calm(self.admission.loads()):
                break

    def _move(self, workflow_id: str, old: WorkflowState, new: WorkflowState, why: str) -> bool:
        """Park or resume a workflow (a compare-and-set on its state); False if it was
        not in state ``old`` any more."""
        now = time.time()
        at = "parked_at" if new == WorkflowState.parked else "resumed_at"
        try:
            self.store.apply(
                workflow_id,
                [Change(None, old.value, new.value, {at: repr(now)}, {"at": now, "reason": why})],
            )
        except (Conflict, NotFound):
            return False
        return True

    def _finish_resumed(self) -> None:
        """Messages of workflows no longer parked (resumed by a process that died before
        publishing them again, or cancelled) go out now; they ran on nothing meanwhile."""
        keys, redis = self.store.keys, self.store.redis
        ids = [text(i) for i in redis.zrange(keys.parked, 0, -1)]
        if not ids:
            return
        with redis.pipeline(transaction=False) as pipe:
            for workflow_id in ids:
                pipe.hget(keys.workflow(workflow_id), "state")
            states = pipe.execute()
        for workflow_id, state in zip(ids, states, strict=True):
            if text(state) != WorkflowState.parked.value:
                self._republish(workflow_id)

    def _republish(self, workflow_id: str) -> None:
        keys, redis = self.store.keys, self.store.redis
        state = text(redis.hget(keys.workflow(workflow_id), "state"))
        kept = redis.hgetall(keys.parked_messages(workflow_id))
        for step_id, message in kept.items():
            # A cancelled workflow's steps are already recorded cancelled: no need to
            # send their messages round just to be ignored.
            if state and state not in WORKFLOW_FINAL:
                self.publish(json.loads(message))
            redis.hdel(keys.parked_messages(workflow_id), step_id)
        redis.zrem(keys.parked, workflow_id)
