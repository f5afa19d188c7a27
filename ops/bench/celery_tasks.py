"""The raw Celery baseline, written the way Celery's documentation shows it.

A module-level app and ``@app.task`` functions, run by a plain ``celery worker`` (see
``ops.bench.processes``): unlike treadle's own code (an app factory, never an app made at
import), this is deliberately what a Celery user writes, so that the comparison is with
Celery as documented. Only the settings the comparison must share with treadle are
changed from Celery's defaults: JSON, late acks and a prefetch of one.

The worker reads the Redis URL from ``BENCH_CELERY_URL`` when it imports this module; the
bench process calls :func:`configure` instead.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

URL_ENV = "BENCH_CELERY_URL"
QUEUE = "bench-celery"
PUBLISH_QUEUE = "bench-celery-publish"  # no worker consumes it: publishing alone is timed


def settings(url: str) -> dict[str, Any]:
    return {
        "broker_url": url,
        "result_backend": url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": QUEUE,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }


app = Celery("bench_celery")
if os.environ.get(URL_ENV):
    app.conf.update(settings(os.environ[URL_ENV]))


def configure(url: str) -> Celery:
    app.conf.update(settings(url))
    return app


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.join")
def join(results: list[Any]) -> int:
    return len(results)
