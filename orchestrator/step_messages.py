"""Messages of plain steps, built in bulk: a workflow's first parallel stage, counter steps.

Celery sends a group one member at a time through ``Signature.apply_async`` and
``Celery.send_task``, which route the task, merge its options and build its message anew
for each member: about a tenth of a millisecond of Python per step, which a 10,000-step
stage pays in full before its first message leaves. A plain step's message differs from
its neighbours' only in its task id and arguments, so here routing and options are
resolved once per task and queue, each message is built by Celery's own task protocol
(``amqp.as_task_v2``) and wrapped by the kombu channel's own envelope, with Celery's
``before_task_publish`` signal sent as ``send_task`` sends it (tickets and the queued
marks listen to it), and all are pushed together. What reaches Redis is what
``send_task`` would have sent (``tests/test_e2e_step_messages.py`` compares the two).

Steps of one task that leave together may share messages (``orchestrator.bundles``):
``BundleSizes`` says how many to a message.

Chains and chords still go through Celery's canvas, which builds their nested options.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.signals import before_task_publish
from celery.utils import uuid
from kombu import Producer, serialization
from kombu.utils.json import dumps as json_dumps

from config.queues import queue_for
from config.settings import Settings
from orchestrator import bundles
from orchestrator.metrics import typical_run_s
from orchestrator.store import StateStore

# Steps per message for (task, how many of its steps leave together).
Sizing = Callable[[str, int], int]


@dataclass(frozen=True)
class Route:
    """Where a task's messages go and how they are sent, as ``send_task`` resolves it."""

    exchange: str
    routing_key: str
    delivery_mode: int
    serializer: str
    retry_policy: Mapping[str, Any]


def route_of(app: Celery, task: str, queue: str) -> Route:
    resolved = app.amqp.router.route({"queue": queue}, task, (), {}, None)["queue"]
    exchange = resolved.exchange
    if exchange.type == "direct":
        # As amqp.send_task_message does: straight to the queue (kombu's anonymous
        # exchange), so no binding is looked up.
        name, routing_key = "", resolved.name
    else:
        name, routing_key = exchange.name, resolved.routing_key or resolved.name
    return Route(
        exchange=name,
        routing_key=routing_key,
        delivery_mode=exchange.delivery_mode or app.conf.task_default_delivery_mode,
        serializer=app.conf.task_serializer,
        retry_policy=dict(app.conf.task_publish_retry_policy or {}),
    )


@dataclass
class _Stage:
    """Steps of one task, time limit and pool of one workflow that may share messages."""

    workflow_id: str
    name: str
    soft: float
    pool: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # (step id, task id)


class StepMessages:
    """Plain steps' messages, collected and then sent in one round trip: one LPUSH per
    queue for many messages where kombu's batch sends one per message (the same order:
    the first message pushed is the first a worker's BRPOP takes)."""

    def __init__(self, app: Celery, producer: Producer, sizing: Sizing | None = None):
        self.app = app
        self.channel: Any = producer.channel
        self.sizing = sizing
        self.waiting: dict[str, list[str]] = {}
        self.routes: dict[tuple[str, str], Route] = {}  # resolved once per block
        self.stages: dict[tuple[str, str, float, str], _Stage] = {}

    def add(self, workflow_id: str, step_id: str, step: Mapping[str, Any], priority: str) -> str:
        """Build one plain step's message (sent by ``send``); returns its task id (for a
        step that shares a message, the id that message has if the step comes first)."""
        soft = float(step["timeout_s"])
        pool = step.get("priority") or priority
        name = str(step["task"])
        task_id = str(uuid())
        if self.sizing is not None and bundles.can_bundle(step):
            key = (workflow_id, name, soft, pool)
            stage = self.stages.get(key)
            if stage is None:
                stage = self.stages[key] = _Stage(workflow_id, name, soft, pool)
            stage.steps.append((step_id, task_id))
        else:
            self._build(task_id, workflow_id, [step_id], name, soft, pool)
        return task_id

    def build_held(self) -> None:
        """Build the messages of the steps held back to share them (``send`` does it if
        not done before; a publisher that captures tickets does it inside the capture)."""
        stages, self.stages = self.stages, {}
        for stage in stages.values():
            size = self.sizing(stage.name, len(stage.steps)) if self.sizing else 1
            task_ids = dict(stage.steps)
            for run in bundles.split([s for s, _ in stage.steps], size):
                self._build(
                    task_ids[run[0]], stage.workflow_id, run, stage.name, stage.soft, stage.pool
                )

    def _build(
        self, task_id: str, workflow_id: str, steps: list[str], name: str, soft: float, pool: str
    ) -> None:
        queue = queue_for(pool)
        route = self.routes.get((name, queue))
        if route is None:
            route = self.routes[name, queue] = route_of(self.app, name, queue)
        step_id, others = steps[0], steps[1:]
        shown = step_id if not others else f"{step_id}+{len(others)}"
        headers, properties, body, _ = self.app.amqp.as_task_v2(
            task_id,
            name,
            args=(workflow_id, step_id),
            kwargs={bundles.BUNDLE_KWARG: others} if others else {},
            time_limit=Settings.hard_limit_s(soft),
            soft_time_limit=soft,
            # What Flower and Celery's logs show as the task's arguments.
            argsrepr=f"workflow={workflow_id} step={shown} pool={pool}",
            root_id=task_id,
            reply_to=self.app.thread_oid,
            ignore_result=self.app.tasks[name].ignore_result if name in self.app.tasks else None,
        )
        # send_task leaves its options among the properties too.
        properties["argsrepr"] = headers["argsrepr"]
        before_task_publish.send(
            sender=name,
            body=body,
            exchange=route.exchange,
            routing_key=route.routing_key,
            declare=[],
            headers=headers,
            properties=properties,
            retry_policy=route.retry_policy,
        )
        # What kombu's Producer.publish and the Redis channel's basic_publish make of it.
        content_type, content_encoding, data = serialization.dumps(body, route.serializer)
        properties["delivery_mode"] = route.delivery_mode
        channel = self.channel
        message = channel.prepare_message(
            data, 0, content_type, content_encoding, headers, properties
        )
        channel._inplace_augment_message(message, route.exchange, route.routing_key)
        key = channel._q_for_pri(
            route.routing_key, channel._get_message_priority(message, reverse=False)
        )
        self.waiting.setdefault(key, []).append(json_dumps(message))

    def send(self) -> None:
        self.build_held()
        if not self.waiting:
            return
        with self.channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for key, payloads in self.waiting.items():
                for i in range(0, len(payloads), _PER_LPUSH):
                    pipe.lpush(key, *payloads[i : i + _PER_LPUSH])
            pipe.execute()
        self.waiting = {}


# Messages per LPUSH: a few MB at most, so that one command never holds Redis for long.
_PER_LPUSH = 1_000


class BundleSizes:
    """How many steps of a task share a message: as many as fit in ``target_s`` of its
    typical run time, at most ``most`` (``orchestrator.bundles``). A run time is read
    from the metrics hash at most every ``keep_s`` per task and process, once there is
    one."""

    _typical: dict[tuple[int, str, str], tuple[float, float | None]] = {}
    _lock = threading.Lock()

    def __init__(self, store: StateStore, target_s: float, most: int, keep_s: float = 10.0):
        self.store, self.target_s, self.most, self.keep_s = store, target_s, most, keep_s

    def __call__(self, task: str, width: int) -> int:
        if bundles.size_of(width, 0.0, self.target_s, self.most) <= 1:
            return 1  # it could not bundle even if the task took no time: nothing to read
        return bundles.size_of(width, self._run_s(task), self.target_s, self.most)

    def _run_s(self, task: str) -> float | None:
        # One process may talk to several Redis servers (tests do): keyed by connection.
        key, now = (id(self.store.redis), self.store.keys.metrics, task), time.monotonic()
        with self._lock:
            kept = self._typical.get(key)
        if kept is not None and now - kept[0] < self.keep_s:
            return kept[1]
        run_s = typical_run_s(self.store, [task])[task]
        if run_s is not None:  # a task not yet measured is looked for again next time
            with self._lock:
                self._typical[key] = (now, run_s)
        return run_s
