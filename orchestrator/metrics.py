"""Prometheus metrics, read from Redis at scrape time.

Workers run on many hosts and come and go; scraping each of them would need service
discovery and would lose what a killed worker counted. So the counts live in Redis,
written by the Lua scripts that already record every transition (no round trip of their
own), except the run and wait times a worker measures itself and adds once a second
(``workers.observations``): the ``{p}:metrics`` hash, whose fields are JSON arrays naming
a series, such as ``["moved", "bulk", "queued", "running"]`` or ``["run", "shop.pay", 4]``
(a histogram bucket, stored one by one; summed up here). Whatever is cheaper to look at
than to count (queue depths, the dead-letter queue, the oldest running step in the
workers' heartbeats) is looked at here. Any orchestrator replica serves the same numbers.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from config.queues import queue_for
from config.topology import PRIORITY_ORDER, Topology
from orchestrator import heartbeats, tickets
from orchestrator.states import STEP_FINAL, StepState
from orchestrator.store import StateStore

# Upper bounds of the histograms' buckets, in seconds, as ``lua/transition.lua`` has them.
BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
)  # fmt: skip

# Steps that are load: admission control's outstanding count (orchestrator.admission).
_OUTSTANDING = frozenset({StepState.queued, StepState.running, StepState.retrying})
_OTHERS = ["", *(s.value for s in StepState if s not in _OUTSTANDING)]  # "": not yet a step
# Moves that add to the outstanding count, that take from it, and that finish a step.
_INTO = [(old, new.value) for old in _OTHERS for new in sorted(_OUTSTANDING)]
_OUT_OF = [(old.value, new) for old in sorted(_OUTSTANDING) for new in _OTHERS if new]
_FINISHES = [(old.value, new.value) for old in sorted(_OUTSTANDING) for new in sorted(STEP_FINAL)]

_HISTOGRAMS = {
    "run": ("treadle_step_run_seconds", "Run time of step attempts, per task.", "task"),
    "wait": (
        "treadle_step_wait_seconds",
        "Dependency wait: from queued (its dependencies ended) to started, per task; "
        "includes waits for shared limits.",
        "task",
    ),
    "latency": (
        "treadle_workflow_latency_seconds",
        "Workflows from submission to their end, per priority class.",
        "class",
    ),
}


def series(*parts: str | int) -> str:
    """A field of the metrics hash, encoded as the Lua scripts' cjson encodes it."""
    return json.dumps(list(parts), separators=(",", ":"))


def bucket_of(seconds: float) -> int:
    """The histogram bucket (1-based, stored one by one) an observation falls in, as the
    Lua scripts number them: the first bound it fits under; past the last, +Inf."""
    for index, bound in enumerate(BUCKETS_S, start=1):
        if seconds <= bound:
            return index
    return len(BUCKETS_S) + 1


def typical_run_s(store: StateStore, tasks: Sequence[str]) -> dict[str, float | None]:
    """How long each task's attempts take, as the workers measured them (None: never
    measured), in one round trip: the mean, or if longer, the lower bound of the bucket
    that holds the 95th percentile, so that a task whose run time varies (by its
    arguments, say) counts as long as its long runs."""
    width = len(BUCKETS_S) + 2  # the sum, then every bucket
    fields = [
        field
        for task in tasks
        for field in (
            series("run_sum", task),
            *(series("run", task, b) for b in range(1, width)),
        )
    ]
    if not fields:
        return {}
    raw = store.redis.hmget(store.keys.metrics, fields)
    out: dict[str, float | None] = {}
    for index, task in enumerate(tasks):
        total, *counted = raw[index * width : (index + 1) * width]
        counts = [int(c) if c is not None else 0 for c in counted]
        attempts = sum(counts)
        if not attempts or total is None:
            out[task] = None
            continue
        out[task] = max(float(total) / attempts, _percentile_floor(counts, 0.95))
    return out


def _percentile_floor(counts: Sequence[int], share: float) -> float:
    """The lower bound of the bucket that holds the ``share`` percentile."""
    wanted, seen = share * sum(counts), 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= wanted:
            return BUCKETS_S[index - 1] if index > 0 else 0.0
    return BUCKETS_S[-1]


def outstanding_counts(store: StateStore) -> dict[str, tuple[int, int]]:
    """Per class: steps queued, running or retrying (parked workflows' left out), and the
    parked workflows' ones."""
    klasses = [klass.value for klass in PRIORITY_ORDER]
    moves = [series("moved", k, a, b) for k in klasses for a, b in (*_INTO, *_OUT_OF)]
    with store.redis.pipeline(transaction=False) as pipe:
        pipe.hmget(store.keys.metrics, moves)
        pipe.hmget(store.keys.outstanding, [f"parked:{k}" for k in klasses])
        moved, parked = pipe.execute()
    width, into = len(_INTO) + len(_OUT_OF), len(_INTO)
    out = {}
    for i, klass in enumerate(klasses):
        row = [int(v or 0) for v in moved[i * width : (i + 1) * width]]
        held = max(int(parked[i] or 0), 0)
        out[klass] = (max(sum(row[:into]) - sum(row[into:]) - held, 0), held)
    return out


def finished_counts(store: StateStore, klasses: list[str]) -> dict[str, int]:
    """How many steps of each class have finished so far (out of queued, running or
    retrying into a final state)."""
    fields = [series("moved", k, old, new) for k in klasses for old, new in _FINISHES]
    values = store.redis.hmget(store.keys.metrics, fields)
    width = len(_FINISHES)
    return {
        k: sum(int(v or 0) for v in values[i * width : (i + 1) * width])
        for i, k in enumerate(klasses)
    }


def count(store: StateStore, *parts: str | int) -> None:
    """Add one to a counter (for the rare events Python sees first: refusals)."""
    store.redis.hincrby(store.keys.metrics, series(*parts), 1)


class TreadleCollector(Collector):
    def __init__(self, store: StateStore, topology: Topology):
        self.store = store
        self.topology = topology

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        stored = self._stored()
        yield from self._steps(stored)
        yield from self._histograms(stored)
        yield from self._counters(stored)
        yield from self._queues(now)
        yield from self._running(now)
        yield from self._load()

    # -- what the scripts counted ---------------------------------------------------------

    def _stored(self) -> list[tuple[list[Any], float]]:
        raw = self.store.redis.hgetall(self.store.keys.metrics)
        out = []
        for field, value in raw.items():
            try:
                parts = json.loads(field)
            except ValueError:
                continue
            if isinstance(parts, list) and parts:
                out.append((parts, float(value)))
        return out

    @staticmethod
    def _steps(stored: Iterable[tuple[list[Any], float]]) -> Iterator[Metric]:
        now_in = GaugeMetricFamily(
            "treadle_steps", "Steps now in each unfinished state.", labels=["class", "state"]
        )
        ended = CounterMetricFamily(
            "treadle_steps_finished",
            "Steps that reached each final state.",
            labels=["class", "state"],
        )
        into: dict[tuple[str, str], float] = defaultdict(float)
        for klass, state, value in _step_counts(stored):
            into[klass, state] += value
        for (klass, state), value in sorted(into.items()):
            if state in STEP_FINAL:
                ended.add_metric([klass, state], value)
            else:
                now_in.add_metric([klass, state], max(value, 0.0))
        yield now_in
        yield ended

    @staticmethod
    def _histograms(stored: Iterable[tuple[list[Any], float]]) -> Iterator[Metric]:
        buckets: dict[str, dict[str, list[float]]] = defaultdict(dict)
        sums: dict[str, dict[str, float]] = defaultdict(dict)
        for parts, value in stored:
            name = str(parts[0])
            if name in _HISTOGRAMS and len(parts) == 3:
                counts = buckets[name].setdefault(str(parts[1]), [0.0] * (len(BUCKETS_S) + 1))
                index = int(parts[2]) - 1
                if 0 <= index < len(counts):
                    counts[index] += value
            elif name.endswith("_sum") and name[:-4] in _HISTOGRAMS and len(parts) == 2:
                # += : a label may be stored under two spellings (cjson's and Python's).
                label_sums = sums[name[:-4]]
                label_sums[str(parts[1])] = label_sums.get(str(parts[1]), 0.0) + value
        for kind, (metric, doc, label) in _HISTOGRAMS.items():
            family = HistogramMetricFamily(metric, doc, labels=[label])
            for label_value, counts in sorted(buckets[kind].items()):
                cumulative: list[tuple[str, float]] = []
                total = 0.0
                for bound, n in zip([*map(str, BUCKETS_S), "+Inf"], counts, strict=True):
                    total += n
                    cumulative.append((bound, total))
                family.add_metric(
                    [label_value], cumulative, sum_value=sums[kind].get(label_value, 0.0)
                )
            yield family

    @staticmethod
    def _counters(stored: Iterable[tuple[list[Any], float]]) -> Iterator[Metric]:
        retries = CounterMetricFamily(
            "treadle_step_retries", "Failed attempts that were retried, per task.", labels=["task"]
        )
        refused = CounterMetricFamily(
            "treadle_admission_refused",
            "Submissions refused by admission control (backpressure), per class.",
            labels=["class"],
        )
        deferred = CounterMetricFamily(
            "treadle_limit_deferrals",
            "Times a step was held back by a shared limit: per resource (keys and tenant "
            "caps per kind) and reason.",
            labels=["limit", "reason"],
        )
        workflows = CounterMetricFamily(
            "treadle_workflows_finished",
            "Workflows that ended, per class and state.",
            labels=["class", "state"],
        )
        for parts, value in stored:
            name, labels = parts[0], [str(p) for p in parts[1:]]
            if name == "retries" and len(labels) == 1:
                retries.add_metric(labels, value)
            elif name == "refused" and len(labels) == 1:
                refused.add_metric(labels, value)
            elif name == "deferred" and len(labels) == 2:
                deferred.add_metric(labels, value)
            elif name == "workflows" and len(labels) == 2:
                workflows.add_metric(labels, value)
        yield from (retries, refused, deferred, workflows)

    # -- what is looked at --------------------------------------------------------------

    def _queues(self, now: float) -> Iterator[Metric]:
        redis, keys = self.store.redis, self.store.keys
        names = [queue_for(k) for k in PRIORITY_ORDER]
        with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.llen(name)
                pipe.lindex(name, -1)  # the next one taken: the oldest
            pipe.hlen(keys.dead_letters)
            pipe.zcard(keys.delayed)
            replies = pipe.execute()
        yield _per_class(
            "treadle_queue_depth",
            "Messages waiting on each class's queue.",
            [float(replies[2 * i]) for i in range(len(PRIORITY_ORDER))],
        )
        yield _per_class(
            "treadle_queue_oldest_seconds",
            "How long the next message of each class's queue has been queued.",
            [self._queued_for(replies[2 * i + 1], now) for i in range(len(PRIORITY_ORDER))],
        )
        yield GaugeMetricFamily(
            "treadle_dead_letters", "Entries in the dead-letter queue.", value=replies[-2]
        )
        yield GaugeMetricFamily(
            "treadle_delayed_messages",
            "Messages kept in Redis until due: retries in their backoff, steps waiting for "
            "a shared limit's token or circuit.",
            value=replies[-1],
        )

    def _queued_for(self, raw: bytes | None, now: float) -> float:
        if raw is None:
            return 0.0
        try:
            key = tickets.key_of_payload(json.loads(raw))
        except ValueError:
            return 0.0
        if key is None:
            return 0.0
        record = self.store.step_records_of(key[0], [key[1]]).get(key[1]) or {}
        queued = record.get("queued_at")
        return max(now - float(queued), 0.0) if queued else 0.0

    def _running(self, now: float) -> Iterator[Metric]:
        oldest = heartbeats.oldest_running(self.store)
        firsts = [oldest.get(klass.value) for klass in PRIORITY_ORDER]
        yield _per_class(
            "treadle_oldest_running_seconds",
            "How long the longest-running step of each class has been running, as the "
            "workers' last heartbeats tell (every worker_lost_after_s / 3).",
            [max(now - first, 0.0) if first else 0.0 for first in firsts],
        )

    def _load(self) -> Iterator[Metric]:
        load = outstanding_counts(self.store)
        counts = [load[k.value] for k in PRIORITY_ORDER]
        yield _per_class(
            "treadle_outstanding_steps",
            "Steps queued, running or retrying, per class (what admission control counts).",
            [float(outstanding) for outstanding, _ in counts],
        )
        yield _per_class(
            "treadle_parked_steps",
            "Steps of parked workflows, per class.",
            [float(parked) for _, parked in counts],
        )
        yield _per_class(
            "treadle_admission_high",
            "The watermark of outstanding steps above which submissions are refused.",
            [float(self.topology.admission_of(k).high) for k in PRIORITY_ORDER],
        )


def _step_counts(stored: Iterable[tuple[list[Any], float]]) -> Iterator[tuple[str, str, float]]:
    """(class, state, how many) to add up: steps created in a state (``["steps", class,
    state]``) and moves between states (``["moved", class, from, to]``: one into ``to``
    and, out of an unfinished state, one out of ``from``; a finished state's count only
    grows, as a Prometheus counter must)."""
    for parts, value in stored:
        if parts[0] == "steps" and len(parts) == 3:
            yield str(parts[1]), str(parts[2]), value
        elif parts[0] == "moved" and len(parts) == 4:
            klass, old, new = str(parts[1]), str(parts[2]), str(parts[3])
            yield klass, new, value
            if old and old not in STEP_FINAL:
                yield klass, old, -value


def _per_class(name: str, doc: str, values: list[float]) -> GaugeMetricFamily:
    """A gauge with one value per priority class, in PRIORITY_ORDER."""
    family = GaugeMetricFamily(name, doc, labels=["class"])
    for klass, value in zip(PRIORITY_ORDER, values, strict=True):
        family.add_metric([klass.value], value)
    return family


def exposition(store: StateStore, topology: Topology) -> tuple[bytes, str]:
    """The metrics in Prometheus's text format, and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TreadleCollector(store, topology))
    return generate_latest(registry), CONTENT_TYPE_LATEST
