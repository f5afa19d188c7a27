"""Plain steps' messages built in bulk (orchestrator/step_messages.py) are the messages
Celery's send_task would have sent, in the same order, with their tickets kept."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from config.queues import queue_for
from config.settings import Settings
from config.topology import PriorityClass
from orchestrator.bundles import members
from orchestrator.client import Client
from orchestrator.dispatch import publishing, step_signature
from orchestrator.keys import Keys
from orchestrator.metrics import typical_run_s
from orchestrator.orphans import present_steps
from orchestrator.stack import Stack
from orchestrator.store import StateStore
from orchestrator.tickets import key_of_payload
from tests.conftest import spare_app, spare_database
from workers.observations import Observations

pytestmark = pytest.mark.e2e

DB = 9  # a database of the session's Redis that no worker consumes
QUEUE = queue_for(PriorityClass.bulk)
STEP = {"task": "treadle.noop", "timeout_s": 120.0}
# Differ from message to message by nature.
UNIQUE = {("headers", "id"), ("headers", "root_id"), ("properties", "correlation_id")}
UNIQUE |= {("properties", "delivery_tag")}


@pytest.fixture
def direct(stack: Stack) -> Iterator[redis.Redis]:
    yield from spare_database(stack, DB)


@pytest.fixture
def app(stack: Stack, settings: Settings, direct: redis.Redis) -> Iterator[Celery]:
    yield from spare_app(stack, settings, DB)


def queued(direct: redis.Redis) -> list[dict[str, Any]]:
    """The queue's messages, first to be taken first, bodies decoded."""
    out = []
    for raw in reversed(direct.lrange(QUEUE, 0, -1)):
        message = json.loads(raw)
        message["body"] = json.loads(base64.b64decode(message["body"]))
        out.append(message)
    return out


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """The message without what is unique to it, its step id made generic."""
    kept: dict[str, Any] = json.loads(re.sub(r"\bs-\d+\b", "STEP", json.dumps(message)))
    for part, name in UNIQUE:
        kept[part].pop(name)
    return kept


def test_a_plain_steps_message_is_the_one_send_task_sends(app: Celery, direct: redis.Redis) -> None:
    store = StateStore(direct, Keys("treadle"))
    with publishing(app, store) as (producer, _):
        step_signature(app, "wf", "s-1", STEP, "bulk").apply_async(producer=producer)
    with publishing(app, store) as (_, plain):
        plain.add("wf", "s-2", STEP, "bulk")
    celery, ours = queued(direct)
    assert celery["body"][0] == ["wf", "s-1"] and ours["body"][0] == ["wf", "s-2"]
    assert comparable(ours) == comparable(celery)
    assert ours["headers"]["root_id"] == ours["headers"]["id"]


def test_plain_steps_leave_in_order_with_their_tickets(app: Celery, direct: redis.Redis) -> None:
    store = StateStore(direct, Keys("treadle"))
    ids = [f"s-{i}" for i in range(2_500)]  # more than one LPUSH holds
    with publishing(app, store) as (_, plain):
        task_ids = [plain.add("wf", sid, STEP, "bulk") for sid in ids]
        assert direct.llen(QUEUE) == 0  # nothing leaves before the block ends
    messages = queued(direct)
    assert [m["body"][0][1] for m in messages] == ids
    assert [m["headers"]["id"] for m in messages] == task_ids
    kept = direct.hgetall(Keys("treadle").tickets("wf"))
    assert len(kept) == len(ids)
    for raw in direct.lrange(QUEUE, 0, 2):
        workflow_id, step_id = key_of_payload(json.loads(raw)) or ("", "")
        ticket = json.loads(kept[step_id.encode()])
        assert ticket["headers"]["id"] == json.loads(raw)["headers"]["id"]
        assert ticket["routing_key"] == QUEUE and workflow_id == "wf"


def test_steps_of_a_short_task_share_messages_each_with_its_ticket(
    app: Celery, direct: redis.Redis
) -> None:
    store = StateStore(direct, Keys("treadle"))
    # What the workers report: the task takes a millisecond.
    observations = Observations(direct, store.keys.metrics)
    observations.run("treadle.noop", 0.001)
    observations.flush()
    ids = [f"s-{i}" for i in range(70)]
    with publishing(app, store) as (_, plain):
        for sid in ids:
            plain.add("wf", sid, STEP, "bulk")
    messages = queued(direct)
    # 50 fit in bundle_target_s (0.05 s), bundle_max caps them at 32: 70 in 3 messages.
    runs = [members(m["body"][0], m["body"][1]) for m in messages]
    assert [len(run) for run in runs] == [24, 23, 23]
    assert [s for run in runs for s in run] == ids
    kept = direct.hgetall(Keys("treadle").tickets("wf"))
    for message, run in zip(messages, runs, strict=True):
        assert (
            message["headers"]["argsrepr"] == f"workflow=wf step={run[0]}+{len(run) - 1} pool=bulk"
        )
        for step_id in run:
            ticket = json.loads(kept[step_id.encode()])
            assert ticket["headers"]["id"] == message["headers"]["id"]
    # Recovery sees each step's message where it is.
    assert present_steps(store) == {("wf", s) for s in ids}


def test_a_task_is_as_long_as_its_long_runs(direct: redis.Redis) -> None:
    store = StateStore(direct, Keys("treadle"))
    observations = Observations(direct, store.keys.metrics)
    for _ in range(90):
        observations.run("short", 0.002)
        observations.run("mostly-short", 0.001)
    for _ in range(10):
        observations.run("short", 0.004)
        observations.run("mostly-short", 0.3)  # its 95th percentile: 0.25-0.5 s
    observations.flush()
    typical = typical_run_s(store, ["short", "mostly-short", "never-ran"])
    assert typical["short"] == pytest.approx(0.0022)  # the mean
    assert typical["mostly-short"] == 0.25  # the floor of its 95th percentile's bucket
    assert typical["never-ran"] is None


def test_a_block_that_fails_sends_nothing(app: Celery, direct: redis.Redis) -> None:
    store = StateStore(direct, Keys("treadle"))
    with pytest.raises(RuntimeError), publishing(app, store) as (_, plain):
        plain.add("wf", "s-1", STEP, "bulk")
        raise RuntimeError("the dispatch failed half way")
    assert direct.llen(QUEUE) == 0
    assert direct.hlen(Keys("treadle").tickets("wf")) == 0


def test_a_wide_first_stage_and_counter_steps_run(client: Client) -> None:
    # b -> d and a, b -> c: not series-parallel, so every step runs on counters.
    spec = {
        "name": "plain-messages",
        "steps": [
            *({"id": f"p{i}", "task": "treadle.noop"} for i in range(30)),
            {"id": "a", "task": "treadle.noop"},
            {"id": "b", "task": "treadle.noop"},
            {"id": "c", "task": "treadle.noop", "after": ["a", "b"]},
            {"id": "d", "task": "treadle.noop", "after": ["b"]},
        ],
    }
    workflow_id = client.submit(spec)
    status = client.wait(workflow_id, timeout_s=60)
    assert status["state"] == "succeeded"
    assert {s["state"] for s in status["steps"]} == {"succeeded"}
    assert client.audit(workflow_id).problems == []
