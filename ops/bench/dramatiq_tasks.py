"""The outside reference: a Dramatiq no-op actor, as Dramatiq's documentation writes one.

A module-level broker and ``@dramatiq.actor``; ``dramatiq ops.bench.dramatiq_tasks`` runs
it (see ``ops.bench.processes``). The broker's Redis URL comes from ``BENCH_DRAMATIQ_URL``,
set before this module is imported, in the worker and in the bench process alike.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

URL_ENV = "BENCH_DRAMATIQ_URL"
QUEUE = "bench-dramatiq"

if URL_ENV not in os.environ:
    raise RuntimeError(f"set {URL_ENV} to the bench's Redis before importing {__name__}")
broker = RedisBroker(url=os.environ[URL_ENV])  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def noop() -> None:
    return None
