"""Messages a dead worker took with it, given back long before the visibility timeout.

With late acknowledgement a message stays in kombu's ``unacked`` hash while a worker
holds it; if the whole worker dies (SIGKILL of its main process, a lost host) nothing
returns it until the visibility timeout, which must exceed the longest hard time limit
(hours). Every worker keeps a heartbeat key alive in Redis; the recovery sweep puts a
message back on its queue once it has been unacked for a while and either its step has
not started (a prefetched message: a second copy is harmless, a step is claimed once) or
the worker that started it has no heartbeat any more. The late redelivery kombu still
makes after the visibility timeout then finds the step finished and is ignored.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

from orchestrator.keys import Keys
from orchestrator.store import StateStore, lua_script

log = logging.getLogger("treadle.recovery")

UNACKED = "unacked"  # kombu's Redis transport defaults
UNACKED_INDEX = "unacked_index"


def heartbeat_key(keys: Keys, incarnation: str) -> str:
    """Alive while the worker process ``incarnation`` (one life of a worker) runs."""
    return f"{keys.prefix}:alive:{incarnation}"


def restore_stranded(
    store: StateStore, stranded_after_s: float, now: float | None = None
) -> list[str]:
    """Restore stranded step messages; returns the task ids put back."""
    now = time.time() if now is None else now
    redis = store.redis
    tags = redis.zrangebyscore(UNACKED_INDEX, "-inf", now - stranded_after_s)
    restore = redis.register_script(lua_script("restore_unacked.lua"))
    restored = []
    for raw_tag in tags:
        tag = raw_tag.decode() if isinstance(raw_tag, bytes) else str(raw_tag)
        raw = redis.hget(UNACKED, tag)
        if raw is None:
            continue
        try:
            payload, _exchange, routing_key = json.loads(raw)
            workflow_id, step_id = _step_of(payload)
        except (ValueError, TypeError, KeyError):
            continue  # not a step message: kombu restores it after the visibility timeout
        if not _abandoned(store, workflow_id, step_id):
            continue
        payload["headers"]["redelivered"] = True
        payload["properties"].setdefault("delivery_info", {})["redelivered"] = True
        if restore(keys=[UNACKED, UNACKED_INDEX, routing_key], args=[tag, json.dumps(payload)]):
            log.warning(
                "workflow %s step %s: message held by a dead worker put back on %s",
                workflow_id,
                step_id,
                routing_key,
            )
            restored.append(str(payload["headers"].get("id")))
    return restored


def _step_of(payload: dict[str, Any]) -> tuple[str, str]:
    body = payload["body"]
    if payload["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    if len(args) != 2:
        raise ValueError("not a step message")
    return str(args[0]), str(args[1])


def _abandoned(store: StateStore, workflow_id: str, step_id: str) -> bool:
    record = store.step_records_of(workflow_id, [step_id]).get(step_id)
    if record is None:
        return False
    if record.get("state") != "running":
        return True  # prefetched, never started: a second copy is claimed at most once
    incarnation = record.get("incarnation") or ""
    return not store.redis.exists(heartbeat_key(store.keys, incarnation))
