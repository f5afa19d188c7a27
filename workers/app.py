"""A worker's Celery app: every registered task, wrapped by the step runtime."""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore
from celery.signals import before_task_publish, worker_process_shutdown, worker_shutdown

from config.celery_app import make_app
from config.redis_client import connect
from config.settings import Settings
from config.topology import load_topology
from orchestrator import bundles, tickets
from orchestrator.dead_letters import DeadLetters
from orchestrator.definitions import DefinitionCache
from orchestrator.dispatch import mark_queued as mark_all_queued
from orchestrator.errors import NotFound
from orchestrator.flow import FlowControl
from orchestrator.keys import Keys
from orchestrator.states import StepState
from orchestrator.store import Change, Conflict, StateStore
from orchestrator.tickets import JOIN_TASK
from workers import poison
from workers.hooks import LogHook
from workers.observations import Observations
from workers.poison import describe
from workers.registry import Registry, load_task_modules
from workers.runtime import StepRuntime
from workers.timeouts import step_request_class
from workers.timer_sweep import install_timer_sweep
from workers.upkeep import install_upkeep

log = logging.getLogger("treadle.worker")


class _PerProcess:
    """One store (and so one Redis connection pool) per process: prefork children must
    not share the parent's sockets."""

    def __init__(self, url: str, settings: Settings, registry: Registry, incarnation: str):
        self.url, self.settings, self.registry = url, settings, registry
        self.incarnation = incarnation
        self._pid = -1
        self._runtime: StepRuntime | None = None

    @property
    def runtime(self) -> StepRuntime:
        if self._runtime is None or self._pid != os.getpid():
            client = connect(self.url, self.settings)
            keys = Keys(self.settings.key_prefix)
            store = StateStore(
                client,
                keys,
                state_ttl_s=self.settings.state_ttl_s,
                definitions=DefinitionCache(),
            )
            self._runtime = StepRuntime(
                store,
                self.registry,
                hooks=[LogHook()],
                incarnation=self.incarnation,
                # As often as heartbeats are sent: a lost attempt is seen within that.
                recheck_s=self.settings.worker_lost_after_s / 3,
                flow=FlowControl(store, load_topology(self.settings.topology)),
                inline_chain_s=self.settings.inline_chain_s,
                bundle_target_s=self.settings.bundle_target_s,
                observations=Observations(client, keys.metrics),
            )
            self._pid = os.getpid()
        return self._runtime

    def close(self) -> None:
        """Flush this process's step timings (it is shutting down)."""
        runtime = self._runtime if self._pid == os.getpid() else None
        if runtime is not None and runtime.observations is not None:
            runtime.observations.close()


def make_worker_app(settings: Settings, redis_url: str) -> Celery:
    app = make_app(settings, redis_url)
    registry = load_task_modules(settings.task_module_list())
    # This worker process's life: a restarted worker reuses its node name, so liveness
    # is told by this token (inherited by the pool's forked children), not by the name.
    incarnation = uuid.uuid4().hex[:12]
    holder = _PerProcess(redis_url, settings, registry, incarnation)

    request_class = step_request_class(lambda: holder.runtime)
    for definition in registry:
        _register(app, definition.name, holder, request_class)

    @app.task(
        name=JOIN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True
    )
    def join(self: Task, workflow_id: str, parent: str, count: int) -> dict[str, Any]:
        return holder.runtime.join(self, workflow_id, parent, count)

    def mark_queued(sender: str | None = None, body: Any = None, **_: Any) -> None:
        # Celery publishes the next links of chains and chord bodies from inside workers:
        # record the moment each step enters its queue, before a worker can take it.
        if sender not in registry or not isinstance(body, (list, tuple)) or not body:
            return
        args = body[0]
        if not isinstance(args, (list, tuple)) or len(args) != 2:
            return
        workflow_id, step_id = args
        steps = bundles.members(args, body[1] if len(body) > 1 else None)
        now = time.time()
        try:
            if len(steps) > 1:
                mark_all_queued(holder.runtime.store, workflow_id, steps)
                return
            holder.runtime.store.apply(
                workflow_id,
                [
                    Change(
                        step_id,
                        StepState.pending.value,
                        StepState.queued.value,
                        {"queued_at": now},
                        {"at": now, "task": sender},
                    )
                ],
                # A step not yet queued has no records of its own, unless it is run
                # again (a resume): then one more round trip learns where they end.
                tails={step_id: ""},
            )
        except Conflict:
            pass  # already queued, claimed or settled: nothing to add
        except Exception:  # publishing must go on even if the record cannot be written
            log.exception("could not record workflow %s step %s as queued", workflow_id, step_id)

    before_task_publish.connect(mark_queued, weak=False)

    def flush_observations(**_: Any) -> None:
        holder.close()

    # A prefork child at its end, and the main process (solo and thread pools).
    worker_process_shutdown.connect(flush_observations, weak=False)
    worker_shutdown.connect(flush_observations, weak=False)
    tickets.use_by_default(lambda: holder.runtime.store)
    install_upkeep(app, settings, redis_url, incarnation)
    install_timer_sweep(app)
    poison.install(app, lambda: DeadLetters(holder.runtime.store))
    return app


def _register(app: Celery, name: str, holder: _PerProcess, request_class: type) -> None:
    def dead_letter(task: Task, error: str, body: str) -> None:
        entry = describe(task.request, error)
        entry.update(task=name, message_id=task.request.id, body=body[:500])
        DeadLetters(holder.runtime.store).file(entry)

    def run(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # Checked here, not by Celery's call: a message of the wrong shape is a dead
        # letter, not a task error that would be logged and forgotten.
        others = bundles.others_in(kwargs) if kwargs else []
        if others is None or len(args) != 2 or not all(isinstance(a, str) for a in args):
            dead_letter(self, "not a treadle step message", f"args={args!r} kwargs={kwargs!r}")
            raise Ignore()
        try:
            if others:
                return holder.runtime.execute_bundle(self, args[0], [args[1], *others])
            return holder.runtime.execute(self, args[0], args[1])
        except NotFound as exc:
            dead_letter(self, str(exc), repr(args))
            raise Ignore() from exc

    run.__name__ = run.__qualname__ = name.replace(".", "_")
    app.task(
        name=name,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        # Step results live in the state store; Celery's copy (a GET, a SET and a PUBLISH
        # per step) is read by nothing. A fan-out's chord still counts its items: Celery's
        # Redis chord keeps their results in its own list (Backend.mark_as_done ->
        # on_chord_part_return).
        ignore_result=True,
        typing=False,
        Request=request_class,
    )(run)
