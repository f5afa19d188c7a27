"""Raw Celery's side: the canvas as Celery's documentation writes it, and its times.

A run lasts from the bench's clock just before ``apply_async`` to the latest
``date_done`` among its results: the time the worker recorded each task's end, the
counterpart of treadle's recorded ``finished_at``. The results are awaited with
``get()``, as documented.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import redis
from celery import chain, chord, group

from ops.bench import celery_tasks

TIMEOUT_S = 600.0


def _timestamp(done: datetime | None) -> float:
    if done is None:
        raise RuntimeError("a baseline task has no date_done")
    return (done if done.tzinfo else done.replace(tzinfo=UTC)).timestamp()


def end_of(results: Iterable[Any]) -> float:
    """The latest recorded end among ``results``. Read after the run's command count: a
    result that ``get()`` did not cache costs a GET."""
    return max(_timestamp(r.date_done) for r in results)


def run_chain(steps: int) -> tuple[float, list[Any]]:
    """Start time and the result to read the end from, of a chain of no-op tasks."""
    started = time.time()
    result = chain(celery_tasks.noop.si() for _ in range(steps)).apply_async()
    result.get(timeout=TIMEOUT_S)
    return started, [result]


def run_group(tasks: int) -> tuple[float, list[Any]]:
    """Start time and results of a group of no-op tasks."""
    started = time.time()
    result = group(celery_tasks.noop.s() for _ in range(tasks)).apply_async()
    result.get(timeout=TIMEOUT_S)
    return started, list(result.results)


def run_chord(tasks: int) -> tuple[float, list[Any]]:
    """Start time and the join's result, of ``tasks`` no-op tasks joined by a chord."""
    started = time.time()
    result = chord(celery_tasks.noop.s() for _ in range(tasks))(celery_tasks.join.s())
    result.get(timeout=TIMEOUT_S)
    return started, [result]


def publish_group(tasks: int) -> float:
    """Seconds to publish a group of ``tasks`` to a queue no worker consumes."""
    started = time.perf_counter()
    group(celery_tasks.noop.s() for _ in range(tasks)).apply_async(queue=celery_tasks.PUBLISH_QUEUE)
    return time.perf_counter() - started


def forget(client: redis.Redis) -> None:
    """Delete Celery's stored results and chord counters in ``client``'s database (treadle's
    steps leave them too), and the unconsumed publish queue; never kombu's bindings."""
    keys = list(client.scan_iter(match="celery-task-meta-*", count=1000))
    keys += list(client.scan_iter(match="chord-unlock-*", count=1000))
    for start in range(0, len(keys), 1000):
        client.unlink(*keys[start : start + 1000])
    client.delete(celery_tasks.PUBLISH_QUEUE)
