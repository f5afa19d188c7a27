"""Processes stopping and dying: a worker told to stop finishes its step; a killed
orchestrator loses nothing. Each test runs its own small stack."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from config.topology import PriorityClass
from orchestrator.client import Client
from orchestrator.stack import Stack, WorkerSpec
from tests.conftest import TEST_MODULES, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[tuple[Stack, Client]]:
    quick = {
        "sweep_interval_s": 0.5,
        "recovery_after_s": 2.0,
        "worker_lost_after_s": 2.0,
        "stranded_message_after_s": 2.0,
    }
    settings = Settings(
        home=tmp_path / "home",
        task_modules=TEST_MODULES,
        sweep_interval_s=quick["sweep_interval_s"],
        recovery_after_s=quick["recovery_after_s"],
        worker_lost_after_s=quick["worker_lost_after_s"],
        stranded_message_after_s=quick["stranded_message_after_s"],
    )
    workers = [WorkerSpec(PriorityClass.default, 1, 1)]
    env = {f"TREADLE_{name.upper()}": str(value) for name, value in quick.items()}
    with (
        Stack(settings, workers=workers, extra_env=env) as stack,
        Client.connect(settings, stack.redis_url) as client,
    ):
        yield stack, client


def state_of(client: Client, workflow_id: str, step: str) -> str:
    return str(next(s for s in client.status(workflow_id)["steps"] if s["id"] == step)["state"])


def test_sigterm_lets_the_running_step_finish(own_stack: tuple[Stack, Client]) -> None:
    stack, client = own_stack
    workflow_id = client.submit(
        {
            "name": "warm-shutdown",
            "steps": [
                {"id": "slow", "task": "treadle.sleep", "args": {"seconds": 1.5}},
                {"id": "next", "task": "treadle.noop", "after": ["slow"]},
            ],
        }
    )
    wait_until(lambda: state_of(client, workflow_id, "slow") == "running", 20, "slow to start")
    worker = stack.child("default-1")
    worker.process.send_signal(signal.SIGTERM)  # to the main process, as `docker stop` does
    worker.process.wait(30)
    assert state_of(client, workflow_id, "slow") == "succeeded"  # finished, not abandoned
    # `next` waits in the queue for a worker; a new one picks it up.
    stack.start_worker(WorkerSpec(PriorityClass.default, 2, 1))
    status = client.wait(workflow_id, timeout_s=60)
    assert status["state"] == "succeeded"
    assert client.audit(workflow_id).ok


def test_a_killed_orchestrator_loses_nothing(own_stack: tuple[Stack, Client]) -> None:
    stack, client = own_stack
    flaky = {
        "task": "treadle.fail",
        "args": {"times": 1},
        "retry": {"max_attempts": 2, "backoff_s": 0.5, "backoff_max_s": 0.5},
    }
    ids = [
        client.submit(
            {
                "name": f"in-flight-{i}",
                "steps": [
                    {"id": "a", **flaky},
                    {"id": "b", "task": "treadle.sleep", "args": {"seconds": 0.2}, "after": ["a"]},
                ],
            }
        )
        for i in range(10)
    ]
    stack.child("orchestrator").signal(signal.SIGKILL)
    stack.restart("orchestrator")
    for workflow_id in ids:
        assert client.wait(workflow_id, timeout_s=60)["state"] == "succeeded"
        assert client.audit(workflow_id).ok


def test_a_sigkilled_worker_s_steps_are_recovered_long_before_the_visibility_timeout(
    own_stack: tuple[Stack, Client],
) -> None:
    stack, client = own_stack
    workflow_id = client.submit(
        {
            "name": "dead-worker",
            "steps": [
                {
                    "id": "slow",
                    "task": "treadle.sleep",
                    "args": {"seconds": 2},
                    "retry": {"max_attempts": 2},
                },
                {"id": "next", "task": "treadle.noop", "after": ["slow"]},
            ],
        }
    )
    wait_until(lambda: state_of(client, workflow_id, "slow") == "running", 20, "slow to start")
    started = time.monotonic()
    stack.child("default-1").signal(signal.SIGKILL)  # the whole worker: main and pool
    stack.start_worker(WorkerSpec(PriorityClass.default, 2, 1))
    status = client.wait(workflow_id, timeout_s=60)
    assert status["state"] == "succeeded"
    slow = next(s for s in status["steps"] if s["id"] == "slow")
    assert slow["attempts"] == 2 and slow["worker"].startswith("default-2@")
    assert time.monotonic() - started < 30  # the visibility timeout is two hours
    assert client.audit(workflow_id).ok
