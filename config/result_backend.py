"""Celery's Redis (and Sentinel) result backend, minus the subscription on every publish,
plus riding out a lost connection.

treadle never waits on a Celery AsyncResult (step state lives in the state store), yet the
stock backend SUBSCRIBEs to each published task's result channel (a round trip per step
and a listener thread per publisher) and UNSUBSCRIBEs when the AsyncResult is collected.
Results are still written, so chords count as usual; nothing here may wait on one.

Chords are where a lost connection hurts. The header task that ends a chord runs Celery's
counting script, which also claims the right to publish the body (SET NX under a token
new to each report), then reads the header results and publishes the body.

- The backend's connections retry through a restart or a failover for
  ``redis_retry_s``, like treadle's own clients (through Sentinel: to the new primary).
  The stock backend gives up at once, and a read that fails after the claim is taken is
  swallowed by Celery as the chord's failure: the body would never run.
- A retried command repeats the counting script with the same token; the script here
  takes the claim again when it already holds that token (the stock one would find the
  claim taken, by itself, and publish nothing).
- A connection error that still escapes (the outage outlasted the retries) makes the
  whole report run again, with a new token: the claim still held under a token of a
  failed try is given back first. The script counts each header task once, so counting
  again is safe.
"""

from __future__ import annotations

import threading
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

# Gives back a chord's publish claim if it is still held under one of our tokens.
# KEYS: 1 the chord's claim key (``.c``)   ARGV: the tokens of the abandoned tries
_GIVE_BACK_CLAIM_LUA = """
local holder = redis.call('GET', KEYS[1])
for _, token in ipairs(ARGV) do
  if holder == token then
    return redis.call('DEL', KEYS[1])
  end
end
return 0
"""


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

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result

    def on_result_fulfilled(self, result: Any) -> None:
        return None

    @cached_property
    def _claims(self) -> threading.local:
        """Per thread: the (claim key, token) of each counting call of the report under way."""
        return threading.local()

    @cached_property
    def _chord_part_return_script(self) -> Any:
        script = self.client.register_script(CHORD_COUNT_LUA)

        def count(keys: list[str], args: list[Any], client: Any = None) -> Any:
            # Celery calls it with keys[5] the claim key and args[7] the claim token.
            # Remembered before the call: its reply is what a broken connection loses.
            tried = getattr(self._claims, "tried", None)
            if tried is not None:
                tried.append((keys[5], str(args[7])))
            return script(keys=keys, args=args, client=client)

        return count

    @cached_property
    def _give_back_claim_script(self) -> Any:
        return self.client.register_script(_GIVE_BACK_CLAIM_LUA)

    def on_chord_part_return(self, request: Any, state: Any, result: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self._retry_window_s()
        delay = 0.05
        tried: list[tuple[str, str]] = []
        self._claims.tried = tried
        try:
            while True:
                try:
                    self._give_back(tried)
                    return super().on_chord_part_return(  # type: ignore[misc]
                        request, state, result, **kwargs
                    )
                except (redis.ConnectionError, redis.TimeoutError):
                    if time.monotonic() + delay > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, BACKOFF_CAP_S)
        finally:
            self._claims.tried = None

    def _give_back(self, tried: list[tuple[str, str]]) -> None:
        """Release a publish claim an earlier, failed try of this report may have taken,
        so that this try can take it (and publish the body) itself. Had the earlier try
        already published the body, the body runs twice: harmless, a step runs once."""
        for claim_key in {key for key, _ in tried}:
            tokens = [token for key, token in tried if key == claim_key]
            self._give_back_claim_script(keys=[claim_key], args=tokens, client=self.client)
        tried.clear()


class PublishOnlyRedisBackend(_PublishOnly, RedisBackend):  # type: ignore[misc]
    pass


class PublishOnlySentinelBackend(_PublishOnly, SentinelBackend):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connparams["connection_class"] = PrimaryConnection
