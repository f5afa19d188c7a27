"""The run and wait times a worker process measures, added to the metrics hash once a
second instead of with every transition.

The histograms are most of what a step's two transitions would write to the metrics hash
(a bucket and a sum each). Adding them up here first turns four Redis commands a step
into a few a second per process, however many steps it runs. What it costs: a worker
killed outright loses its last second of observations (as a Prometheus client's
in-process histograms lose everything), and a scrape sees them up to a second late. The
step counts, which must stay exact, are still written by the transition itself.

prometheus-client's own histograms would live in each worker process and need scraping
one by one; treadle's counts live in Redis (see ``orchestrator.metrics``), so this keeps
the sums in Redis's layout.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict

import redis

from orchestrator.metrics import bucket_of, series

log = logging.getLogger("treadle.metrics")

FLUSH_EVERY_S = 1.0


class Observations:
    """Histogram observations of one process, flushed by a daemon thread it starts on
    the first one (so a prefork child starts its own after the fork)."""

    def __init__(self, client: redis.Redis, key: str, every_s: float = FLUSH_EVERY_S):
        self.client, self.key, self.every_s = client, key, every_s
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._sums: defaultdict[str, float] = defaultdict(float)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self, task: str, seconds: float) -> None:
        """One attempt of ``task`` ran for ``seconds``."""
        self._observe("run", task, seconds)

    def wait(self, task: str, seconds: float) -> None:
        """A step of ``task`` waited ``seconds`` from queued to started."""
        self._observe("wait", task, seconds)

    def _observe(self, name: str, label: str, seconds: float) -> None:
        if seconds < 0:
            return  # clocks of two hosts disagree: no honest figure
        with self._lock:
            self._counts[series(name, label, bucket_of(seconds))] += 1
            self._sums[series(f"{name}_sum", label)] += seconds
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="treadle-observations", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.flush()

    def flush(self) -> None:
        """Add what was observed to Redis; kept for the next try if Redis is away."""
        with self._lock:
            counts, sums = self._counts, self._sums
            self._counts, self._sums = Counter(), defaultdict(float)
        if not counts and not sums:
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for field, n in counts.items():
                    pipe.hincrby(self.key, field, n)
                for field, total in sums.items():
                    pipe.hincrbyfloat(self.key, field, total)
                pipe.execute()
        except redis.RedisError:
            # Most likely not applied (the connection broke before the commands went), so
            # keep them; a reply lost after they went would count them twice, an error
            # the metrics can carry.
            log.warning("could not add %d step timings to the metrics; will retry", len(counts))
            with self._lock:
                self._counts.update(counts)
                for field, total in sums.items():
                    self._sums[field] += total

    def close(self) -> None:
        """Flush and stop (a worker process shutting down)."""
        self._stop.set()
        self.flush()
