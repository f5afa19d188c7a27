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

Chains and chords still go through Celery's canvas, which builds their nested options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.signals import before_task_publish
from celery.utils import uuid
from kombu import Producer, serialization
from kombu.utils.json import dumps as json_dumps

from config.queues import queue_for
from config.settings import Settings


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


class StepMessages:
    """Plain steps' messages, collected and then sent in one round trip: one LPUSH per
    queue for many messages where kombu's batch sends one per message (the same order:
    the first message pushed is the first a worker's BRPOP takes)."""

    def __init__(self, app: Celery, producer: Producer):
        self.app = app
        self.channel: Any = producer.channel
        self.waiting: dict[str, list[str]] = {}
        self.routes: dict[tuple[str, str], Route] = {}  # resolved once per block

    def add(self, workflow_id: str, step_id: str, step: Mapping[str, Any], priority: str) -> str:
        """Build one plain step's message (sent by ``send``); returns its task id."""
        soft = float(step["timeout_s"])
        pool = step.get("priority") or priority
        name = str(step["task"])
        queue = queue_for(pool)
        route = self.routes.get((name, queue))
        if route is None:
            route = self.routes[name, queue] = route_of(self.app, name, queue)
        task_id = str(uuid())
        headers, properties, body, _ = self.app.amqp.as_task_v2(
            task_id,
            name,
            args=(workflow_id, step_id),
            kwargs={},
            time_limit=Settings.hard_limit_s(soft),
            soft_time_limit=soft,
            # What Flower and Celery's logs show as the task's arguments.
            argsrepr=f"workflow={workflow_id} step={step_id} pool={pool}",
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
        return task_id

    def send(self) -> None:
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
