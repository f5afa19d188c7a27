"""End to end: retries, dead letters, resume — failure semantics on real workers."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import redis

from orchestrator.client import Client
from orchestrator.errors import InvalidInput
from orchestrator.stack import Stack
from tests.conftest import run_cli, wait_until
from tests.tasks import fix

pytestmark = pytest.mark.e2e


def by_id(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in status["steps"]}


BACKOFF_S = 3.0  # longer than an acknowledgement takes on a loaded machine


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
                    "backoff_s": BACKOFF_S,
                    "backoff_max_s": BACKOFF_S,
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

    def held_by_a_worker() -> list[bytes]:
        unacked: list[bytes] = redis_client.hvals("unacked")  # type: ignore[assignment]
        return [m for m in unacked if workflow_id.encode() in m]

    # The failed attempt's delivery is acknowledged (just after "retrying" is recorded);
    # from then on, during the backoff, no worker holds anything of this workflow: the
    # retry waits in Redis's delayed set.
    wait_until(lambda: not held_by_a_worker(), 2, "the failed attempt to be acknowledged")
    assert redis_client.zscore(keys.delayed, f"{workflow_id}/a/1") is not None
    status = client.wait(workflow_id, timeout_s=30)
    assert status["state"] == "succeeded"
    steps = by_id(status)
    assert steps["a"]["attempts"] == 2
    assert client.audit(workflow_id).ok
    records = [json.loads(e) for e in client.orchestrator.store.audit_entries(workflow_id)[0]]
    retried = [r for r in records if r.get("step_id") == "a" and r.get("to") == "running"]
    assert retried[1]["at"] - retried[0]["at"] >= BACKOFF_S  # the backoff was honoured
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


def test_a_task_that_always_raises_is_dead_lettered_after_max_attempts_and_replayed(
    stack: Stack, client: Client
) -> None:
    name = f"fixme-{time.time_ns()}"
    spec = {
        "name": "dead-letter-and-replay",
        "steps": [
            {"id": "before", "task": "treadle.echo", "args": {"value": 1}},
            {
                "id": "broken",
                "task": "tests.broken_until_fixed",
                "args": {"name": name},
                "after": ["before"],
                "retry": {"max_attempts": 3, "backoff_s": 0.05, "backoff_max_s": 0.1},
            },
            {"id": "after", "task": "treadle.noop", "after": ["broken"]},
        ],
    }
    workflow_id = client.submit(spec)
    status = client.wait(workflow_id, timeout_s=30)
    assert status["state"] == "failed"
    steps = by_id(status)
    assert steps["broken"]["state"] == "dead-lettered"
    assert steps["broken"]["attempts"] == 3  # exactly max_attempts
    assert steps["after"]["state"] == "skipped"

    listed = json.loads(run_cli(stack, "dlq", "list", "--json").stdout)
    letter = next(e for e in listed if e.get("workflow_id") == workflow_id)
    for key in (
        "id",
        "workflow_id",
        "step_id",
        "task",
        "error",
        "attempts",
        "args",
        "traceback",
        "at",
    ):
        assert key in letter
    assert (letter["step_id"], letter["task"], letter["attempts"]) == (
        "broken",
        "tests.broken_until_fixed",
        3,
    )
    assert "is broken" in letter["error"] and "RuntimeError" in letter["traceback"]
    shown = run_cli(stack, "dlq", "show", letter["id"])
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == letter["id"]

    fix(name, stack.redis_url)
    replayed = run_cli(stack, "dlq", "replay", letter["id"])
    assert replayed.returncode == 0, replayed.stderr
    status = client.wait(workflow_id, timeout_s=30)
    assert status["state"] == "succeeded"
    steps = by_id(status)
    assert steps["broken"]["attempts"] == 1  # counted afresh after the replay
    assert steps["after"]["state"] == "succeeded"
    assert client.orchestrator.store.results(workflow_id)["before"] == 1  # kept, not re-run
    assert not client.dead_letters.of_workflow(workflow_id)
    report = client.audit(workflow_id)
    assert report.ok, report.problems
    before_runs = [t for t in report.timings if t.step_id == "before"]
    assert before_runs[0].attempts == 1  # the checkpoint: `before` ran once


def test_a_permanent_failure_is_dead_lettered_at_once(client: Client) -> None:
    workflow_id = client.submit(
        {
            "name": "permanent",
            "steps": [
                {
                    "id": "p",
                    "task": "tests.always_permanent",
                    "retry": {"max_attempts": 5, "backoff_s": 0.05},
                }
            ],
        }
    )
    status = client.wait(workflow_id, timeout_s=30)
    assert by_id(status)["p"]["attempts"] == 1
    assert [e["step_id"] for e in client.dead_letters.of_workflow(workflow_id)] == ["p"]


def test_resume_reruns_what_failed_and_what_depends_on_it(stack: Stack, client: Client) -> None:
    name = f"resume-{time.time_ns()}"
    spec = {
        "name": "resumable",
        "steps": [
            {"id": "a", "task": "treadle.noop"},
            {"id": "b", "task": "tests.broken_until_fixed", "args": {"name": name}, "after": ["a"]},
            {"id": "c", "task": "treadle.noop", "after": ["a"]},
            {"id": "d", "task": "treadle.noop", "after": ["b", "c"]},
        ],
    }
    workflow_id = client.submit(spec)
    assert client.wait(workflow_id, timeout_s=30)["state"] == "failed"
    refused = run_cli(stack, "resume", "no-such-workflow")
    assert refused.returncode == 4
    fix(name, stack.redis_url)
    resumed = run_cli(stack, "resume", workflow_id)
    assert resumed.returncode == 0, resumed.stderr
    status = client.wait(workflow_id, timeout_s=30)
    assert status["state"] == "succeeded"
    report = client.audit(workflow_id)
    assert report.ok, report.problems
    runs = {t.step_id: t.attempts for t in report.timings}
    assert runs["a"] == 1  # succeeded before: not run again
    assert runs["b"] == 2  # failed once, then once more after the resume


def test_a_message_that_is_not_json_is_dead_lettered_and_never_runs(
    client: Client, redis_client: redis.Redis
) -> None:
    before = len(client.dead_letters)
    body = b"\\x80\\x04\\x95 not json, maybe pickle"
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": {"task": "treadle.noop", "id": "poison-1", "lang": "py"},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": "poison-tag",
            "delivery_info": {"exchange": "treadle", "routing_key": "default"},
            "priority": 0,
        },
    }
    redis_client.lpush("default", json.dumps(envelope))
    wait_until(lambda: len(client.dead_letters) > before, 30, "the poison message to be filed")
    letter = client.dead_letters.entries()[0]
    assert letter["kind"] == "message"
    assert letter["queue"] == "default"
    assert redis_client.llen("default") == 0
    with pytest.raises(InvalidInput, match="cannot be replayed"):
        client.replay(letter["id"])


def test_retry_on_limits_which_errors_are_retried(client: Client) -> None:
    def step(step_id: str, retry_on: list[str]) -> dict[str, Any]:
        return {
            "id": step_id,
            "task": "treadle.fail",
            "args": {"times": 1},
            "retry": {"max_attempts": 3, "backoff_s": 0.05, "retry_on": retry_on},
        }

    # Two workflows: under on_failure: stop, one step failing for good would skip the other.
    retried = client.submit({"name": "retry-on", "steps": [step("s", ["InjectedFailure"])]})
    refused = client.submit(
        {"name": "retry-on", "steps": [step("s", ["TimeoutError", "ConnectionError"])]}
    )
    first = by_id(client.wait(retried, timeout_s=30))["s"]
    second = by_id(client.wait(refused, timeout_s=30))["s"]
    assert (first["state"], first["attempts"]) == ("succeeded", 2)
    assert (second["state"], second["attempts"]) == ("dead-lettered", 1)


def test_a_task_that_kills_its_worker_does_not_loop(client: Client) -> None:
    workflow_id = client.submit(
        {
            "name": "worker-killer",
            "steps": [
                {
                    "id": "killer",
                    "task": "tests.kill_my_worker",
                    "retry": {"max_attempts": 2, "backoff_s": 0.05},
                },
            ],
        }
    )
    status = client.wait(workflow_id, timeout_s=60)
    killer = by_id(status)["killer"]
    assert killer["state"] == "dead-lettered"
    assert killer["attempts"] == 2
    assert "worker was lost" in killer["error"]
    assert [e["step_id"] for e in client.dead_letters.of_workflow(workflow_id)] == ["killer"]


def saga(compensation_of_b: str) -> dict[str, Any]:
    return {
        "name": "saga",
        "on_failure": "compensate",
        "steps": [
            {
                "id": "a",
                "task": "treadle.echo",
                "args": {"value": "A"},
                "compensate": "treadle.echo",
            },
            {
                "id": "b",
                "task": "treadle.sleep",
                "args": {"seconds": 0.1},
                "compensate": compensation_of_b,
                "after": ["a"],
            },
            {"id": "c", "task": "treadle.noop", "after": ["a"]},  # nothing to undo
            {"id": "pay", "task": "tests.always_permanent", "after": ["b", "c"]},
            {"id": "ship", "task": "treadle.noop", "after": ["pay"], "compensate": "treadle.echo"},
        ],
    }


def test_compensate_undoes_succeeded_steps_in_reverse_order(client: Client) -> None:
    workflow_id = client.submit(saga("treadle.echo"))
    status = client.wait(workflow_id, timeout_s=30)
    steps = by_id(status)
    assert status["state"] == "compensated"
    assert (steps["a"]["state"], steps["b"]["state"]) == ("compensated", "compensated")
    assert steps["c"]["state"] == "succeeded"  # it has no compensation
    assert steps["pay"]["state"] == "dead-lettered"
    assert steps["ship"]["state"] == "skipped"  # never ran: nothing to undo
    records = [json.loads(e) for e in client.orchestrator.store.audit_entries(workflow_id)[0]]
    ran = [r["step_id"] for r in records if r.get("to") == "running"]
    assert ran[-2:] == ["compensate:b", "compensate:a"]  # b finished last: undone first
    assert client.orchestrator.store.results(workflow_id)["compensate:a"] is None
    assert client.audit(workflow_id).ok


def test_a_failing_compensation_fails_the_workflow_and_is_named(client: Client) -> None:
    workflow_id = client.submit(saga("tests.always_permanent"))
    status = client.wait(workflow_id, timeout_s=30)
    steps = by_id(status)
    assert status["state"] == "failed"
    assert "compensate:b" in status["error"] and "tests.always_permanent" in status["error"]
    assert steps["compensate:b"]["state"] == "dead-lettered"
    assert steps["compensate:a"]["state"] == "skipped"  # the saga stops where it failed
    assert steps["a"]["state"] == "succeeded"


def test_a_step_killed_at_its_hard_time_limit_counts_as_a_failed_attempt(
    client: Client,
) -> None:
    workflow_id = client.submit(
        {
            "name": "stubborn",
            "steps": [
                {
                    "id": "stubborn",
                    "task": "tests.ignore_soft_limit",
                    "args": {"seconds": 60},
                    "timeout_s": 0.2,
                    "retry": {"max_attempts": 2, "backoff_s": 0.05},
                },
                {"id": "next", "task": "treadle.noop", "after": ["stubborn"]},
            ],
        }
    )
    status = client.wait(workflow_id, timeout_s=60)  # hard limit: 0.2 s + 5 s grace
    steps = by_id(status)
    assert status["state"] == "failed"  # the workflow went on to its end
    assert steps["stubborn"]["state"] == "dead-lettered"
    assert steps["stubborn"]["attempts"] == 2
    assert "hard time limit" in steps["stubborn"]["error"]
    assert steps["next"]["state"] == "skipped"
    assert client.audit(workflow_id).ok


def test_cancel_terminate_stops_a_running_step(stack: Stack, client: Client) -> None:
    workflow_id = client.submit(
        {
            "name": "long-running",
            "steps": [
                {"id": "long", "task": "treadle.sleep", "args": {"seconds": 30}},
                {"id": "after", "task": "treadle.noop", "after": ["long"]},
            ],
        }
    )
    wait_until(
        lambda: by_id(client.status(workflow_id))["long"]["state"] == "running",
        20,
        "the long step to start",
    )
    started = time.monotonic()
    cancelled = run_cli(stack, "cancel", workflow_id, "--terminate")
    assert cancelled.returncode == 0, cancelled.stderr
    steps = by_id(client.status(workflow_id))
    assert (steps["long"]["state"], steps["after"]["state"]) == ("cancelled", "cancelled")
    record = client.orchestrator.store.step_records(workflow_id)["long"]
    task_id, worker = record["task_id"], record["worker"]

    def stopped() -> bool:
        # Its worker answers, and is no longer running it.
        active = client.orchestrator.app.control.inspect([worker], timeout=1.0).active() or {}
        return worker in active and task_id not in {t["id"] for t in active[worker]}

    wait_until(stopped, 20, "the worker to stop the running step", poll_s=0.2)
    assert time.monotonic() - started < 20  # long before its 30 s sleep would have ended
    records = [json.loads(e) for e in client.orchestrator.store.audit_entries(workflow_id)[0]]
    assert not [r for r in records if r.get("to") == "succeeded"]


def test_resume_of_a_graph_on_counters_waits_only_for_what_runs_again(
    stack: Stack, client: Client
) -> None:
    # N shape (runs on counters): c waits for a and b; after the resume only b runs
    # again, so c must wait for b alone — a succeeded before and will not end again.
    name = f"resume-n-{time.time_ns()}"
    workflow_id = client.submit(
        {
            "name": "resume-n",
            "steps": [
                {"id": "a", "task": "treadle.noop"},
                {"id": "b", "task": "tests.broken_until_fixed", "args": {"name": name}},
                {"id": "c", "task": "treadle.noop", "after": ["a", "b"]},
                {"id": "d", "task": "treadle.noop", "after": ["b"]},
            ],
        }
    )
    failed = client.wait(workflow_id, timeout_s=30)
    assert failed["state"] == "failed"
    # `a` may not have started before `b` failed (then it was skipped, and runs again).
    a_again = by_id(failed)["a"]["state"] != "succeeded"
    fix(name, stack.redis_url)
    assert client.resume(workflow_id) == (["a"] if a_again else []) + ["b", "c", "d"]
    status = client.wait(workflow_id, timeout_s=30)
    assert status["state"] == "succeeded"
    assert client.audit(workflow_id).ok
