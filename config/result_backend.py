"""Celery's Redis result backend, minus the subscription on every publish.

treadle never waits on a Celery AsyncResult (step state lives in the state store), yet the
stock backend SUBSCRIBEs to each published task's result channel (a round trip per step
and a listener thread per publisher) and UNSUBSCRIBEs when the AsyncResult is collected.
Results are still written, so chords count as usual; nothing here may wait on one.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend


class PublishOnlyRedisBackend(RedisBackend):  # type: ignore[misc]
    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result

    def on_result_fulfilled(self, result: Any) -> None:
        return None
