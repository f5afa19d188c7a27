"""A bootstep in every worker (and the orchestrator) that keeps treadle's time-based
duties going: publishing retries when they fall due, and a heartbeat that tells the
recovery sweep this worker is alive. A second one, in the consumer, tells the sweep when
the worker had to reconnect to the broker (messages may have been lost in between; see
``orchestrator.orphans``).

Every process publishes due retries, so they go on as long as any of them is up; the Lua
script that takes due messages hands each one to a single poller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, bootsteps, signature
from celery.worker import state as worker_state

from config.redis_client import connect
from config.settings import Settings
from config.topology import Topology, load_topology
from orchestrator import heartbeats
from orchestrator.admission import Admission
from orchestrator.delays import DelayedMessages
from orchestrator.flow import FlowControl
from orchestrator.keys import Keys
from orchestrator.shedding import LoadShedder, Publish
from orchestrator.store import StateStore
from workers.runtime import record_lost_attempt

log = logging.getLogger("treadle.upkeep")

POLL_INTERVAL_S = 0.1
REAP_INTERVAL_S = 1.0


class LimitsUpkeep:
    """Once a second, in one process of all: take back the permits of dead or overdue
    steps, drop waiters whose steps ended, wake whoever can run, and sample how fast
    each class finishes steps (for admission's retry-after), and park or resume bulk
    work as the load rises and falls."""

    def __init__(self, store: StateStore, topology: Topology, publish: Publish):
        self.store = store
        self.flow = FlowControl(store, topology)
        self.admission = Admission(store, topology)
        self.shedder = LoadShedder(store, self.admission, publish)

    def run(self) -> bool:
        """One round, unless another process has taken this one; whether it ran."""
        taken = self.store.redis.set(
            self.store.keys.limits_reaper, 1, nx=True, px=int(REAP_INTERVAL_S * 900)
        )
        if not taken:
            return False
        self.flow.reap(self._mark_lost)
        self.admission.sample()
        self.shedder.run()
        return True

    def _mark_lost(self, workflow_id: str, step_id: str, incarnation: str, why: str) -> None:
        record_lost_attempt(self.store, workflow_id, step_id, why, incarnation=incarnation)


def install_upkeep(app: Celery, settings: Settings, redis_url: str, incarnation: str) -> None:
    keys = Keys(settings.key_prefix)
    beat_every_s = settings.worker_lost_after_s / 3

    class Upkeep(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = {"celery.worker.components:Timer"}

        def __init__(self, worker: Any, **kwargs: Any):
            super().__init__(worker, **kwargs)
            self.timers: list[Any] = []
            self.client: redis.Redis | None = None

        def start(self, worker: Any) -> None:
            # No retry window: every duty runs again on the next tick, and a call blocked
            # on an outage would hold up the worker's main loop.
            client = self.client = connect(redis_url, settings, retry_s=0)
            store = StateStore(client, keys)
            delayed = DelayedMessages(store)
            limits = LimitsUpkeep(
                store,
                load_topology(settings.topology),
                lambda m: signature(dict(m), app=app).apply_async(),
            )

            def beat() -> None:
                # Registered with every beat, so the sweep notices when the beats stop.
                said = heartbeats.beat(_oldest_running())
                with client.pipeline(transaction=False) as pipe:
                    pipe.set(
                        keys.alive(incarnation),
                        said,
                        ex=max(1, int(settings.worker_lost_after_s)),
                    )
                    pipe.sadd(keys.incarnations, incarnation)
                    pipe.execute()

            def publish_due() -> None:
                delayed.publish_due(lambda m: signature(m, app=app).apply_async())

            _quietly("heartbeat", beat)()
            self.timers = [
                worker.timer.call_repeatedly(
                    POLL_INTERVAL_S, _quietly("publishing due messages", publish_due), priority=10
                ),
                worker.timer.call_repeatedly(
                    beat_every_s, _quietly("heartbeat", beat), priority=10
                ),
                worker.timer.call_repeatedly(
                    REAP_INTERVAL_S, _quietly("upkeep of shared limits", limits.run), priority=10
                ),
            ]

        def stop(self, worker: Any) -> None:
            for timer in self.timers:
                timer.cancel()
            if self.client is not None:
                # A clean stop is not a death: the steps it finished need no recovery.
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.delete(keys.alive(incarnation))
                    pipe.srem(keys.incarnations, incarnation)
                    pipe.execute()
                self.client.close()

    app.steps["worker"].add(Upkeep)
    app.steps["consumer"].add(_reconnect_watch(settings, redis_url, keys))


def _oldest_running() -> dict[str, float]:
    """When the oldest step this worker runs started, per class (Celery's requests that
    a pool process has accepted, by the queue they came from)."""
    return heartbeats.oldest_of(
        ((r.delivery_info or {}).get("routing_key"), r.time_start)
        for r in list(worker_state.active_requests)
    )


def _quietly(what: str, duty: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            duty()
        except Exception:  # Redis away for a moment: the next tick tries again
            log.exception("%s failed", what)

    return run


def _reconnect_watch(settings: Settings, redis_url: str, keys: Keys) -> type:
    class Reconnects(bootsteps.StartStopStep):  # type: ignore[misc]
        """The consumer starts once, and again after every lost broker connection."""

        requires = {"celery.worker.consumer.tasks:Tasks"}

        def __init__(self, consumer: Any, **kwargs: Any):
            super().__init__(consumer, **kwargs)
            self.starts = 0

        def start(self, consumer: Any) -> None:
            self.starts += 1
            if self.starts == 1:
                return
            log.warning("reconnected to the broker: the recovery sweep will look for lost messages")
            with connect(redis_url, settings) as client:
                StateStore(client, keys).mark_disrupted(time.time())

    return Reconnects
