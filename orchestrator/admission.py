"""Admission control: a submission is refused, before anything of it is written, when
its priority class already has ``high`` or more outstanding steps (queued, running or
waiting for a limit or a retry). The refusal says when to try again: the excess over
the watermark divided by how fast the class has been finishing steps lately.

The counts are the metrics' moves (``["moved", class, from, to]``, which
``lua/transition.lua`` counts with every state change): outstanding is what moved into
those states less what moved out, less the steps of parked workflows (which the script
keeps apart); finished is what moved out of them into a final state. Reading them costs
one round trip, and no step pays a write for them that the metrics do not pay already.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from config.topology import PRIORITY_ORDER, Topology
from orchestrator import metrics
from orchestrator.errors import Refused
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
        counts = metrics.outstanding_counts(self.store)
        out = {}
        for klass in PRIORITY_ORDER:
            watermark = self.topology.admission_of(klass)
            outstanding, parked = counts[klass.value]
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
        return (metrics.finished_counts(self.store, [klass])[klass] - int(then_done)) / elapsed

    def sample(self) -> None:
        """Keep two samples of each class's finished count, the newer at most
        RATE_WINDOW_S old; called on a timer by every worker's upkeep."""
        redis, key = self.store.redis, self.store.keys.outstanding
        now = time.time()
        klasses = [klass.value for klass in PRIORITY_ORDER]
        finished = metrics.finished_counts(self.store, klasses)
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
