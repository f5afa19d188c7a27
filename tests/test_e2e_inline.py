"""End to end: chain links run in line on the worker that ran the previous link
(workers/inline.py), and what happens when that worker is lost in the middle."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from config.topology import PriorityClass
from orchestrator.client import Client
from orchestrator.stack import Stack, WorkerSpec
from tests.conftest import private_stack

pytestmark = pytest.mark.e2e

# 5 % of it (the in-line share of a soft limit) is far beyond any stall of a loaded machine,
# so which links run in line depends on the graph alone.
LONG_TIMEOUT_S = 1200.0


def _stack(tmp_path_factory: pytest.TempPathFactory, inline_chain_s: float) -> Stack:
    workers = [WorkerSpec(PriorityClass.default, 1, 2), WorkerSpec(PriorityClass.critical, 1, 1)]
    home = tmp_path_factory.mktemp("treadle-inline")
    return private_stack(home, workers, inline_chain_s=inline_chain_s)


@pytest.fixture(scope="module")
def inline_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with (
        _stack(tmp_path_factory, inline_chain_s=60.0) as stack,
        Client.connect(stack.settings, stack.redis_url) as client,
    ):
        yield client


def chain_of(*steps: dict[str, Any]) -> dict[str, Any]:
    linked = [
        {"timeout_s": LONG_TIMEOUT_S, **step, **({"after": [steps[i - 1]["id"]]} if i else {})}
        for i, step in enumerate(steps)
    ]
    return {"name": "inline-chain", "steps": linked}


def noop(step_id: str, **more: Any) -> dict[str, Any]:
    return {"id": step_id, "task": "treadle.noop", **more}


def records(client: Client, workflow_id: str) -> dict[str, dict[str, Any]]:
    return client.orchestrator.store.step_records(workflow_id)


def by_id(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in status["steps"]}


def faithful(client: Client, workflow_id: str) -> None:
    report = client.audit(workflow_id)
    assert report.problems == []


def test_a_chain_runs_in_line_on_the_worker_of_its_first_step(inline_client: Client) -> None:
    ids = [f"s{i}" for i in range(6)]
    workflow_id = inline_client.submit(chain_of(*(noop(i) for i in ids)))
    status = inline_client.wait(workflow_id, timeout_s=30)
    assert status["state"] == "succeeded"
    kept = records(inline_client, workflow_id)
    assert "inline_of" not in kept["s0"]
    assert {i: kept[i].get("inline_of") for i in ids[1:]} == dict.fromkeys(ids[1:], "s0")
    carriers = {kept[i]["inline_task_id"] for i in ids[1:]}
    assert len(carriers) == 1 and None not in carriers
    assert all(s["attempts"] == 1 for s in status["steps"])
    faithful(inline_client, workflow_id)


def test_a_link_with_other_time_limits_or_pool_goes_through_the_broker(
    inline_client: Client,
) -> None:
    spec = chain_of(
        noop("a"),
        noop("b"),
        noop("slow-limits", timeout_s=LONG_TIMEOUT_S / 2),
        noop("c", timeout_s=LONG_TIMEOUT_S / 2),
        noop("urgent", priority="critical", timeout_s=LONG_TIMEOUT_S / 2),
        noop("d", priority="critical", timeout_s=LONG_TIMEOUT_S / 2),
    )
    workflow_id = inline_client.submit(spec)
    assert inline_client.wait(workflow_id, timeout_s=30)["state"] == "succeeded"
    kept = records(inline_client, workflow_id)
    assert {s: kept[s].get("inline_of") for s in kept} == {
        "a": None,
        "b": "a",
        "slow-limits": None,  # another soft limit: its own message
        "c": "slow-limits",
        "urgent": None,  # another pool's queue
        "d": "urgent",
    }
    faithful(inline_client, workflow_id)


def test_a_failed_link_stops_the_run_in_line(inline_client: Client) -> None:
    spec = chain_of(
        noop("a"),
        {
            "id": "flaky",
            "task": "treadle.fail",
            "args": {"times": 1},
            "retry": {"max_attempts": 3, "backoff_s": 0.05},
        },
        noop("after"),
    )
    workflow_id = inline_client.submit(spec)
    status = inline_client.wait(workflow_id, timeout_s=30)
    steps = by_id(status)
    assert status["state"] == "succeeded"
    assert (steps["flaky"]["state"], steps["flaky"]["attempts"]) == ("succeeded", 2)
    kept = records(inline_client, workflow_id)
    # The retry is a message of its own, and what follows runs in line after it.
    assert kept["flaky"].get("inline_of") is None
    assert kept["after"].get("inline_of") == "flaky"
    faithful(inline_client, workflow_id)


def test_a_worker_lost_in_the_middle_of_a_run_in_line_loses_nothing(
    inline_client: Client,
) -> None:
    spec = chain_of(
        noop("a"),
        {
            "id": "killer",
            "task": "tests.kill_my_worker",
            "retry": {"max_attempts": 2, "backoff_s": 0.05},
        },
        noop("never"),
    )
    workflow_id = inline_client.submit(spec)
    status = inline_client.wait(workflow_id, timeout_s=90)
    steps = by_id(status)
    assert status["state"] == "failed"
    assert steps["a"]["state"] == "succeeded" and steps["a"]["attempts"] == 1
    assert (steps["killer"]["state"], steps["killer"]["attempts"]) == ("dead-lettered", 2)
    assert "worker was lost" in steps["killer"]["error"]
    assert steps["never"]["state"] == "skipped"
    letters = inline_client.dead_letters.of_workflow(workflow_id)
    assert [e["step_id"] for e in letters] == ["killer"]
    faithful(inline_client, workflow_id)


def test_with_no_in_line_budget_every_link_is_a_message(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with (
        _stack(tmp_path_factory, inline_chain_s=0.0) as stack,
        Client.connect(stack.settings, stack.redis_url) as client,
    ):
        workflow_id = client.submit(chain_of(*(noop(f"s{i}") for i in range(4))))
        assert client.wait(workflow_id, timeout_s=30)["state"] == "succeeded"
        kept = records(client, workflow_id)
        assert [kept[f"s{i}"].get("inline_of") for i in range(4)] == [None] * 4
