"""End to end: exact DAG execution, dynamic fan-out and conditions, on real workers, with
`treadle audit` run on every workflow."""

from __future__ import annotations

import random
from typing import Any

import pytest

from orchestrator.client import Client
from tests.faults import record_start, record_success
from tests.graphs import CORPUS, layered_dag

pytestmark = pytest.mark.e2e


def run(client: Client, spec: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
    workflow_id = client.submit(spec)
    status = client.wait(workflow_id, timeout_s=timeout_s)
    report = client.audit(workflow_id)
    assert report.ok, report.problems
    return status


def by_id(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in status["steps"]}


def sleeping(after: dict[str, list[str]], seconds: float = 0.01) -> list[dict[str, Any]]:
    return [
        {"id": sid, "task": "treadle.sleep", "args": {"seconds": seconds}, "after": deps}
        for sid, deps in after.items()
    ]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_graph_of_the_corpus_respects_every_edge(client: Client, name: str) -> None:
    status = run(client, {"name": name, "steps": sleeping(CORPUS[name])})
    assert status["state"] == "succeeded"


def test_a_random_layered_dag_of_fifty_steps(client: Client) -> None:
    after = layered_dag(random.Random(7), nodes=50, layers=6)
    status = run(client, {"name": "layered-50", "priority": "bulk", "steps": sleeping(after)})
    assert status["state"] == "succeeded"
    assert len(status["steps"]) == 50


def test_fan_out_of_200_items_joined_in_order(client: Client) -> None:
    spec = {
        "name": "fan-out-200",
        "steps": [
            {"id": "source", "task": "treadle.items", "args": {"n": 200}},
            {"id": "square", "task": "treadle.echo", "for_each": "source"},
            {
                "id": "total",
                "task": "treadle.echo",
                "after": ["square"],
                "args": {"value": "joined"},
            },
        ],
    }
    workflow_id = client.submit(spec)
    status = client.wait(workflow_id, timeout_s=120)
    assert status["state"] == "succeeded", [s for s in status["steps"] if s["state"] != "succeeded"]
    assert client.audit(workflow_id).ok
    results = client.orchestrator.store.results(workflow_id)
    assert results["square"] == list(range(200))  # echo(item) for each item, in order
    items = [s for s in status["steps"] if s.get("item_of") == "square"]
    assert [s["id"] for s in items] == [f"square[{i}]" for i in range(200)]
    assert all(s["state"] == "succeeded" and s["attempts"] == 1 for s in items)


def test_hyper_parameter_fan_out_with_max_parallel(client: Client) -> None:
    # The ML case: train once per hyper-parameter set, at most 2 at a time, then pick.
    spec = {
        "name": "hparams",
        "priority": "bulk",
        "steps": [
            {
                "id": "grid",
                "task": "treadle.echo",
                "args": {
                    "value": [{"lr": 0.1}, {"lr": 0.01}, {"lr": 0.3}, {"lr": 0.05}, {"lr": 1}]
                },
            },
            {
                "id": "train",
                "task": "treadle.sleep",
                "args": {"seconds": 0.2},
                "for_each": "grid",
                "max_parallel": 2,
            },
            {"id": "evaluate", "task": "treadle.noop", "after": ["train"]},
        ],
    }
    workflow_id = client.submit(spec)
    status = client.wait(workflow_id, timeout_s=60)
    assert status["state"] == "succeeded"
    assert client.audit(workflow_id).ok
    items = [s for s in status["steps"] if s.get("item_of") == "train"]
    assert len(items) == 5
    spans = [(s["started_at"], s["finished_at"]) for s in items]
    most = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
    assert most <= 2
    evaluate = by_id(status)["evaluate"]
    assert evaluate["started_at"] >= max(end for _, end in spans)


def test_a_fan_out_inside_a_parallel_stage(client: Client) -> None:
    stages = [
        {"id": "source", "task": "treadle.items", "args": {"n": 5}},
        {
            "parallel": [
                {"id": "each", "task": "treadle.echo", "for_each": "source"},
                {"id": "beside", "task": "treadle.noop"},
            ]
        },
        {"id": "after", "task": "treadle.noop"},
    ]
    status = run(client, {"name": "fan-out-in-chord", "stages": stages})
    assert status["state"] == "succeeded"
    assert client.orchestrator.store.results(status["id"])["each"] == [0, 1, 2, 3, 4]


def test_an_item_that_fails_for_good_fails_its_fan_out(client: Client) -> None:
    spec = {
        "name": "fan-out-fails",
        "steps": [
            {"id": "source", "task": "treadle.items", "args": {"n": 3}},
            {
                "id": "each",
                "task": "treadle.fail",
                "args": {"times": 1, "permanent": True},
                "for_each": "source",
            },
            {"id": "after", "task": "treadle.noop", "after": ["each"]},
        ],
    }
    status = run(client, spec)
    steps = by_id(status)
    assert status["state"] == "failed"
    assert steps["each"]["state"] == "failed"
    assert steps["after"]["state"] == "skipped"


def test_an_empty_fan_out_joins_to_an_empty_list(client: Client) -> None:
    spec = {
        "name": "fan-out-empty",
        "steps": [
            {"id": "source", "task": "treadle.items", "args": {"n": 0}},
            {"id": "each", "task": "treadle.echo", "for_each": "source"},
            {"id": "after", "task": "treadle.noop", "after": ["each"]},
        ],
    }
    status = run(client, spec)
    assert status["state"] == "succeeded"
    assert client.orchestrator.store.results(status["id"])["each"] == []


def test_conditions_skip_and_skipping_propagates_unless_all_done(client: Client) -> None:
    spec = {
        "name": "conditions",
        "params": {"express": True, "amount": 120},
        "steps": [
            {"id": "check", "task": "treadle.echo", "args": {"value": {"fraud": False}}},
            {
                "id": "express",
                "task": "treadle.noop",
                "after": ["check"],
                "when": "params.express and not results.check.fraud",
            },
            {
                "id": "review",
                "task": "treadle.noop",
                "after": ["check"],
                "when": "results.check.fraud or params.amount > 1000",
            },
            {"id": "after-review", "task": "treadle.noop", "after": ["review"]},
            {"id": "after-after", "task": "treadle.noop", "after": ["after-review"]},
            {
                "id": "report",
                "task": "treadle.noop",
                "after": ["express", "after-after"],
                "trigger": "all_done",
            },
        ],
    }
    status = run(client, spec)
    steps = by_id(status)
    assert status["state"] == "succeeded"
    assert steps["express"]["state"] == "succeeded"
    assert steps["review"]["state"] == "skipped"
    assert steps["review"]["skip_reason"].startswith("condition is false")
    assert steps["after-review"]["state"] == "skipped"
    assert steps["after-after"]["state"] == "skipped"
    assert steps["report"]["state"] == "succeeded"  # all_done: runs whatever came before
    assert steps["review"]["attempts"] == 0  # skipped steps never ran


def test_conditions_on_counter_steps(client: Client) -> None:
    # An N-shaped graph (runs on counters) with a skipped branch.
    spec = {
        "name": "conditions-n",
        "params": {"go": False},
        "steps": [
            {"id": "a", "task": "treadle.noop"},
            {"id": "b", "task": "treadle.noop", "when": "params.go"},
            {"id": "c", "task": "treadle.noop", "after": ["a", "b"], "trigger": "all_done"},
            {"id": "d", "task": "treadle.noop", "after": ["b"]},
        ],
    }
    status = run(client, spec)
    steps = by_id(status)
    assert [steps[s]["state"] for s in "abcd"] == ["succeeded", "skipped", "succeeded", "skipped"]


def test_a_condition_that_cannot_be_evaluated_fails_the_step(client: Client) -> None:
    spec = {
        "name": "bad-condition",
        "params": {"n": "three"},
        "steps": [{"id": "a", "task": "treadle.noop", "when": "params.n > 2"}],
    }
    status = run(client, spec)
    assert status["state"] == "failed"
    assert "condition cannot be evaluated" in by_id(status)["a"]["error"]


def died_before_publishing(client: Client, spec: dict[str, Any]) -> tuple[str, list[str]]:
    """Store ``spec`` as dispatched and play the part of a worker that recorded its steps
    `a` and `b` as succeeded and died before publishing what they released: the
    workflow's id, and what they released."""
    import time as clock

    from orchestrator.compiler import compile_workflow

    workflow = client.orchestrator.checker.check(spec)
    store = client.orchestrator.store
    workflow_id = f"{spec['name']}-{clock.time_ns()}"
    store.create(workflow_id, workflow, compile_workflow(workflow))
    store.set_fields(workflow_id, {"dispatched_at": repr(clock.time())})
    ready: list[str] = []
    for step in ("a", "b"):
        record_start(store, workflow_id, step)
        ready.extend(record_success(store, workflow_id, step))
    return workflow_id, ready


def test_a_ready_counter_step_lost_by_a_crash_is_published_by_recovery(client: Client) -> None:
    from orchestrator.compiler import compile_workflow

    # N shape, so every step is on counters.
    spec: dict[str, Any] = {
        "name": "stranded-counters",
        "steps": [
            {"id": "a", "task": "treadle.noop"},
            {"id": "b", "task": "treadle.noop"},
            {"id": "c", "task": "treadle.noop", "after": ["a", "b"]},
            {"id": "d", "task": "treadle.noop", "after": ["b"]},
        ],
    }
    compiled = compile_workflow(client.orchestrator.checker.check(spec))
    assert compiled.counters == {"a", "b", "c", "d"}
    workflow_id, ready = died_before_publishing(client, spec)
    assert sorted(ready) == ["c", "d"]  # released, never published
    status = client.wait(workflow_id, timeout_s=30)
    assert status["state"] == "succeeded"
    assert client.audit(workflow_id).ok


def test_a_chords_gate_lost_by_a_crash_is_published_by_recovery_with_its_part(
    client: Client,
) -> None:
    from orchestrator.compiler import Group, Task, compile_workflow

    # Back-to-back parallel stages: `c` and `d` wait behind one gate, `c`.
    spec: dict[str, Any] = {
        "name": "stranded-gate",
        "stages": [
            {"parallel": [{"id": s, "task": "treadle.noop"} for s in ("a", "b")]},
            {"parallel": [{"id": s, "task": "treadle.noop"} for s in ("c", "d")]},
            {"id": "end", "task": "treadle.noop"},
        ],
    }
    compiled = compile_workflow(client.orchestrator.checker.check(spec))
    assert compiled.split().held == {"c": Group((Task("c"), Task("d"))), "end": Task("end")}
    workflow_id, ready = died_before_publishing(client, spec)
    assert ready == ["c"]  # released, never published; `d` goes with it
    status = client.wait(workflow_id, timeout_s=30)
    assert status["state"] == "succeeded"
    assert [by_id(status)[s]["state"] for s in ("c", "d", "end")] == ["succeeded"] * 3
    assert client.audit(workflow_id).ok
