"""End to end: real Redis, real `celery worker` processes per pool, real Celery canvases."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from config.queues import declare_queues
from orchestrator.client import Client
from orchestrator.stack import Stack
from tests.conftest import wait_until
from workers.samples import workflow_files

pytestmark = pytest.mark.e2e


def faithful(client: Client, workflow_id: str) -> None:
    """`treadle audit`: the chain is intact and the run respected every edge of the graph."""
    report = client.audit(workflow_id)
    assert report.problems == []
    assert report.ok


def steps_by_id(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in status["steps"]}


@pytest.mark.parametrize("spec", workflow_files(), ids=lambda p: p.name)
def test_each_sample_workflow_succeeds_in_graph_order(client: Client, spec: Any) -> None:
    workflow_id = client.submit(spec)
    status = client.wait(workflow_id, timeout_s=60)
    assert status["state"] == "succeeded", status
    assert all(s["state"] == "succeeded" and s["attempts"] == 1 for s in status["steps"])
    faithful(client, workflow_id)


def test_steps_read_dependency_results_by_step_id(client: Client) -> None:
    spec = {
        "name": "data-flow",
        "params": {"greeting": "hello"},
        "steps": [
            {"id": "a", "task": "treadle.echo", "args": {"value": {"n": 1}}},
            {"id": "b", "task": "treadle.items", "args": {"n": 3}},
            {"id": "c", "task": "shop.reserve_inventory", "args": {"sku": "A-1", "work_s": 0}},
            {"id": "d", "task": "shop.authorize_payment", "args": {"work_s": 0}, "after": ["c"]},
        ],
    }
    workflow_id = client.submit(spec)
    assert client.wait(workflow_id, timeout_s=30)["state"] == "succeeded"
    results = client.orchestrator.store.results(workflow_id)
    assert results["a"] == {"n": 1}
    assert results["b"] == [0, 1, 2]
    assert results["d"]["reservation_id"] == results["c"]["reservation_id"]


def test_each_class_is_consumed_only_by_its_own_pool(client: Client) -> None:
    spec = {
        "name": "mixed-classes",
        "priority": "default",
        "steps": [
            {"id": "urgent", "task": "treadle.noop", "priority": "critical"},
            {"id": "normal", "task": "treadle.noop"},
            {"id": "later", "task": "treadle.noop", "priority": "bulk", "after": ["urgent"]},
            {
                "id": "urgent-again",
                "task": "treadle.noop",
                "priority": "critical",
                "after": ["normal", "later"],
            },
        ],
    }
    workflow_id = client.submit(spec)
    steps = steps_by_id(client.wait(workflow_id, timeout_s=30))
    assert steps["urgent"]["worker"].startswith("critical-")
    assert steps["urgent-again"]["worker"].startswith("critical-")
    assert steps["normal"]["worker"].startswith("default-")
    assert steps["later"]["worker"].startswith("bulk-")
    faithful(client, workflow_id)


def test_nested_series_parallel_graph_runs_as_nested_canvas(client: Client) -> None:
    # A diamond of diamonds: chords inside a chord's header and body.
    after = {
        "a": [],
        "b1": ["a"],
        "b2": ["b1"],
        "c1": ["a"],
        "c2": ["c1"],
        "c3": ["c1"],
        "c4": ["c2", "c3"],
        "d": ["b2", "c4"],
        "e1": ["d"],
        "e2": ["d"],
        "f": ["e1", "e2"],
    }
    spec = {
        "name": "diamond-of-diamonds",
        "steps": [
            {"id": sid, "task": "treadle.sleep", "args": {"seconds": 0.01}, "after": deps}
            for sid, deps in after.items()
        ],
    }
    workflow_id = client.submit(spec)
    assert client.wait(workflow_id, timeout_s=60)["state"] == "succeeded"
    faithful(client, workflow_id)


def test_a_graph_that_is_not_series_parallel_still_respects_every_edge(client: Client) -> None:
    after = {"a": [], "b": [], "c": ["a", "b"], "d": ["b"], "e": ["c", "d"], "f": ["d"]}
    spec = {
        "name": "n-shape",
        "steps": [{"id": s, "task": "treadle.noop", "after": d} for s, d in after.items()],
    }
    workflow_id = client.submit(spec)
    assert client.wait(workflow_id, timeout_s=30)["state"] == "succeeded"
    faithful(client, workflow_id)


def test_a_failing_step_is_retried_and_every_attempt_recorded(client: Client) -> None:
    spec = {
        "name": "flaky",
        "steps": [
            {
                "id": "flaky",
                "task": "treadle.fail",
                "args": {"times": 2},
                "retry": {"max_attempts": 3, "backoff_s": 0.05, "backoff_max_s": 0.1},
            },
            {"id": "after", "task": "treadle.noop", "after": ["flaky"]},
        ],
    }
    workflow_id = client.submit(spec)
    status = client.wait(workflow_id, timeout_s=30)
    assert status["state"] == "succeeded"
    assert steps_by_id(status)["flaky"]["attempts"] == 3
    records = [json.loads(e) for e in client.orchestrator.store.audit_entries(workflow_id)[0]]
    # Queued with the rest of the first stage: one record of the workflow names them all.
    assert any("flaky" in r.get("queued", []) for r in records if r["step_id"] is None)
    flaky = [(r["to"], r.get("attempt")) for r in records if r.get("step_id") == "flaky"]
    assert flaky == [
        ("running", 1),
        ("retrying", 1),
        ("running", 2),
        ("retrying", 2),
        ("running", 3),
        ("succeeded", 3),
    ]
    faithful(client, workflow_id)


def test_a_step_that_fails_for_good_stops_the_workflow(client: Client) -> None:
    spec = {
        "name": "doomed",
        "steps": [
            {"id": "a", "task": "treadle.noop"},
            {
                "id": "slow-branch",
                "task": "treadle.sleep",
                "args": {"seconds": 0.5},
                "after": ["a"],
            },
            # `bad` fails only once slow-branch is surely running (two pool slots).
            {"id": "pause", "task": "treadle.sleep", "args": {"seconds": 0.2}, "after": ["a"]},
            {
                "id": "bad",
                "task": "treadle.fail",
                "args": {"times": 5, "permanent": True},
                "retry": {"max_attempts": 5, "backoff_s": 0.05},
                "after": ["pause"],
            },
            {"id": "after-bad", "task": "treadle.noop", "after": ["bad"]},
            {"id": "join", "task": "treadle.noop", "after": ["slow-branch", "after-bad"]},
        ],
    }
    workflow_id = client.submit(spec)
    status = client.wait(workflow_id, timeout_s=30)
    steps = steps_by_id(status)
    assert status["state"] == "failed"
    assert steps["bad"]["state"] == "dead-lettered"
    assert steps["bad"]["attempts"] == 1  # Permanent: no retry
    assert "Permanent" in steps["bad"]["error"]
    assert steps["slow-branch"]["state"] == "succeeded"  # already running: finished
    assert steps["after-bad"]["state"] == "skipped"
    assert steps["join"]["state"] == "skipped"
    faithful(client, workflow_id)


def test_cancel_stops_steps_that_have_not_started(client: Client) -> None:
    spec = {
        "name": "long-walk",
        "steps": [
            {
                "id": f"s{i}",
                "task": "treadle.sleep",
                "args": {"seconds": 0.3},
                "after": [f"s{i - 1}"] if i else [],
            }
            for i in range(6)
        ],
    }
    workflow_id = client.submit(spec)

    def s0_state() -> str:
        return str(steps_by_id(client.status(workflow_id))["s0"]["state"])

    wait_until(lambda: s0_state() == "running", 20, "s0 to start", poll_s=0.02)
    assert client.cancel(workflow_id) == "cancelled"
    # s0 was running: it finishes; its successor was never started and must never start.
    wait_until(lambda: s0_state() != "running", 20, "s0 to finish", poll_s=0.02)
    status = client.status(workflow_id)
    steps = steps_by_id(status)
    assert status["state"] == "cancelled"
    assert steps["s0"]["state"] == "succeeded"
    assert all(steps[f"s{i}"]["state"] == "cancelled" for i in range(1, 6))
    assert all(steps[f"s{i}"]["started_at"] is None for i in range(1, 6))
    assert client.cancel(workflow_id) == "cancelled"  # idempotent


def test_the_same_idempotency_key_returns_the_first_workflow(client: Client) -> None:
    spec = {
        "name": "once",
        "idempotency_key": f"order-{time.time_ns()}",
        "steps": [{"id": "a", "task": "treadle.noop"}],
    }
    first = client.submit_detailed(spec)
    second = client.submit_detailed(spec)
    assert first.created and not second.created
    assert second.id == first.id


def test_status_json_has_the_fields_the_spec_promises(client: Client) -> None:
    workflow_id = client.submit(
        {
            "name": "fields",
            "steps": [
                {"id": "a", "task": "treadle.noop"},
                {"id": "b", "task": "treadle.noop", "after": ["a"]},
            ],
        }
    )
    status = client.wait(workflow_id, timeout_s=30)
    for key in ("id", "name", "state", "priority", "submitted_at", "finished_at", "steps"):
        assert key in status
    b = steps_by_id(status)["b"]
    for key in (
        "id",
        "task",
        "state",
        "attempts",
        "queued_at",
        "started_at",
        "finished_at",
        "worker",
        "after",
    ):
        assert key in b
    assert b["after"] == ["a"]
    assert b["queued_at"] <= b["started_at"] <= b["finished_at"]
    assert status["submitted_at"] <= b["queued_at"]


def test_treadle_audit_passes_a_run_and_fails_a_doctored_one(
    stack: Stack, client: Client, redis_client: redis.Redis
) -> None:
    from tests.conftest import run_cli

    workflow_id = client.submit(
        {
            "name": "audited",
            "steps": [
                {"id": "a", "task": "treadle.noop"},
                {"id": "b", "task": "treadle.noop", "after": ["a"]},
            ],
        }
    )
    client.wait(workflow_id, timeout_s=30)
    passed = run_cli(stack, "audit", workflow_id, "--json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    report = json.loads(passed.stdout)
    assert report["ok"] and {s["id"] for s in report["steps"]} == {"a", "b"}
    assert all(s["wait_s"] is not None and s["run_s"] is not None for s in report["steps"])

    key = client.orchestrator.store.keys.audit(workflow_id)
    stored = redis_client.lindex(key, 2)
    assert stored is not None
    record = json.loads(stored)
    record["worker"] = "someone-else@host"
    redis_client.lset(key, 2, json.dumps(record, sort_keys=True, separators=(",", ":")))
    failed = run_cli(stack, "audit", workflow_id)
    assert failed.returncode == 1
    assert "VIOLATED" in failed.stdout
    assert run_cli(stack, "audit", "no-such-workflow").returncode == 4


def test_a_stored_but_undispatched_workflow_is_recovered(client: Client) -> None:
    from orchestrator.compiler import compile_workflow

    workflow = client.orchestrator.checker.check(
        {"name": "stranded", "steps": [{"id": "a", "task": "treadle.noop"}]}
    )
    workflow_id = f"stranded-{time.time_ns()}"
    # What a submitter that died right after storing leaves behind.
    client.orchestrator.store.create(workflow_id, workflow, compile_workflow(workflow))
    assert client.wait(workflow_id, timeout_s=30)["state"] == "succeeded"


def test_bad_specs_exit_2_and_leave_nothing_behind(
    stack: Stack, client: Client, redis_client: redis.Redis, tmp_path: Any
) -> None:
    from tests.conftest import run_cli

    bad = {
        "duplicate.yaml": (
            "steps:\n  - {id: a, task: treadle.noop}\n  - {id: a, task: treadle.noop}\n",
            "steps[1].id",
        ),
        "unknown-after.yaml": (
            "steps:\n  - {id: a, task: treadle.noop, after: [pay]}\n",
            "steps[0].after: unknown step 'pay'",
        ),
        "cycle.yaml": (
            "steps:\n  - {id: a, task: treadle.noop, after: [c]}\n"
            "  - {id: b, task: treadle.noop, after: [a]}\n"
            "  - {id: c, task: treadle.noop, after: [b]}\n",
            "cycle: a -> b -> c -> a",
        ),
        "unknown-task.yaml": ("steps:\n  - {id: a, task: shop.nope}\n", "steps[0].task"),
        "bad-args.yaml": (
            "steps:\n  - {id: a, task: treadle.sleep, args: {secs: 1}}\n",
            "steps[0].args.secs",
        ),
        "empty.yaml": ("steps: []\n", "steps: the workflow has no steps"),
        "too-big.yaml": (
            "params: {blob: '" + "x" * 300_000 + "'}\nsteps:\n  - {id: a, task: treadle.noop}\n",
            "params:",
        ),
    }
    before = redis_client.zcard(client.orchestrator.store.keys.index)
    for name, (body, location) in bad.items():
        path = tmp_path / name
        path.write_text("name: bad\n" + body)
        result = run_cli(stack, "submit", str(path))
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert location in result.stderr, (name, result.stderr)
    assert redis_client.zcard(client.orchestrator.store.keys.index) == before
    for queue in declare_queues():
        assert redis_client.llen(queue.name) == 0, queue.name


def test_cli_submit_wait_json_and_exit_codes(stack: Stack, tmp_path: Any) -> None:
    from tests.conftest import run_cli

    good = tmp_path / "good.yaml"
    good.write_text("name: good\nsteps:\n  - {id: a, task: treadle.noop}\n")
    result = run_cli(stack, "submit", str(good), "--wait", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "succeeded"

    failing = tmp_path / "failing.yaml"
    failing.write_text("name: failing\nsteps:\n  - {id: a, task: treadle.fail, args: {times: 1}}\n")
    result = run_cli(stack, "submit", str(failing), "--wait", "--json")
    assert result.returncode == 1
    workflow_id = json.loads(result.stdout)["id"]

    status = run_cli(stack, "status", workflow_id, "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["state"] == "failed"
    assert run_cli(stack, "status", "no-such-id").returncode == 4

    listed = run_cli(stack, "list", "--state", "failed", "--json")
    assert workflow_id in [row["id"] for row in json.loads(listed.stdout)]


def test_stage_form_with_back_to_back_parallel_stages(client: Client) -> None:
    # Compiles to chord(g1, chord(g2, g3)) then a chain: a chord whose body is a group.
    stages = [
        {"parallel": [{"id": f"p1-{i}", "task": "treadle.noop"} for i in range(3)]},
        {"parallel": [{"id": f"p2-{i}", "task": "treadle.noop"} for i in range(3)]},
        {"parallel": [{"id": f"p3-{i}", "task": "treadle.noop"} for i in range(3)]},
    ]
    workflow_id = client.submit({"name": "back-to-back", "stages": stages})
    assert client.wait(workflow_id, timeout_s=30)["state"] == "succeeded"
    faithful(client, workflow_id)


def test_a_pipeline_of_many_fan_outs_runs_as_a_flat_chain_of_chords(client: Client) -> None:
    stages: list[Any] = []
    for i in range(15):
        stages.append({"id": f"t{i}", "task": "treadle.noop"})
        stages.append(
            {
                "parallel": [
                    {"id": f"a{i}", "task": "treadle.noop"},
                    {"id": f"b{i}", "task": "treadle.noop"},
                ]
            }
        )
    stages.append({"id": "end", "task": "treadle.noop"})
    workflow_id = client.submit({"name": "fan-out-pipeline", "stages": stages})
    assert client.wait(workflow_id, timeout_s=60)["state"] == "succeeded"
    faithful(client, workflow_id)


def test_producers_can_submit_with_a_plain_celery_message(client: Client) -> None:
    # What a producer in another language does: one JSON message to the orchestrator queue.
    app = client.orchestrator.app
    name = f"by-message-{time.time_ns()}"
    spec = {"name": name, "steps": [{"id": "a", "task": "treadle.echo", "args": {"value": 7}}]}
    sent = app.send_task(
        "treadle.submit", args=[spec], kwargs={"params": {"k": 1}}, queue="orchestrator"
    )
    bad = app.send_task("treadle.submit", args=[{"name": "bad", "steps": []}], queue="orchestrator")

    def meta(task_id: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            found: dict[str, Any] = app.backend.get_task_meta(task_id)
            return found if found["status"] == "SUCCESS" else None

        return wait_until(done, 30, f"the orchestrator to answer message {task_id}")

    workflow_id = meta(sent.id)["result"]["id"]
    status = client.wait(workflow_id, timeout_s=30)
    assert (status["name"], status["state"]) == (name, "succeeded")
    assert client.orchestrator.store.results(workflow_id) == {"a": 7}
    refused = meta(bad.id)["result"]
    assert refused["error"] == "invalid"
    assert refused["problems"] == ["steps: the workflow has no steps"]
