"""Heartbeats that tell when each worker's oldest running step started (real Redis, a
spare database; the gauge on real workers is tested in test_e2e_metrics)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from orchestrator import heartbeats
from orchestrator.keys import Keys
from orchestrator.stack import Stack
from orchestrator.store import StateStore
from tests.conftest import spare_database

pytestmark = pytest.mark.e2e

KEYS = Keys("treadle")


@pytest.fixture
def spare(stack: Stack) -> Iterator[redis.Redis]:
    yield from spare_database(stack, 12)


def test_the_oldest_start_per_class_is_taken_over_every_live_worker(
    spare: redis.Redis,
) -> None:
    beats = {
        "a": heartbeats.beat({"default": 100.0, "bulk": 50.0}),
        "b": heartbeats.beat({"default": 90.0}),
        "old": "1",  # a worker of an earlier version: alive, says nothing of its steps
        "idle": heartbeats.beat({}),
    }
    for incarnation, said in beats.items():
        spare.set(KEYS.alive(incarnation), said)
    spare.sadd(KEYS.incarnations, *beats, "gone")  # "gone": its beats ran out
    assert heartbeats.oldest_running(StateStore(spare, KEYS)) == {"default": 90.0, "bulk": 50.0}


def test_no_worker_no_running_step(spare: redis.Redis) -> None:
    assert heartbeats.oldest_running(StateStore(spare, KEYS)) == {}


def test_steps_not_started_and_other_queues_are_left_out() -> None:
    running = [
        ("default", 30.0),
        ("default", 20.0),
        ("bulk", None),  # taken from its queue, not yet started by a pool process
        ("orchestrator", 1.0),  # not a class's queue
        (None, 5.0),
    ]
    assert heartbeats.oldest_of(running) == {"default": 20.0}
