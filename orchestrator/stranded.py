"""Messages a dead worker took with it, given back long before the visibility timeout.

With late acknowledgement a message stays in kombu's ``unacked`` hash while a worker
holds it; if the whole worker dies (SIGKILL of its main process, a lost host), or drops
what it had prefetched when its broker connection breaks (kombu cannot put it back while
Redis is away), nothing returns it until the visibility timeout, which must exceed the
longest hard time limit (hours). Every worker keeps a heartbeat key alive in Redis; the
recovery sweep puts a message back on its queue once it has been unacked for a while and
either its step has not started (a prefetched message: a second copy is harmless, a step
is claimed once) or the worker that started it has no heartbeat any more. The late
redelivery kombu still makes after the visibility timeout then finds the step finished
and is ignored.
"""

from __future__ import annotations

import json
import logging
import time

from orchestrator.store import StateStore, lua_script
from orchestrator.tickets import JOIN_SUFFIX, keys_of_payload

log = logging.getLogger("treadle.recovery")

UNACKED = "unacked"  # kombu's Redis transport defaults
UNACKED_INDEX = "unacked_index"


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
        except (ValueError, TypeError):
            continue
        steps = keys_of_payload(payload)
        if not steps:
            continue  # not a step message: kombu restores it after the visibility timeout
        workflow_id, step_id = steps[0]
        # A bundle is held while any of its steps runs (orchestrator.bundles).
        if not all(_abandoned(store, workflow_id, s) for _wid, s in steps):
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


def _abandoned(store: StateStore, workflow_id: str, step_id: str) -> bool:
    if step_id.endswith(JOIN_SUFFIX):
        # A join takes milliseconds and a second one does nothing: held this long, it was
        # dropped by a worker that lost its connection.
        return True
    record = store.step_records_of(workflow_id, [step_id]).get(step_id)
    if record is None:
        return False
    if record.get("state") != "running":
        return True  # prefetched, never started: a second copy is claimed at most once
    return not store.worker_alive(record.get("incarnation") or "")
