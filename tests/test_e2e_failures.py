"""End to end: retries, dead letters, resume — failure semantics on real workers."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from orchestrator.client import Client
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e


def by_id(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in status["steps"]}


def test_a_retry_waits_in_redis_not_in_a_worker(client: Client, redis_client: redis.Redis) -> None:
    spec = {
        "name": "patient-retry",
        "steps": [
            {
                "id": "a",
                "task": "treadle.fail",
                "args": {"times": 1},
                "retry": {
                    "max_attempts": 2,
                    "backoff_s": 1.5,
                    "backoff_max_s": 1.5,
                    "jitter": False,
                },
            },
            {"id": "b", "task": "treadle.noop", "after": ["a"]},
        ],
    }
    workflow_id = client.submit(spec)
    wait_until(
        lambda: by_id(client.status(workflow_id))["a"]["state"] == "retrying",
        20,
        "the first attempt to fail",
    )
    keys = client.orchestrator.store.keys
    assert redis_client.zscore(keys.delayed, f"{workflow_id}/a/1") is not None
    # No worker holds the retry: nothing of this workflow is in kombu's unacked hash.
    unacked = redis_client.hvals("unacked")
    assert not [m for m in unacked if workflow_id.encode() in m]
    status = client.wait(workflow_id, timeout_s=30)
    assert status["state"] == "succeeded"
    steps = by_id(status)
    assert steps["a"]["attempts"] == 2
    assert client.audit(workflow_id).ok
    records = [json.loads(e) for e in client.orchestrator.store.audit_entries(workflow_id)[0]]
    retried = [r for r in records if r.get("step_id") == "a" and r["to"] == "running"]
    assert retried[1]["at"] - retried[0]["at"] >= 1.5  # the backoff was honoured
    assert redis_client.zscore(keys.delayed, f"{workflow_id}/a/1") is None


def test_retries_inside_a_chord_header_keep_the_chord(client: Client) -> None:
    flaky = {
        "task": "treadle.fail",
        "args": {"times": 2},
        "retry": {"max_attempts": 3, "backoff_s": 0.05, "backoff_max_s": 0.1},
    }
    spec = {
        "name": "flaky-chord",
        "stages": [
            {"id": "start", "task": "treadle.noop"},
            {
                "parallel": [
                    {"id": "x", **flaky},
                    {"id": "y", **flaky},
                    {"id": "z", "task": "treadle.noop"},
                ]
            },
            {"id": "join", "task": "treadle.noop"},
        ],
    }
    workflow_id = client.submit(spec)
    status = client.wait(workflow_id, timeout_s=30)
    assert status["state"] == "succeeded"
    steps = by_id(status)
    assert (steps["x"]["attempts"], steps["y"]["attempts"]) == (3, 3)
    assert client.audit(workflow_id).ok
