"""treadle's kombu transport on a real Redis: a woken waiter jumps its queue."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from celery import Celery, signature

from config.broker_transport import FRONT_OF_QUEUE_HEADER, in_line, to_front
from config.queues import queue_for
from config.settings import Settings
from config.topology import PriorityClass
from orchestrator.stack import Stack
from orchestrator.tickets import key_of_payload
from tests.conftest import spare_app, spare_database

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
