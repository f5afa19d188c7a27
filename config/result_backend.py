"""Celery's Redis (and Sentinel) result backend, minus the subscription on every publish,
plus riding out a lost connection.

treadle never waits on a Celery AsyncResult (step state lives in the state store), yet the
stock backend SUBSCRIBEs to each published task's result channel (a round trip per step
and a listener thread per publisher) and UNSUBSCRIBEs when the AsyncResult is collected.
Results are still written, so chords count as usual; nothing here may wait on one.

Chords are where a lost connection hurts: the header task that ends the count claims the
chord, reads the header results and publishes the body. The stock backend gives up on
the first lost connection; if that happens after the claim, Celery records the chord as
failed and its body never runs. So the backend's connections retry through a restart or
a failover for ``redis_retry_s``, like treadle's own clients (through Sentinel, asking
for the new primary), and the counting script takes the claim again when a retry
repeats it (its reply was lost, the claim is already this call's). A connection error
that still escapes the count is retried here: the script counts each header task once.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import Any

import redis
from celery.backends.redis import CHORD_PART_RETURN_LUA, RedisBackend, SentinelBackend

from config.redis_client import BACKOFF_CAP_S, retry_options
from config.sentinel_connection import PrimaryConnection

_CLAIM = "if redis.call('SET', ckey, claim_token, 'NX', 'EX', claim_expires) then"
_CLAIM_OR_HOLD = (
    "if redis.call('GET', ckey) == claim_token\n"
    "        or redis.call('SET', ckey, claim_token, 'NX', 'EX', claim_expires) then"
)
if _CLAIM not in CHORD_PART_RETURN_LUA:  # pragma: no cover - a Celery upgrade changed it
    raise ImportError("Celery's chord counting script changed: review config/result_backend.py")
CHORD_COUNT_LUA = CHORD_PART_RETURN_LUA.replace(_CLAIM, _CLAIM_OR_HOLD)


class _PublishOnly:
    """Mixed in before Celery's Redis or Sentinel backend."""

    app: Any
    client: Any
    connparams: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connparams.update(retry_options(self._retry_window_s()))

    def _retry_window_s(self) -> float:
        return float(self.app.conf.get("treadle_redis_retry_s") or 60.0)

    @cached_property
    def _chord_part_return_script(self) -> Any:
        return self.client.register_script(CHORD_COUNT_LUA)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result

    def on_result_fulfilled(self, result: Any) -> None:
        return None

    def on_chord_part_return(self, request: Any, state: Any, result: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self._retry_window_s()
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
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connparams["connection_class"] = PrimaryConnection
