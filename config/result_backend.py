"""Celery's Redis result backend, minus the subscription on every publish.

treadle never waits on a Celery AsyncResult (step state lives in the state store), yet the
stock backend SUBSCRIBEs to each published task's result channel (a round trip per step
and a listener thread per publisher) and UNSUBSCRIBEs when the AsyncResult is collected.
Results are still written, so chords count as usual; nothing here may wait on one.

It also rides out a Redis restart while a chord's header task reports its end: the stock
backend lets the connection error escape, Celery then records the header task as failed,
and the chord body fails with ChordError without ever running. The counting script
counts each header task once, so calling it again is safe. But the same script also
takes the claim to publish the body (SET NX, under a token new to each report): when the
reply that carried the claim is the one lost, the report made again could never take it
and nobody would publish the body. So the tokens of a report's failed tries are
remembered, and a claim still held under one of them is given back before trying anew.
"""

from __future__ import annotations

import threading
import time
from functools import cached_property
from typing import Any

import redis
from celery.backends.redis import CHORD_PART_RETURN_LUA, RedisBackend

from config.redis_client import BACKOFF_CAP_S

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


class PublishOnlyRedisBackend(RedisBackend):  # type: ignore[misc]
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
        script = self.client.register_script(CHORD_PART_RETURN_LUA)

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
        window = float(self.app.conf.get("treadle_redis_retry_s") or 60.0)
        deadline = time.monotonic() + window
        delay = 0.05
        tried: list[tuple[str, str]] = []
        self._claims.tried = tried
        try:
            while True:
                try:
                    self._give_back(tried)
                    return super().on_chord_part_return(request, state, result, **kwargs)
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
