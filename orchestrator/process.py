"""The orchestrator process: a Celery worker on the ``orchestrator`` queue.

It takes submissions and cancellations sent as messages (so producers in any language
can submit with a plain Celery message), runs the recovery sweep on a timer, and watches
the queues (aging, lending idle workers to busy queues; see ``orchestrator.queue_watch``).
Given a listener, it also serves the HTTP API (``orchestrator.api``) with the same
orchestrator.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from celery import Celery, bootsteps

from config.queues import ORCHESTRATOR_QUEUE
from config.settings import Settings
from config.topology import load_topology
from orchestrator.errors import InvalidInput
from orchestrator.queue_watch import install_queue_watch
from orchestrator.recovery import sweep
from orchestrator.service import Orchestrator, with_overrides
from workers.upkeep import install_upkeep

if TYPE_CHECKING:
    from orchestrator.api.auth import Auth
    from orchestrator.api.server import Listener

log = logging.getLogger("treadle.orchestrator")


def make_orchestrator_app(
    settings: Settings,
    redis_url: str,
    *,
    listener: Listener | None = None,
    auth: Auth | None = None,
) -> Celery:
    orchestrator = Orchestrator.from_settings(settings, redis_url)
    app = orchestrator.app

    @app.task(name="treadle.submit", queue=ORCHESTRATOR_QUEUE)
    def submit(
        spec: dict[str, Any],
        params: dict[str, Any] | None = None,
        priority: str | None = None,
    ) -> dict[str, Any]:
        try:
            done = orchestrator.submit(with_overrides(spec, params, priority))
        except InvalidInput as exc:
            return {"error": "invalid", "problems": [str(p) for p in exc.problems]}
        return {"id": done.id, "created": done.created}

    @app.task(name="treadle.cancel", queue=ORCHESTRATOR_QUEUE)
    def cancel(workflow_id: str) -> dict[str, Any]:
        return {"id": workflow_id, "state": orchestrator.cancel(workflow_id)}

    class Sweeper(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = {"celery.worker.components:Timer"}

        def __init__(self, worker: Any, **kwargs: Any):
            super().__init__(worker, **kwargs)
            self.tref: Any = None

        def start(self, worker: Any) -> None:
            self.tref = worker.timer.call_repeatedly(
                settings.sweep_interval_s, self.run, priority=10
            )

        def stop(self, worker: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()

        def run(self) -> None:
            try:
                sweep(orchestrator, settings.recovery_after_s)
            except Exception:  # the next sweep tries again; the process stays up
                log.exception("recovery sweep failed")

    app.steps["worker"].add(Sweeper)
    # Its own heartbeat per process: a replica that dies must not be kept alive by the
    # beats of another.
    install_upkeep(app, settings, redis_url, incarnation=f"orchestrator-{uuid.uuid4().hex[:12]}")
    install_queue_watch(app, settings, redis_url, load_topology(settings.topology))
    if listener is not None:
        from orchestrator.api.app import create_app
        from orchestrator.api.server import install_api

        install_api(app, create_app(orchestrator, settings, auth=auth), listener)
    return app
