"""End to end: the short steps of a wide stage share messages (orchestrator/bundles.py),
and each still runs once, with its own attempt, records, retries and failures, through a
killed worker process and a bundle that outruns its in-line budget."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from config.topology import PriorityClass
from orchestrator.client import Client
from orchestrator.metrics import typical_run_s
from orchestrator.stack import WorkerSpec
from tests.conftest import private_stack, wait_until

pytestmark = pytest.mark.e2e

# 5 % of it (the in-line share of a soft limit) is beyond any stall of a loaded machine.
LONG_TIMEOUT_S = 1200.0
TASK = "tests.member"
WIDTH = 8


@pytest.fixture(scope="module")
def bundling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    # A target this long bundles a stage of any short task whole (up to bundle_max),
    # however slow the machine: which steps share a message depends on the graph alone.
    workers = [WorkerSpec(PriorityClass.default, 1, 2)]
    home = tmp_path_factory.mktemp("treadle-bundles")
    with (
        private_stack(home, workers, bundle_target_s=30.0) as stack,
        Client.connect(stack.settings, stack.redis_url) as client,
    ):
        # A task never measured goes one step a message: run it once, then wait for the
        # workers to report its run time (once a second).
        first = client.submit(stage("warm-up", 2))
        assert client.wait(first, timeout_s=60)["state"] == "succeeded"
        kept = records(client, first)
        assert all("inline_of" not in r for r in kept.values())
        store = client.orchestrator.store
        wait_until(lambda: typical_run_s(store, [TASK])[TASK], 30, "the task's run time")
        yield client


def stage(name: str, width: int, **special: dict[str, Any]) -> dict[str, Any]:
    """A parallel stage of ``width`` steps m0, m1, ...; ``special`` gives some of them
    arguments (or a retry policy, under the key ``retry``)."""
    steps = []
    for i in range(width):
        step_id = f"m{i}"
        extra = dict(special.get(step_id, {}))
        retry = extra.pop("retry", None)
        step: dict[str, Any] = {
            "id": step_id,
            "task": TASK,
            "timeout_s": LONG_TIMEOUT_S,
            "args": extra,
        }
        if retry:
            step["retry"] = retry
        steps.append(step)
    return {"name": name, "steps": steps}


def records(client: Client, workflow_id: str) -> dict[str, dict[str, Any]]:
    return client.orchestrator.store.step_records(workflow_id)


def by_id(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in status["steps"]}


def carriers(kept: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    return {sid: r.get("inline_of") for sid, r in sorted(kept.items())}


def faithful(client: Client, workflow_id: str) -> None:
    assert client.audit(workflow_id).problems == []


def test_a_stage_of_a_short_task_shares_one_message(bundling: Client) -> None:
    workflow_id = bundling.submit(stage("bundled", WIDTH))
    status = bundling.wait(workflow_id, timeout_s=60)
    assert status["state"] == "succeeded"
    kept = records(bundling, workflow_id)
    # m0's message carried the others: each ran in line under it, with an attempt,
    # records and a task id of its own.
    assert carriers(kept) == {"m0": None, **{f"m{i}": "m0" for i in range(1, WIDTH)}}
    assert {kept[f"m{i}"]["inline_task_id"] for i in range(1, WIDTH)} == {kept["m0"]["task_id"]}
    assert len({r["task_id"] for r in kept.values()}) == WIDTH
    assert all(s["attempts"] == 1 for s in status["steps"])
    assert bundling.orchestrator.store.results(workflow_id) == {s: s for s in kept}
    faithful(bundling, workflow_id)


def test_a_step_that_fails_retries_alone_and_the_others_go_on(bundling: Client) -> None:
    retry = {"max_attempts": 3, "backoff_s": 0.05}
    workflow_id = bundling.submit(stage("one-flaky", WIDTH, m2={"fail_times": 1, "retry": retry}))
    status = bundling.wait(workflow_id, timeout_s=60)
    steps = by_id(status)
    assert status["state"] == "succeeded"
    assert (steps["m2"]["state"], steps["m2"]["attempts"]) == ("succeeded", 2)
    assert all(steps[f"m{i}"]["attempts"] == 1 for i in range(WIDTH) if i != 2)
    kept = records(bundling, workflow_id)
    # Its retry was a message of its own; the steps after it ran in the bundle.
    assert kept["m2"].get("inline_of") is None
    assert all(kept[f"m{i}"].get("inline_of") == "m0" for i in range(3, WIDTH))
    faithful(bundling, workflow_id)


def test_a_step_that_fails_for_good_fails_alone(bundling: Client) -> None:
    workflow_id = bundling.submit(stage("one-broken", WIDTH, m1={"fail_times": 5}))
    status = bundling.wait(workflow_id, timeout_s=60)
    steps = by_id(status)
    assert status["state"] == "failed"
    assert (steps["m0"]["state"], steps["m1"]["state"]) == ("succeeded", "dead-lettered")
    # on_failure: stop skips the steps not yet started, as it would their own messages;
    # the bundle then passes over them.
    rest = [steps[f"m{i}"] for i in range(2, WIDTH)]
    assert {(s["state"], s["attempts"]) for s in rest} == {("skipped", 0)}
    letters = bundling.dead_letters.of_workflow(workflow_id)
    assert [(e["step_id"], e["task"]) for e in letters] == [("m1", TASK)]
    faithful(bundling, workflow_id)


def test_a_process_killed_in_the_middle_of_a_bundle_loses_nothing(bundling: Client) -> None:
    retry = {"max_attempts": 2, "backoff_s": 0.05}
    workflow_id = bundling.submit(stage("killed", WIDTH, m3={"kill": True, "retry": retry}))
    status = bundling.wait(workflow_id, timeout_s=120)
    steps = by_id(status)
    assert status["state"] == "succeeded"
    assert steps["m3"]["attempts"] == 2  # its first attempt was lost with the process
    # The steps before it ran once; the bundle came back and ran the rest.
    assert all(steps[f"m{i}"]["attempts"] == 1 for i in range(WIDTH) if i != 3)
    faithful(bundling, workflow_id)


def test_a_bundle_past_its_in_line_budget_sends_the_rest_on_their_own(
    bundling: Client,
) -> None:
    # Slower than the in-line budget (inline_chain_s, 1 s): the steps after it leave
    # the bundle as messages of their own.
    workflow_id = bundling.submit(stage("outran", WIDTH, m0={"sleep_s": 1.5}))
    status = bundling.wait(workflow_id, timeout_s=60)
    assert status["state"] == "succeeded"
    assert all(s["attempts"] == 1 for s in status["steps"])
    kept = records(bundling, workflow_id)
    assert carriers(kept) == dict.fromkeys(kept)
    assert len({r["task_id"] for r in kept.values()}) == WIDTH
    faithful(bundling, workflow_id)
