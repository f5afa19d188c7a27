"""Celery's Redis result backend, minus the subscription on every publish.

treadle never waits on a Celery AsyncResult (step state lives in the state store), yet the
stock backend SUBSCRIBEs to each published task's result channel (a round trip per step
and a listener thread per publisher) and UNSUBSCRIBEs when the AsyncResult is collected.
Results are still written, so chords count as usual; nothing here may wait on one.

It also rides out a Redis restart while a chord's header task reports its end: the stock
backend lets the connection error escape, Celery then records the header task as failed,
and the chord body fails with ChordError without ever running. The counting script
counts each header task once, so calling it again is safe.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from celery.backends.redis import RedisBackend, SentinelBackend

from config.redis_client import BACKOFF_CAP_S


class _PublishOnly:
    """Mixed in before Celery's Redis or Sentinel backend."""

    app: Any

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result

    def on_result_fulfilled(self, result: Any) -> None:
        return None

    def on_chord_part_return(self, request: Any, state: Any, result: Any, **kwargs: Any) -> Any:
        window = float(self.app.conf.get("treadle_redis_retry_s") or 60.0)
        deadline = time.monotonic() + window
        delay = 0.05
        while True:
            try:
                return super().on_chord_part_return(  # type: ignore[misc]
                    request, state, result, **kwargs
                )
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_CAP_S)


class PublishOnlyRedisBackend(_PublishOnly, RedisBackend):  # type: ignore[misc]
    pass


class PublishOnlySentinelBackend(_PublishOnly, SentinelBackend):  # type: ignore[misc]
    pass
