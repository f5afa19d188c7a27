"""Delayed messages (retries) kept in Redis until due, then published.

Celery's countdown/ETA would keep a retry as an unacked message in a worker's memory,
which Redis hands to another worker after the visibility timeout: a long backoff could
then run a step twice (kombu#337, celery#4400). Here a retry waits in a sorted set that
no worker holds; any worker or orchestrator process publishes it when it is due.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from orchestrator.store import StateStore, lua_script, text

log = logging.getLogger("treadle.delays")

Publish = Callable[[dict[str, Any]], None]


class DelayedMessages:
    def __init__(self, store: StateStore):
        self.store = store
        keys = store.keys
        self.keys = [keys.delayed, keys.delayed_entries, keys.delayed_inflight]
        self._take = store.redis.register_script(lua_script("take_due.lua"))

    def add(self, message_id: str, due: float, message: dict[str, Any]) -> None:
        """Keep ``message`` (a Celery signature as a dict) until ``due``; the same id
        again replaces it."""
        with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys[1], message_id, json.dumps(message))
            pipe.zadd(self.keys[0], {message_id: due})
            self.store.execute(pipe)

    def publish_due(self, publish: Publish, now: float | None = None, limit: int = 500) -> int:
        """Publish every message that is due; returns how many were published."""
        now = time.time() if now is None else now
        reply = self._take(keys=self.keys, args=[repr(now), limit])
        published = 0
        for i in range(0, len(reply), 2):
            message_id = text(reply[i])
            raw = text(reply[i + 1])
            try:
                if raw:
                    publish(json.loads(raw))
                    published += 1
            except Exception:  # left in flight: recovery puts it back and it is retried
                log.exception("could not publish delayed message %s", message_id)
                continue
            with self.store.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keys[2], message_id)
                pipe.hdel(self.keys[1], message_id)
                pipe.execute()
        return published

    def requeue_stale(self, older_than_s: float, now: float | None = None) -> int:
        """Put back messages taken longer ago than ``older_than_s`` and never confirmed
        (their publisher died). Publishing twice is harmless: a step claims once."""
        now = time.time() if now is None else now
        redis = self.store.redis
        stale = [text(m) for m in redis.zrangebyscore(self.keys[2], "-inf", now - older_than_s)]
        for message_id in stale:
            with redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keys[2], message_id)
                pipe.zadd(self.keys[0], {message_id: now})
                pipe.execute()
        return len(stale)

    def pending(self) -> int:
        return int(self.store.redis.zcard(self.keys[0]))
