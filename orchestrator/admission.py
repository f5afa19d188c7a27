"""Admission control: a submission is refused, before anything of it is written, when
its priority class already has ``high`` or more outstanding steps (queued, running or
waiting for a limit or a retry). The refusal says when to try again: the excess over
the watermark divided by how fast the class has been finishing steps lately.

The counts are kept by ``lua/transition.lua`` with every state change, so reading them
costs one round trip. How many steps a class has finished is read from the metrics'
moves (``orchestrator.metrics``) rather than counted a second time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from config.topology import PRIORITY_ORDER, Topology
from orchestrator import metrics
from orchestrator.errors import Refused
from orchestrator.states import STEP_FINAL, StepState
from orchestrator.store import StateStore, text

MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 300
# Nothing of the class finished lately (it was idle, or nothing is measured yet): ask
# again soon; a client that is refused again backs off further.
UNKNOWN_RATE_RETRY_AFTER_S = 5
# How far back the finishing rate is measured: long enough to smooth bursts, short
# enough to follow a change of load.
RATE_WINDOW_S = 30.0
MIN_SAMPLE_S = 2.0
# Out of these into a final state is a step finished (as the outstanding count has it).
_OUTSTANDING = (StepState.queued, StepState.running, StepState.retrying)
_FINISHES = [(old.value, new.value) for old in _OUTSTANDING for new in sorted(STEP_FINAL)]


@dataclass(frozen=True)
class Load:
    klass: str
    outstanding: int  # steps queued, running or waiting: the load now
    high: int
    low: int
    parked: int = 0  # steps of parked workflows: no load now, but admitted work

    @property
    def over(self) -> bool:
        """At or over the watermark: submissions are refused, bulk work is parked."""
        return self.outstanding + self.parked >= self.high

    @property
    def overloaded(self) -> bool:
        return self.outstanding >= self.high

    @property
    def calm(self) -> bool:
        """Below the low mark: parked work may come back."""
        return self.outstanding < self.low


def retry_after_s(excess: int, finished_per_s: float | None) -> int:
    """Whole seconds until ``excess`` steps are likely done at the measured rate (None:
    not measured yet)."""
    if not finished_per_s or finished_per_s <= 0:
        return UNKNOWN_RATE_RETRY_AFTER_S
    return max(MIN_RETRY_AFTER_S, math.ceil(min(MAX_RETRY_AFTER_S, excess / finished_per_s)))


class Admission:
    def __init__(self, store: StateStore, topology: Topology):
        self.store = store
        self.topology = topology

    def loads(self) -> dict[str, Load]:
        fields = [f for k in PRIORITY_ORDER for f in (k.value, f"parked:{k.value}")]
        raw = self.store.redis.hmget(self.store.keys.outstanding, fields)
        out = {}
        for i, klass in enumerate(PRIORITY_ORDER):
            watermark = self.topology.admission_of(klass)
            outstanding, parked = (max(int(v or 0), 0) for v in raw[2 * i : 2 * i + 2])
            out[klass.value] = Load(
                klass.value, outstanding, watermark.high, watermark.low_mark, parked
            )
        return out

    def admit(self, klass: str) -> None:
        """Raises Refused (exit 3, HTTP 429) if ``klass`` is at or over its watermark."""
        load = self.loads()[klass]
        if not load.over:
            return
        excess = load.outstanding + load.parked - load.high + 1
        wait = retry_after_s(excess, self._finished_per_s(klass))
        metrics.count(self.store, "refused", klass)
        parked = f" (and {load.parked} parked)" if load.parked else ""
        raise Refused(
            f"the {klass} class has {load.outstanding} outstanding steps{parked}, at or over its "
            f"watermark of {load.high}: nothing was enqueued; retry in {wait} s",
            retry_after_s=wait,
        )

    def finished(self, klasses: list[str]) -> dict[str, int]:
        """How many steps of each class have finished so far (out of queued, running or
        retrying into a final state)."""
        fields = [metrics.series("moved", k, old, new) for k in klasses for old, new in _FINISHES]
        values = self.store.redis.hmget(self.store.keys.metrics, fields)
        width = len(_FINISHES)
        return {
            k: sum(int(v or 0) for v in values[i * width : (i + 1) * width])
            for i, k in enumerate(klasses)
        }

    def _finished_per_s(self, klass: str) -> float | None:
        """Steps of the class finished per second, measured from a sample of its
        finished count taken between one and two RATE_WINDOW_S ago (see ``sample``)."""
        sample_raw = self.store.redis.hget(self.store.keys.outstanding, f"sample:{klass}")
        if not sample_raw:
            return None
        then, then_done = text(sample_raw).split()[:2]
        elapsed = time.time() - float(then)
        if elapsed < MIN_SAMPLE_S:
            return None
        return (self.finished([klass])[klass] - int(then_done)) / elapsed

    def sample(self) -> None:
        """Keep two samples of each class's finished count, the newer at most
        RATE_WINDOW_S old; called on a timer by every worker's upkeep."""
        redis, key = self.store.redis, self.store.keys.outstanding
        now = time.time()
        klasses = [klass.value for klass in PRIORITY_ORDER]
        finished = self.finished(klasses)
        values = redis.hmget(key, [f"sample:{klass}" for klass in klasses])
        updates = {}
        for klass, raw in zip(klasses, values, strict=True):
            done, sample = finished[klass], text(raw or b"").split()
            if len(sample) == 4 and now - float(sample[2]) < RATE_WINDOW_S:
                continue
            newer = sample[2:] if len(sample) == 4 else [repr(now), str(done)]
            updates[f"sample:{klass}"] = " ".join([*newer, repr(now), str(done)])
        if updates:
            redis.hset(key, mapping=updates)  # type: ignore[arg-type]
