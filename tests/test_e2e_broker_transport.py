"""treadle's kombu transport on a real Redis: a woken waiter jumps its queue; delivery
records are written behind the event loop, all of them, in order, before anything reads
them back, and again after a lost reply."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery, signature

from config.broker_transport import FRONT_OF_QUEUE_HEADER, QoS, in_line, to_front
from config.celery_app import make_app
from config.queues import queue_for
from config.settings import Settings
from config.topology import PriorityClass
from orchestrator.stack import Stack
from orchestrator.tickets import key_of_payload
from tests.conftest import spare_app, spare_database
from tests.faults import CuttingProxy

pytestmark = pytest.mark.e2e

DB = 8  # a database of the session's Redis that no worker consumes
QUEUE = queue_for(PriorityClass.bulk)


@pytest.fixture
def direct(stack: Stack) -> Iterator[redis.Redis]:
    yield from spare_database(stack, DB)


@pytest.fixture
def app(stack: Stack, settings: Settings, direct: redis.Redis) -> Iterator[Celery]:
    yield from spare_app(stack, settings, DB)


def step(app: Celery, step_id: str) -> dict[str, object]:
    return dict(app.signature("treadle.noop", ("wf", step_id), queue=QUEUE))


def next_taken(direct: redis.Redis) -> list[str]:
    """Step ids in the order a worker would take them (BRPOP: from the right)."""
    raw = direct.lrange(QUEUE, 0, -1)
    keys = [key_of_payload(json.loads(m)) for m in reversed(raw)]
    return [key[1] for key in keys if key is not None]


def test_a_message_sent_to_the_front_is_taken_before_those_already_waiting(
    app: Celery, direct: redis.Redis
) -> None:
    for step_id in ("first", "second"):
        signature(step(app, step_id), app=app).apply_async()

    signature(to_front(step(app, "woken")), app=app).apply_async()

    assert next_taken(direct) == ["woken", "first", "second"]


def test_a_message_put_back_in_line_goes_to_the_back(app: Celery, direct: redis.Redis) -> None:
    signature(step(app, "first"), app=app).apply_async()
    again = in_line(to_front(step(app, "retry")))

    signature(again, app=app).apply_async()

    assert FRONT_OF_QUEUE_HEADER not in again["options"]["headers"]
    assert next_taken(direct) == ["first", "retry"]


# -- delivery records written behind ------------------------------------------------------


def publish(app: Celery, count: int) -> None:
    for i in range(count):
        signature(step(app, f"s{i}"), app=app).apply_async()


def unacked(direct: redis.Redis) -> tuple[int, int]:
    return direct.hlen("unacked"), direct.zcard("unacked_index")


def stall(qos: QoS, release_after_s: float) -> threading.Event:
    """Hold the writer on a write of its own, released by a timer: what is submitted
    meanwhile is queued behind it."""
    gate = threading.Event()
    qos.behind.submit(lambda pipe: gate.wait(10))
    threading.Timer(release_after_s, gate.set).start()
    return gate


def test_delivery_records_are_all_written_and_forgotten(app: Celery, direct: redis.Redis) -> None:
    publish(app, 50)
    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        qos = channel.qos
        assert isinstance(qos, QoS)
        messages = [channel.basic_get(QUEUE, no_ack=False) for _ in range(50)]
        assert qos.behind.flush()
        assert unacked(direct) == (50, 50)
        for message in messages:
            message.ack()
        assert qos.behind.flush()
        assert unacked(direct) == (0, 0)
        assert direct.llen(QUEUE) == 0


def test_a_requeue_waits_for_the_record_of_its_message(app: Celery, direct: redis.Redis) -> None:
    publish(app, 1)
    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        gate = stall(channel.qos, 0.3)
        message = channel.basic_get(QUEUE, no_ack=False)
        assert direct.llen(QUEUE) == 0 and unacked(direct) == (0, 0)  # taken, not recorded

        message.reject(requeue=True)

        # Put back from its record, which the requeue waited for.
        assert gate.is_set()
        assert next_taken(direct) == ["s0"]
        assert channel.qos.behind.flush()
        assert unacked(direct) == (0, 0)


def test_closing_a_channel_puts_back_what_it_held_once_recorded(
    app: Celery, direct: redis.Redis
) -> None:
    publish(app, 5)
    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        gate = stall(channel.qos, 0.3)
        for _ in range(5):
            channel.basic_get(QUEUE, no_ack=False)
        assert direct.llen(QUEUE) == 0

        channel.close()

        assert gate.is_set()
        assert sorted(next_taken(direct)) == [f"s{i}" for i in range(5)]
        assert unacked(direct) == (0, 0)


def test_a_batch_that_failed_is_sent_again(app: Celery, direct: redis.Redis) -> None:
    publish(app, 3)
    tries: list[int] = []

    def fails_once(pipe: Any) -> None:
        tries.append(1)
        if len(tries) == 1:
            raise redis.ConnectionError("the broker went away")
        pipe.set("marker", "written")

    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        gate = stall(channel.qos, 0.2)  # so the failing write and the records share a batch
        channel.qos.behind.submit(fails_once)
        for _ in range(3):
            channel.basic_get(QUEUE, no_ack=False)
        assert channel.qos.behind.flush()
        assert gate.is_set()
        assert len(tries) == 2
        assert direct.get("marker") == b"written"
        assert unacked(direct) == (3, 3)


def test_the_writer_goes_on_after_a_lost_reply(
    stack: Stack, settings: Settings, direct: redis.Redis
) -> None:
    with CuttingProxy(stack.redis_url) as proxy:
        through_proxy = make_app(settings, proxy.url_for(DB))
        try:
            publish(through_proxy, 3)
            with through_proxy.connection_for_read() as connection:
                channel: Any = connection.default_channel
                proxy.cut_reply_to(b"ZADD")
                for _ in range(3):
                    channel.basic_get(QUEUE, no_ack=False)
                assert channel.qos.behind.flush()
                assert proxy.cuts == 1
                assert unacked(direct) == (3, 3)
        finally:
            through_proxy.close()
