"""What a worker's heartbeat says besides "alive": when the oldest step it is running
started, per class.

The ``treadle_oldest_running_seconds`` gauge used to come from a sorted set of running
steps that every step's two transitions wrote to (a ZADD and a ZREM: two Redis commands
a step for one gauge). The worker's main process already knows what it runs (Celery's
active requests, with the time each started) and beats every few seconds anyway. The
price: the figure is as old as the last beat (``worker_lost_after_s / 3``), and a worker
whose beats stop is no longer in it (its steps are then recovered as lost).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from config.topology import PRIORITY_ORDER
from orchestrator.store import StateStore, text

_CLASSES = {klass.value for klass in PRIORITY_ORDER}


def beat(oldest: Mapping[str, float]) -> str:
    """The heartbeat's value: ``oldest`` maps a class to when its oldest running step
    started (wall clock)."""
    return json.dumps({"oldest": dict(oldest)})


def oldest_of(running: Iterable[tuple[str | None, float | None]]) -> dict[str, float]:
    """Per class, the earliest start among ``(queue, started)`` pairs (a step's queue is
    its class's; one not started yet is left out)."""
    oldest: dict[str, float] = {}
    for queue, started in running:
        if queue in _CLASSES and started is not None:
            oldest[queue] = min(oldest.get(queue, started), started)
    return oldest


def oldest_running(store: StateStore) -> dict[str, float]:
    """Per class, when the oldest step any live worker runs started."""
    redis, keys = store.redis, store.keys
    incarnations = sorted(text(i) for i in redis.smembers(keys.incarnations))
    if not incarnations:
        return {}
    oldest: dict[str, float] = {}
    for raw in redis.mget([keys.alive(i) for i in incarnations]):
        try:
            said = json.loads(raw)["oldest"] if raw else {}
        except (ValueError, TypeError, KeyError):
            continue  # an older worker's beat ("1"): it says nothing of its steps
        for klass, started in said.items():
            if klass in _CLASSES and isinstance(started, (int, float)):
                oldest[klass] = min(oldest.get(klass, started), float(started))
    return oldest
