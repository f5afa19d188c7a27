"""A chord's body is published even when Redis loses the reply that carried its claim.

Celery's counting script records a header task's end and, for the last one, takes the
claim to publish the body in the same call. A lost reply (a restart, a network blip)
makes the backend report the end again; before ``config.result_backend`` gave back the
claim of the failed try, the new report found the claim taken and nobody published the
body.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from celery.app.task import Context

from config.celery_app import make_app
from config.queues import queue_for
from config.result_backend import CHORD_COUNT_LUA
from config.settings import Settings
from config.topology import PriorityClass
from orchestrator.stack import Stack
from tests.conftest import spare_database
from tests.faults import CuttingProxy

pytestmark = pytest.mark.e2e

DB = 7  # a database of the session's Redis that no worker consumes
BODY_TASK = "tests.chord_body"
SCRIPT_SHA = hashlib.sha1(CHORD_COUNT_LUA.encode()).hexdigest().encode()


@pytest.fixture
def direct(stack: Stack) -> Iterator[redis.Redis]:
    for connection in spare_database(stack, DB):
        connection.script_load(CHORD_COUNT_LUA)
        yield connection


@pytest.fixture
def app(proxy: CuttingProxy, settings: Settings) -> Iterator[Celery]:
    celery = make_app(settings, proxy.url_for(DB))
    yield celery
    celery.close()


def header_task_ends(app: Celery) -> None:
    """The one header task of a one-task chord reports its end."""
    group_id, task_id = uuid.uuid4().hex, uuid.uuid4().hex
    app.backend.set_chord_size(group_id, 1)
    body = app.signature(BODY_TASK, queue=queue_for(PriorityClass.default))
    request = Context(id=task_id, group=group_id, group_index=0, chord=body)
    app.backend.on_chord_part_return(request, "SUCCESS", {"state": "succeeded"})


def published_bodies(direct: redis.Redis) -> int:
    messages = direct.lrange(queue_for(PriorityClass.default), 0, -1)
    return sum(json.loads(m)["headers"]["task"] == BODY_TASK for m in messages)


def test_the_body_is_published_when_the_claiming_reply_is_lost(
    app: Celery, proxy: CuttingProxy, direct: redis.Redis
) -> None:
    proxy.cut_reply_to(SCRIPT_SHA)

    header_task_ends(app)

    assert proxy.cuts == 1
    assert published_bodies(direct) == 1


def test_the_body_is_published_when_every_repeat_of_the_call_is_lost(
    app: Celery, proxy: CuttingProxy, direct: redis.Redis
) -> None:
    proxy.cut_reply_to(SCRIPT_SHA, times=5)

    header_task_ends(app)

    assert proxy.cuts == 5
    assert published_bodies(direct) == 1
