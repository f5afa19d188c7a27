"""The dead-letter queue: steps that can never succeed as things stand, and messages that
could not even be read, kept for an operator to inspect, replay or purge.

Redis's broker has no dead-letter queue (``Reject(requeue=False)`` just deletes), and a
broker queue cannot be listed, shown or purged by id without consuming it; so dead letters
live in the state store: a hash of entries and a sorted set by time. A step's dead letter
is filed by the same Lua script that records the step's final failure.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from orchestrator.errors import NotFound
from orchestrator.store import StateStore


class DeadLetters:
    def __init__(self, store: StateStore):
        self.store = store
        self.hash = store.keys.dead_letters
        self.by_time = store.keys.dead_letters_by_time

    def file(self, entry: dict[str, Any]) -> str:
        """File a message that is not a step of any workflow (undecodable, unknown task)."""
        entry = {"id": f"msg-{uuid.uuid4().hex[:16]}", "at": time.time(), **entry}
        with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.hash, entry["id"], json.dumps(entry))
            pipe.zadd(self.by_time, {entry["id"]: entry["at"]})
            pipe.execute()
        return str(entry["id"])

    def entries(self) -> list[dict[str, Any]]:
        """Newest first."""
        redis = self.store.redis
        ids = [
            i.decode() if isinstance(i, bytes) else str(i)
            for i in redis.zrevrange(self.by_time, 0, -1)
        ]
        if not ids:
            return []
        raw = redis.hmget(self.hash, ids)
        return [json.loads(r) for r in raw if r is not None]

    def get(self, letter_id: str) -> dict[str, Any]:
        raw = self.store.redis.hget(self.hash, letter_id)
        if raw is None:
            raise NotFound(f"no dead letter {letter_id!r}")
        return dict(json.loads(raw))

    def remove(self, *letter_ids: str) -> None:
        if not letter_ids:
            return
        with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.hash, *letter_ids)
            pipe.zrem(self.by_time, *letter_ids)
            pipe.execute()

    def of_workflow(self, workflow_id: str) -> list[dict[str, Any]]:
        return [e for e in self.entries() if e.get("workflow_id") == workflow_id]

    def purge(self) -> int:
        count = int(self.store.redis.zcard(self.by_time))
        self.store.redis.delete(self.hash, self.by_time)
        return count

    def __len__(self) -> int:
        return int(self.store.redis.zcard(self.by_time))
