"""Scaling a pool out on one machine as on many: worker processes of one pool under
distinct node names share its queue, and the pool keeps going when one of them dies."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from config.topology import PriorityClass
from orchestrator.client import Client
from orchestrator.stack import Stack, WorkerSpec, host_name
from tests.conftest import TEST_MODULES, wait_until

pytestmark = pytest.mark.e2e

QUICK = {
    "sweep_interval_s": 0.5,
    "recovery_after_s": 2.0,
    "worker_lost_after_s": 2.0,
    "stranded_message_after_s": 2.0,
}
NODES = 4


@pytest.fixture
def scaled(tmp_path: Path) -> Iterator[tuple[Stack, Client]]:
    """Four workers of the bulk pool, one process each: what `docker compose up --scale
    worker-bulk=4` starts, here as four processes with their own node names."""
    settings = Settings(home=tmp_path / "home", task_modules=TEST_MODULES, **QUICK)  # type: ignore[arg-type]
    workers = [WorkerSpec(PriorityClass.bulk, i, 1) for i in range(1, NODES + 1)]
    env = {f"TREADLE_{name.upper()}": str(value) for name, value in QUICK.items()}
    with (
        Stack(settings, workers=workers, extra_env=env) as stack,
        Client.connect(settings, stack.redis_url) as client,
    ):
        yield stack, client


def bulk_load(name: str, steps: int, seconds: float) -> dict[str, object]:
    return {
        "name": name,
        "priority": "bulk",
        "steps": [
            {
                "id": f"s{i}",
                "task": "treadle.sleep",
                "args": {"seconds": seconds},
                # The attempt a killed worker was running counts as one.
                "retry": {"max_attempts": 3, "backoff_s": 0.1},
            }
            for i in range(steps)
        ],
    }


def test_workers_of_one_pool_share_its_queue_and_survive_losing_one(
    scaled: tuple[Stack, Client],
) -> None:
    stack, client = scaled
    nodes = {WorkerSpec(PriorityClass.bulk, i).node_name(host_name()) for i in range(1, 5)}

    first = client.wait(client.submit(bulk_load("shared", 16, 0.2)), timeout_s=120)
    assert first["state"] == "succeeded"
    per_node = Counter(s["worker"] for s in first["steps"])
    assert set(per_node) == nodes, per_node  # every node took a share

    second = client.submit(bulk_load("survives", 24, 0.3))

    def running_on_bulk_4() -> bool:
        steps = client.status(second)["steps"]
        return any(s["state"] == "running" and s["worker"].startswith("bulk-4@") for s in steps)

    wait_until(running_on_bulk_4, 60, "bulk-4 to run a step")
    stack.child("bulk-4").signal(signal.SIGKILL)  # the whole worker, mid-step
    status = client.wait(second, timeout_s=180)
    assert status["state"] == "succeeded"
    assert client.audit(second).ok
    lost = [s for s in status["steps"] if s["attempts"] > 1]
    assert lost, "the killed worker's step should have run again"
    assert all(s["worker"] != "" and not s["worker"].startswith("bulk-4@") for s in lost)


def test_the_bulk_pool_runs_niced_so_that_it_yields_the_cpu(stack: Stack) -> None:
    """On a shared host a bulk flood must not slow critical work: the bulk worker and
    the pool processes it forks run at nice 10 (the topology's default), the others at 0."""
    for pool, nice in (("critical", 0), ("default", 0), ("bulk", 10)):
        main_pid = stack.child(f"{pool}-1").process.pid
        children = Path("/proc") / str(main_pid) / "task" / str(main_pid) / "children"
        pids = [main_pid, *map(int, children.read_text().split())]
        assert len(pids) > 1, f"{pool}: no pool processes"
        assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in pids} == {nice}, pool
