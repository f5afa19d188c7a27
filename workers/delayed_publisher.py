"""A worker bootstep that publishes delayed messages (retries) when they fall due.

Every worker process and the orchestrator run one, so retries go on as long as any of
them is up; the Lua script that takes due messages hands each one to a single poller.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery, bootsteps, signature

from config.settings import Settings
from orchestrator.delays import DelayedMessages
from orchestrator.keys import Keys
from orchestrator.store import StateStore

log = logging.getLogger("treadle.delays")

POLL_INTERVAL_S = 0.1


def install_delayed_publisher(app: Celery, settings: Settings, redis_url: str) -> None:
    class DelayedPublisher(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = {"celery.worker.components:Timer"}

        def __init__(self, worker: Any, **kwargs: Any):
            super().__init__(worker, **kwargs)
            self.tref: Any = None
            self.client: redis.Redis | None = None
            self.delayed: DelayedMessages | None = None

        def start(self, worker: Any) -> None:
            self.client = redis.Redis.from_url(redis_url, health_check_interval=30)
            store = StateStore(self.client, Keys(settings.key_prefix))
            self.delayed = DelayedMessages(store)
            self.tref = worker.timer.call_repeatedly(POLL_INTERVAL_S, self.run, priority=10)

        def stop(self, worker: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
            if self.client is not None:
                self.client.close()

        def run(self) -> None:
            if self.delayed is None:
                return
            try:
                self.delayed.publish_due(lambda m: signature(m, app=app).apply_async())
            except Exception:  # Redis away for a moment: the next tick tries again
                log.exception("publishing due retries failed")

    app.steps["worker"].add(DelayedPublisher)
