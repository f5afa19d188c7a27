"""Redis going away under a running system, and the messages that can be lost with it.

Each test runs its own small stack on its own embedded Redis (AOF, appendfsync always).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from config.settings import Settings
from config.topology import PRIORITY_ORDER, PriorityClass
from ops.chaos.run import workflow as chaos_workflow
from ops.chaos.tasks import CALLS, LEDGER
from orchestrator.client import Client
from orchestrator.dispatch import mark_queued
from orchestrator.stack import Stack, WorkerSpec, host_name
from orchestrator.states import WORKFLOW_FINAL
from orchestrator.store import Change, StateStore
from orchestrator.tickets import key_of_payload
from tests.conftest import TEST_MODULES, wait_until
from tests.tasks import open_gate

pytestmark = pytest.mark.e2e

QUICK = {
    "sweep_interval_s": 0.5,
    "recovery_after_s": 2.0,
    "worker_lost_after_s": 3.0,
    "stranded_message_after_s": 2.0,
}


def make_stack(home: Path, workers: list[WorkerSpec]) -> tuple[Stack, Client]:
    settings = Settings(home=home, task_modules=f"{TEST_MODULES},ops.chaos.tasks", **QUICK)  # type: ignore[arg-type]
    env = {f"TREADLE_{name.upper()}": str(value) for name, value in QUICK.items()}
    stack = Stack(settings, workers=workers, extra_env=env).__enter__()
    return stack, Client.connect(settings, stack.redis_url)


@pytest.fixture
def idle_stack(tmp_path: Path) -> Iterator[tuple[Stack, Client]]:
    """The orchestrator, and no worker yet: messages stay on their queues."""
    stack, client = make_stack(tmp_path / "home", [])
    yield stack, client
    client.close()
    stack.stop()


def effect(step_id: str, after: list[str] | None = None) -> dict[str, Any]:
    return {"id": step_id, "task": "chaos.effect", "args": {"work_s": 0.01}, "after": after or []}


def take_message(r: redis.Redis, queue: str, workflow_id: str, step_id: str) -> None:
    """Remove a step's message from its queue: what a BRPOP whose reply never arrived does."""
    for raw in r.lrange(queue, 0, -1):
        if key_of_payload(json.loads(raw)) == (workflow_id, step_id):
            assert r.lrem(queue, 1, raw) == 1  # type: ignore[arg-type]
            return
    pytest.fail(f"no message for {workflow_id}/{step_id} on {queue}")


def start_default_worker(stack: Stack) -> None:
    spec = WorkerSpec(PriorityClass.default, 1, 2)
    stack.start_worker(spec)
    stack.wait_ready([spec.node_name(host_name())])


def effects(r: redis.Redis) -> tuple[dict[str, int], int]:
    ledger = {str(k, "utf-8"): int(v) for k, v in r.hgetall(LEDGER).items()}  # type: ignore[arg-type]
    return ledger, int(r.llen(CALLS))


def ran_without_effect(store: StateStore, r: redis.Redis, workflow_id: str, step_id: str) -> None:
    """What a worker that took a step's message, ran it and recorded its end leaves (the
    run's effect is left out, so that a second run would show in the ledger)."""
    take_message(r, "default", workflow_id, step_id)
    release = store.step_defs_of(workflow_id, [step_id])[step_id].get("release") or ()
    now = time.time()
    started = Change(step_id, "queued", "running", {"attempts": 1, "started_at": now}, {"at": now})
    store.apply(workflow_id, [started])
    ended = Change(
        step_id, "running", "succeeded", {"finished_at": now}, {"at": now}, "true", release=release
    )
    store.apply(workflow_id, [ended])


def recovered(stack: Stack, client: Client, workflow_id: str, ran: list[str]) -> None:
    """After a disruption and a worker, the workflow succeeds having run ``ran`` once."""
    client.orchestrator.store.mark_disrupted(time.time())
    start_default_worker(stack)
    status = client.wait(workflow_id, timeout_s=60)
    assert status["state"] == "succeeded"
    ledger, calls = effects(redis.Redis.from_url(stack.redis_url))
    assert sorted(ledger) == [f"{workflow_id}:{s}" for s in ran]
    assert calls == len(ran)  # nothing ran twice
    assert client.audit(workflow_id).ok


def test_a_message_lost_on_its_way_to_a_worker_is_published_again(
    idle_stack: tuple[Stack, Client],
) -> None:
    stack, client = idle_stack
    spec = {
        "name": "lost-on-the-way",
        "steps": [effect("a"), effect("b", ["a"]), effect("c", ["b"])],
    }
    workflow_id = client.submit(spec)
    r = redis.Redis.from_url(stack.redis_url)
    take_message(r, "default", workflow_id, "a")
    # A worker whose connection broke just then reconnects and says so; the chain goes
    # on from the re-published message.
    recovered(stack, client, workflow_id, ["a", "b", "c"])


def test_a_released_step_whose_message_was_neither_sent_nor_kept_is_published_anew(
    idle_stack: tuple[Stack, Client],
) -> None:
    stack, client = idle_stack
    # b -> d and a, b -> c: not series-parallel, so c and d run on dependency counts.
    spec = {
        "name": "never-sent",
        "steps": [effect("a"), effect("b"), effect("c", ["a", "b"]), effect("d", ["b"])],
    }
    workflow_id = client.submit(spec)
    r = redis.Redis.from_url(stack.redis_url)
    store = client.orchestrator.store
    # A worker took a and b, ran and recorded them, which released c and d; it recorded
    # c as queued and died before keeping c's message (its ticket) or sending any.
    for step_id in ("a", "b"):
        ran_without_effect(store, r, workflow_id, step_id)
    mark_queued(store, workflow_id, ["c"])
    assert store.tickets_of(workflow_id, ["c", "d"]) == {}
    recovered(stack, client, workflow_id, ["c", "d"])


def test_a_lost_message_is_published_again_while_disruptions_go_on(
    idle_stack: tuple[Stack, Client],
) -> None:
    stack, client = idle_stack
    workflow_id = client.submit({"name": "lost-in-a-storm", "steps": [effect("a")]})
    r = redis.Redis.from_url(stack.redis_url)
    take_message(r, "default", workflow_id, "a")
    store = client.orchestrator.store
    stop = threading.Event()

    def storm() -> None:
        # Workers losing their connections or dying over and over: never settles.
        while not stop.wait(0.2):
            store.mark_disrupted(time.time())

    storming = threading.Thread(target=storm, daemon=True)
    storming.start()
    try:
        start_default_worker(stack)
        status = client.wait(workflow_id, timeout_s=60)
    finally:
        stop.set()
        storming.join()
    assert status["state"] == "succeeded"
    assert effects(r) == ({f"{workflow_id}:a": 1}, 1)


def test_a_chain_cut_by_a_dying_worker_goes_on_without_running_the_step_again(
    idle_stack: tuple[Stack, Client],
) -> None:
    stack, client = idle_stack
    workflow_id = client.submit(
        {"name": "cut-chain", "steps": [effect("a"), effect("b", ["a"]), effect("c", ["b"])]}
    )
    r = redis.Redis.from_url(stack.redis_url)
    # A worker took `a`, ran it, recorded it and died before publishing `b`.
    ran_without_effect(client.orchestrator.store, r, workflow_id, "a")
    # `a` is not run again: its (simulated) run left no effect, and none is added.
    recovered(stack, client, workflow_id, ["b", "c"])


def test_a_copy_of_a_running_step_waits_instead_of_running_it_twice(
    idle_stack: tuple[Stack, Client],
) -> None:
    stack, client = idle_stack
    start_default_worker(stack)
    workflow_id = client.submit(
        {
            "name": "copy-while-running",
            "steps": [
                {"id": "slow", "task": "chaos.effect", "args": {"work_s": 2.0}},
                effect("next", ["slow"]),
            ],
        }
    )
    r = redis.Redis.from_url(stack.redis_url)
    store = client.orchestrator.store

    def running_message() -> Any:
        if store.step_records_of(workflow_id, ["slow"])["slow"]["state"] != "running":
            return None
        for raw in r.hvals("unacked"):
            payload, _exchange, routing_key = json.loads(raw)
            if key_of_payload(payload) == (workflow_id, "slow"):
                return payload, routing_key
        return None

    payload, routing_key = wait_until(running_message, 20, "slow to be running")
    # What kombu does when a worker's connection drops while it runs a step and Redis is
    # back at once: it puts the message back, and another worker process takes it.
    payload["headers"]["redelivered"] = True
    r.lpush(routing_key, json.dumps(payload))
    recheck = f"{workflow_id}/slow/recheck-"

    def rechecks(key: str) -> list[str]:
        members = r.zrange(key, 0, -1) if key == store.keys.delayed else r.hkeys(key)
        return [str(m, "utf-8") for m in members if str(m, "utf-8").startswith(recheck)]  # type: ignore[arg-type]

    wait_until(lambda: rechecks(store.keys.delayed), 10, "the copy to wait")
    status = client.wait(workflow_id, timeout_s=60)
    assert status["state"] == "succeeded"
    # The copy looks again after the step ended, and is dropped.
    wait_until(
        lambda: (
            not rechecks(store.keys.delayed_entries)
            and r.llen("default") == 0
            and r.hlen("unacked") == 0
        ),
        30,
        "the copy to be looked at again and acknowledged",
    )
    ledger, calls = effects(r)
    assert calls == 2 and len(ledger) == 2  # slow once, next once
    assert client.audit(workflow_id).ok


def test_redis_crashing_under_load_loses_no_acknowledged_submission(tmp_path: Path) -> None:
    stack, client = make_stack(tmp_path / "home", [WorkerSpec(k, 1, 2) for k in PRIORITY_ORDER])
    try:
        rng = random.Random(7)
        crashes: list[float] = []
        stop = threading.Event()

        def crash_redis() -> None:
            while not stop.wait(rng.uniform(1.5, 3.0)) and len(crashes) < 3:
                stack.restart_redis(crash=True)
                crashes.append(time.monotonic())

        crasher = threading.Thread(target=crash_redis)
        crasher.start()
        # Every id returned here was acknowledged: each of these workflows must finish.
        ids = [client.submit(chaos_workflow(i, rng)) for i in range(40)]
        crasher.join()
        assert len(crashes) == 3
        wait_until(
            lambda: all(client.status(w)["state"] in WORKFLOW_FINAL for w in ids),
            120,
            "every acknowledged workflow to finish",
            poll_s=0.2,
        )
        r = redis.Redis.from_url(stack.redis_url)
        succeeded = set()
        for workflow_id in ids:
            status = client.status(workflow_id)
            assert status["state"] == "succeeded", status
            assert client.audit(workflow_id).ok
            fan_outs = {s["item_of"] for s in status["steps"] if "item_of" in s}
            succeeded |= {
                f"{workflow_id}:{s['id']}"
                for s in status["steps"]
                if s["task"] == "chaos.effect" and s["id"] not in fan_outs
            }
        ledger, _calls = effects(r)
        assert set(ledger) == succeeded  # every effect applied, none for a step not done
    finally:
        client.close()
        stack.stop()


def test_a_fan_out_whose_chord_will_never_fire_is_joined_by_recovery(
    stack: Stack, client: Client
) -> None:
    gate = f"never-fires-{time.time_ns()}"
    workflow_id = client.submit(
        {
            "name": "never-fires",
            "steps": [
                {"id": "src", "task": "treadle.items", "args": {"n": 3}},
                {"id": "each", "task": "tests.hold", "for_each": "src", "args": {"name": gate}},
            ],
        }
    )
    r = redis.Redis.from_url(stack.redis_url)

    def chord_group() -> str | None:
        # The items' messages, held by workers while they wait for the gate, name the
        # group of their chord.
        for raw in r.hvals("unacked"):
            headers = json.loads(raw)[0]["headers"]
            if headers.get("group") and workflow_id in str(headers.get("argsrepr")):
                return str(headers["group"])
        return None

    group_id = wait_until(chord_group, 30, "the items of the fan-out to be taken")
    # An item counted twice (a redelivery after a kill, say): the chord's count goes past
    # its size and Celery never fires it.
    app = client.orchestrator.app
    r.rpush(app.backend.get_key_for_group(group_id, ".j"), b"counted twice")
    open_gate(gate, stack.redis_url)
    store = client.orchestrator.store
    wait_until(
        lambda: all(
            store.step_records(workflow_id).get(f"each[{i}]", {}).get("state") == "succeeded"
            for i in range(3)
        ),
        30,
        "the items to succeed",
    )
    assert store.step_records(workflow_id)["each"]["state"] == "running"
    store.mark_disrupted(time.time())  # what lets recovery look for lost messages
    status = client.wait(workflow_id, timeout_s=60)
    assert status["state"] == "succeeded"
    assert store.results(workflow_id)["each"] == [gate, gate, gate]
    assert client.audit(workflow_id).ok
