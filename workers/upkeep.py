"""A bootstep in every worker (and the orchestrator) that keeps treadle's time-based
duties going: publishing retries when they fall due, and a heartbeat that tells the
recovery sweep this worker is alive.

Every process publishes due retries, so they go on as long as any of them is up; the Lua
script that takes due messages hands each one to a single poller.
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
from orchestrator.stranded import heartbeat_key

log = logging.getLogger("treadle.upkeep")

POLL_INTERVAL_S = 0.1


def install_upkeep(app: Celery, settings: Settings, redis_url: str, incarnation: str) -> None:
    keys = Keys(settings.key_prefix)
    beat_every_s = settings.worker_lost_after_s / 3

    class Upkeep(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = {"celery.worker.components:Timer"}

        def __init__(self, worker: Any, **kwargs: Any):
            super().__init__(worker, **kwargs)
            self.timers: list[Any] = []
            self.client: redis.Redis | None = None
            self.delayed: DelayedMessages | None = None

        def start(self, worker: Any) -> None:
            self.client = redis.Redis.from_url(redis_url, health_check_interval=30)
            self.delayed = DelayedMessages(StateStore(self.client, keys))
            self.beat()
            self.timers = [
                worker.timer.call_repeatedly(POLL_INTERVAL_S, self.publish_due, priority=10),
                worker.timer.call_repeatedly(beat_every_s, self.beat, priority=10),
            ]

        def stop(self, worker: Any) -> None:
            for timer in self.timers:
                timer.cancel()
            if self.client is not None:
                # A clean stop is not a death: the steps it finished need no recovery.
                self.client.delete(heartbeat_key(keys, incarnation))
                self.client.close()

        def publish_due(self) -> None:
            if self.delayed is None:
                return
            try:
                self.delayed.publish_due(lambda m: signature(m, app=app).apply_async())
            except Exception:  # Redis away for a moment: the next tick tries again
                log.exception("publishing due retries failed")

        def beat(self) -> None:
            if self.client is None:
                return
            try:
                self.client.set(
                    heartbeat_key(keys, incarnation),
                    1,
                    ex=max(1, int(settings.worker_lost_after_s)),
                )
            except Exception:
                log.exception("heartbeat failed")

    app.steps["worker"].add(Upkeep)
