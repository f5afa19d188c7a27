"""Aging and rebalancing against a real Redis and real worker processes.

Each test runs its own small stack with a topology file of its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from config.celery_app import make_app
from config.settings import Settings
from config.topology import PriorityClass, load_topology
from orchestrator.client import Client
from orchestrator.keys import Keys
from orchestrator.queue_watch import PROMOTED_AT_HEADER, QueueWatch
from orchestrator.stack import Stack, WorkerSpec, host_name
from orchestrator.tickets import key_of_payload
from tests.conftest import TEST_MODULES, wait_until

pytestmark = pytest.mark.e2e

CRITICAL, DEFAULT, BULK = PriorityClass.critical, PriorityClass.default, PriorityClass.bulk


class Running:
    """A stack on its own Redis, a client, a Celery app to inspect workers, a Redis client."""

    def __init__(self, stack: Stack, settings: Settings):
        self.stack = stack
        self.settings = settings
        self.client = Client.connect(settings, stack.redis_url)
        self.app: Celery = make_app(settings, stack.redis_url)
        self.redis = redis.Redis.from_url(stack.redis_url)

    def close(self) -> None:
        self.redis.close()
        self.app.close()
        self.client.close()
        self.stack.stop()

    def step(self, workflow_id: str, step_id: str) -> dict[str, Any]:
        steps = self.client.status(workflow_id)["steps"]
        return dict(next(s for s in steps if s["id"] == step_id))

    def queues_of(self, node: str) -> set[str] | None:
        # A connection of its own and a limit: see the note in orchestrator.queue_watch.
        with self.app.connection_for_write() as connection:
            replies = self.app.control.inspect(
                timeout=2.0, destination=[node], limit=1, connection=connection
            ).active_queues()
        if not replies or node not in replies:
            return None
        return {str(q["name"]) for q in replies[node]}

    def orchestrator_log(self) -> str:
        return self.stack.child("orchestrator").log_path.read_text(errors="replace")


def start(
    tmp_path: Path, topology: str, workers: list[WorkerSpec], orchestrator: bool = True
) -> Running:
    path = tmp_path / "topology.yaml"
    path.write_text(topology, encoding="utf-8")
    settings = Settings(home=tmp_path / "home", task_modules=TEST_MODULES, topology=path)
    stack = Stack(settings, workers=workers, orchestrator=orchestrator).__enter__()
    return Running(stack, settings)


@pytest.fixture
def closing() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for running in started:
        running.close()


def node(pool: PriorityClass, index: int = 1) -> str:
    return WorkerSpec(pool, index).node_name(host_name())


def parallel_sleeps(name: str, count: int, seconds: float) -> dict[str, Any]:
    return {
        "name": name,
        "priority": "critical",
        "steps": [
            {"id": f"s{i}", "task": "treadle.sleep", "args": {"seconds": seconds}}
            for i in range(count)
        ],
    }


def messages(r: redis.Redis, queue: str) -> list[tuple[tuple[str, str] | None, dict[str, Any]]]:
    """(workflow, step) and payload of each message on ``queue``, oldest first."""
    out = []
    for raw in reversed(r.lrange(queue, 0, -1)):
        payload = json.loads(raw)
        out.append((key_of_payload(payload), payload))
    return out


# -- aging --------------------------------------------------------------------------------


def test_overdue_steps_climb_one_class_per_max_wait_and_still_run(
    tmp_path: Path, closing: list[Running]
) -> None:
    """The watcher's aging pass against real queues, with the clock moved by hand (no
    orchestrator and no worker yet, so nothing else touches the queues)."""
    running = start(
        tmp_path,
        "pools:\n  bulk: {max_wait_s: 1}\n  default: {max_wait_s: 100}\n",
        workers=[],
        orchestrator=False,
    )
    closing.append(running)
    r = running.redis
    workflow_id = running.client.submit(
        {
            "name": "aging",
            "priority": "bulk",
            "steps": [{"id": s, "task": "treadle.noop"} for s in ("a", "b", "c")],
        }
    )
    before = messages(r, "bulk")
    assert [key for key, _ in before] == [(workflow_id, s) for s in ("a", "b", "c")]
    watch = QueueWatch(r, Keys(), running.app, load_topology(running.settings.topology))
    now = time.time()
    assert watch.age(now) == []  # not waited long enough yet

    moved = watch.age(now + 5)
    assert [(p.step_id, p.source, p.target) for p in moved] == [
        (s, BULK, DEFAULT)
        for s in ("c", "b", "a")  # pushed youngest first...
    ]
    assert all(4 < p.waited_s < 10 for p in moved)
    assert r.llen("bulk") == 0
    after = messages(r, "default")
    # ...so the oldest is taken first, as it would have been on its own queue
    assert [key for key, _ in after] == [(workflow_id, s) for s in ("a", "b", "c")]
    for (_, old), (_, new) in zip(before, after, strict=True):
        assert new["headers"][PROMOTED_AT_HEADER] == now + 5
        assert new["properties"]["delivery_info"]["routing_key"] == "default"
        assert new["body"] == old["body"]

    # It waits anew in its new class: one class per max_wait_s, not straight to the top.
    assert watch.age(now + 50) == []
    assert [p.target for p in watch.age(now + 200)] == [CRITICAL] * 3
    assert watch.age(now + 100_000) == []  # critical steps never move
    assert r.llen("critical") == 3

    # The moved messages are ordinary step messages to a critical worker.
    spec = WorkerSpec(CRITICAL, 1, 1)
    running.stack.start_worker(spec)
    running.stack.wait_ready([spec.node_name(host_name())])
    status = running.client.wait(workflow_id, timeout_s=60)
    assert status["state"] == "succeeded"
    assert {s["worker"] for s in status["steps"]} == {node(CRITICAL)}
    assert running.client.audit(workflow_id).ok


def test_a_promotion_is_in_the_trail_before_the_move_and_one_that_missed_says_so(
    tmp_path: Path, closing: list[Running]
) -> None:
    running = start(tmp_path, "pools:\n  bulk: {max_wait_s: 1}\n", workers=[], orchestrator=False)
    closing.append(running)
    r = running.redis
    workflow_id = running.client.submit(
        {
            "name": "aging-race",
            "priority": "bulk",
            "steps": [{"id": s, "task": "treadle.noop"} for s in ("a", "b")],
        }
    )
    watch = QueueWatch(r, Keys(), running.app, load_topology(running.settings.topology))
    raws = list(reversed(r.lrange("bulk", 0, -1)))
    due = watch._read(raws)
    taken = next(q for q in due if q.step_id == "a")
    # A bulk worker took it just before the move (bytes, as LRANGE gave it).
    assert r.lrem("bulk", -1, taken.raw) == 1  # type: ignore[arg-type]
    moved = watch._move(due, BULK, DEFAULT, time.time() + 5)
    assert [p.step_id for p in moved] == ["b"]
    entries, _ = running.client.orchestrator.store.audit_entries(workflow_id)
    trail = [json.loads(e) for e in entries]
    said = [(e.get("step_id"), e.get("promoted"), e.get("not_promoted")) for e in trail[-3:]]
    assert said == [  # recorded youngest first, as they are pushed
        ("b", "bulk -> default", None),
        ("a", "bulk -> default", None),
        ("a", None, "bulk -> default"),
    ]
    steps = {s["id"]: s for s in running.client.status(workflow_id)["steps"]}
    assert steps["b"]["promoted_to"] == "default"
    assert "promoted_to" not in steps["a"]
    assert running.client.audit(workflow_id).ok


def test_a_bulk_step_stuck_behind_a_busy_pool_runs_on_a_default_worker(
    tmp_path: Path, closing: list[Running]
) -> None:
    topology = (
        "pools:\n"
        "  critical: {concurrency: 1}\n"
        "  default: {concurrency: 1, max_wait_s: null}\n"
        "  bulk: {concurrency: 1, prefetch: 1, max_wait_s: 1}\n"
        "rebalance: {enabled: false, check_every_s: 0.25}\n"
    )
    running = start(tmp_path, topology, workers=[WorkerSpec(BULK, 1, 1), WorkerSpec(DEFAULT, 1, 1)])
    closing.append(running)
    client = running.client
    blocker = client.submit(
        {
            "name": "long-bulk-job",
            "priority": "bulk",
            "steps": [{"id": "slow", "task": "treadle.sleep", "args": {"seconds": 20}}],
        }
    )
    wait_until(
        lambda: running.step(blocker, "slow")["state"] == "running",
        30,
        "the long bulk step to start",
    )
    assert running.step(blocker, "slow")["worker"] == node(BULK)

    submitted = time.time()
    waiting = client.submit(
        {"name": "stuck", "priority": "bulk", "steps": [{"id": "quick", "task": "treadle.noop"}]}
    )
    status = client.wait(waiting, timeout_s=30)
    assert status["state"] == "succeeded"
    quick = running.step(waiting, "quick")
    assert quick["worker"] == node(DEFAULT)
    # Well before the bulk pool would have got to it (the sleep runs for 20 s).
    assert quick["finished_at"] - submitted < 12
    assert running.step(blocker, "slow")["state"] == "running"
    mark = f"workflow {waiting} step quick"
    line = wait_until(
        lambda: next((x for x in running.orchestrator_log().splitlines() if mark in x), None),
        10,
        "the promotion in the orchestrator's log",
    )
    assert "(treadle.noop)" in line and "on the bulk queue" in line and "default queue" in line
    # The move is in the step's audit trail too, before its run, and the trail holds.
    entries, _ = client.orchestrator.store.audit_entries(waiting)
    trail = [json.loads(e) for e in entries if json.loads(e).get("step_id") == "quick"]
    moved = [i for i, r in enumerate(trail) if r.get("promoted") == "bulk -> default"]
    ran = [i for i, r in enumerate(trail) if r.get("to") == "running"]
    assert len(moved) == 1 and ran and moved[0] < ran[0]
    assert trail[moved[0]]["waited_s"] >= 1
    assert quick["promoted_to"] == "default"
    assert client.audit(waiting).ok
    client.cancel(blocker, terminate=True)  # no need to wait out the sleep at shutdown


# -- rebalancing --------------------------------------------------------------------------

REBALANCING = (
    "pools:\n"
    "  critical: {concurrency: 1}\n"
    "  bulk: {concurrency: 2, prefetch: 1}\n"
    "rebalance: {busy_depth: 5, drain_depth: 1, check_every_s: 0.25, inspect_timeout_s: 0.5}\n"
)


def start_rebalancing(tmp_path: Path, closing: list[Running]) -> Running:
    """One critical process and an idle bulk worker that may be lent to it."""
    running = start(
        tmp_path,
        REBALANCING,
        workers=[WorkerSpec(CRITICAL, 1, 1), WorkerSpec(BULK, 1, 2)],
    )
    closing.append(running)
    return running


def test_an_idle_bulk_worker_helps_a_flooded_critical_queue_and_goes_back(
    tmp_path: Path, closing: list[Running]
) -> None:
    running = start_rebalancing(tmp_path, closing)
    bulk = node(BULK)
    assert running.queues_of(bulk) == {"bulk"}
    flood = running.client.submit(parallel_sleeps("flood", 40, 0.2))

    wait_until(
        lambda: (running.queues_of(bulk) or set()) >= {"bulk", "critical"},
        30,
        "the bulk worker to be lent to the critical queue",
        poll_s=0.2,
    )
    assert running.redis.hexists(Keys().lent_workers, bulk)
    status = running.client.wait(flood, timeout_s=60)
    assert status["state"] == "succeeded"
    ran_on = {s["worker"] for s in status["steps"]}
    assert ran_on == {node(CRITICAL), bulk}  # both pools worked the flood

    # The loan is forgotten once the worker confirmed: a moment after it stops consuming.
    wait_until(
        lambda: (
            running.queues_of(bulk) == {"bulk"} and not running.redis.exists(Keys().lent_workers)
        ),
        30,
        "the bulk worker to be given back once the flood drained",
        poll_s=0.2,
    )
    log = running.orchestrator_log()
    assert f"lent {bulk} to critical" in log and "critical queue depth" in log
    assert f"gave back {bulk} to bulk" in log


def test_a_restarted_orchestrator_gives_back_what_the_last_one_lent(
    tmp_path: Path, closing: list[Running]
) -> None:
    running = start_rebalancing(tmp_path, closing)
    bulk = node(BULK)
    flood = running.client.submit(parallel_sleeps("flood", 40, 0.3))
    wait_until(
        lambda: running.redis.hexists(Keys().lent_workers, bulk),
        30,
        "the bulk worker to be lent",
    )
    orchestrator = running.stack.child("orchestrator")
    orchestrator.signal(9)  # SIGKILL: it gives nothing back on its way out
    orchestrator.process.wait()
    assert running.redis.hexists(Keys().lent_workers, bulk)
    running.stack.restart("orchestrator")

    assert running.client.wait(flood, timeout_s=60)["state"] == "succeeded"
    wait_until(
        lambda: (
            running.queues_of(bulk) == {"bulk"} and not running.redis.exists(Keys().lent_workers)
        ),
        30,
        "the new orchestrator to give the bulk worker back",
        poll_s=0.2,
    )
