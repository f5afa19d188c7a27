"""The shared limits' Lua script against a real Redis: who may run, who waits, in which
order waiters are woken, and how permits of dead workers come back. The end-to-end
behaviour with real workers is in test_e2e_flow.py."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.broker_transport import FRONT_OF_QUEUE_HEADER
from config.topology import Topology
from orchestrator.flow import FAILURE, HELD, SUCCESS, FlowControl, Waiting, member_of
from orchestrator.keys import Keys
from orchestrator.limits import Limit
from orchestrator.stack import Stack
from orchestrator.store import StateStore, StepView
from tests.conftest import wait_until


@pytest.fixture
def flow(stack: Stack) -> Iterator[FlowControl]:
    client = redis.Redis.from_url(stack.redis_url)
    store = StateStore(client, Keys(f"flowtest-{uuid.uuid4().hex[:8]}"))
    yield FlowControl(store, Topology())
    client.close()


def view(step: str, workflow: str = "wf", sequence: int = 1, rank: int = 0) -> StepView:
    return StepView(
        workflow_id=workflow,
        step_id=step,
        definition={"rank": rank},
        record={},
        workflow_state="running",
        priority="default",
        on_failure="stop",
        params={},
        results={},
        dependency_states={},
        sequence=sequence,
    )


def acquire(
    flow: FlowControl,
    step: str,
    limits: list[Limit],
    incarnation: str = "alive",
    claim: str = "",
    replaces: str = "",
    **kw: Any,
) -> Waiting | None:
    the_view = view(step, **kw)
    submitted(flow, the_view.workflow_id, step)
    return flow.acquire(
        the_view, limits, incarnation, 60.0, {"step": step}, claim=claim, replaces=replaces
    )


def submitted(flow: FlowControl, workflow: str, step: str) -> None:
    """Waiters and holders whose workflows do not exist count as ended (and are cleared)."""
    keys, r = flow.store.keys, flow.store.redis
    r.hset(keys.workflow(workflow), "state", "running")
    r.hsetnx(keys.steps(workflow), step, json.dumps({"state": "pending"}))


def parked(flow: FlowControl, limit: Limit) -> dict[str, str]:
    base = flow.store.keys.limit(limit.kind, limit.name)
    raw = flow.store.redis.hgetall(f"{base}:parked")
    return {text(k): text(v) for k, v in raw.items()}


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def due_messages(flow: FlowControl) -> list[dict[str, Any]]:
    """Take the waiting messages that are due now, in the order the publisher would."""
    r, keys = flow.store.redis, flow.store.keys
    ids = r.zrangebyscore(keys.delayed, "-inf", time.time())
    messages = [json.loads(text(r.hget(keys.delayed_entries, text(i)))) for i in ids]
    if ids:
        r.zrem(keys.delayed, *ids)
        r.hdel(keys.delayed_entries, *ids)
    return messages


def take_due(flow: FlowControl) -> list[str]:
    return [m["step"] for m in due_messages(flow)]


def keep_alive(flow: FlowControl, *incarnations: str) -> None:
    for incarnation in incarnations:
        flow.store.redis.set(flow.store.keys.alive(incarnation), 1, ex=60)


def test_a_semaphore_admits_its_limit_and_wakes_waiters_first_come_first_served(
    flow: FlowControl,
) -> None:
    keep_alive(flow, "alive")
    db = Limit("resource", "db", concurrency=2)
    assert acquire(flow, "a", [db]) is None
    assert acquire(flow, "b", [db]) is None
    waits = [acquire(flow, s, [db]) for s in ("c", "d", "e")]
    assert all(w is not None and w.reason == "concurrency" and w.due is None for w in waits)
    assert set(parked(flow, db)) == {"wf/c", "wf/d", "wf/e"}
    assert take_due(flow) == []

    flow.release(view("a"), [db])
    # One permit came back: only the first in line is woken, not every waiter.
    assert take_due(flow) == ["c"]
    assert set(parked(flow, db)) == {"wf/d", "wf/e"}
    # A newcomer does not overtake the woken waiter, whose place is kept.
    assert acquire(flow, "z", [db]) is not None
    assert acquire(flow, "c", [db]) is None


def test_a_woken_waiter_goes_to_the_front_unless_it_waited_for_its_tenants_cap(
    flow: FlowControl,
) -> None:
    keep_alive(flow, "alive")
    db = Limit("resource", "db", concurrency=1)
    tenant = Limit("tenant", "default:t", concurrency=1)
    assert acquire(flow, "a", [db, tenant]) is None
    waits = [acquire(flow, "b", [db]), acquire(flow, "c", [tenant])]
    assert [w.limit.kind if w else None for w in waits] == ["resource", "tenant"]

    flow.release(view("a"), [db, tenant])

    woken = {m["step"]: m for m in due_messages(flow)}
    assert woken["b"]["options"]["headers"] == {FRONT_OF_QUEUE_HEADER: True}
    assert "options" not in woken["c"]  # published as it came: back in line


def test_a_token_bucket_gives_waiters_spaced_due_times_in_arrival_order(
    flow: FlowControl,
) -> None:
    api = Limit("resource", "api", rate_per_s=10.0, burst=2)
    assert acquire(flow, "a", [api]) is None
    assert acquire(flow, "b", [api]) is None  # the burst
    waits = [acquire(flow, s, [api]) for s in ("c", "d", "e", "f")]
    dues = [w.due for w in waits if w is not None and w.due is not None]
    assert len(dues) == 4 and all(w and w.reason == "rate" for w in waits)
    # One token every 0.1 s: each waiter is due when its own token will be there, so a
    # refill does not send them all at the bucket at once.
    gaps = [later - earlier for earlier, later in itertools.pairwise(dues)]
    assert all(0.09 < gap < 0.11 for gap in gaps), gaps
    assert parked(flow, api) == {}  # they wait on a due time, not for a wake-up


def test_permits_of_a_dead_worker_are_taken_back_and_its_attempt_marked_lost(
    flow: FlowControl,
) -> None:
    keep_alive(flow, "alive")
    db = Limit("resource", "db", concurrency=1)
    assert acquire(flow, "a", [db], incarnation="dead") is None
    assert acquire(flow, "b", [db]) is not None
    lost: list[tuple[str, str, str]] = []
    reaped = flow.reap(lambda wf, step, incarnation, why: lost.append((wf, step, incarnation)))
    assert lost == [("wf", "a", "dead")]
    assert reaped.reclaimed == ["db wf/a"]
    assert take_due(flow) == ["b"]
    assert acquire(flow, "b", [db]) is None


def test_a_second_copy_of_a_step_neither_shares_its_permit_nor_gives_it_back(
    flow: FlowControl,
) -> None:
    """Two copies of one step's message claimed at once (a message put back or re-issued
    by recovery while another copy was on its way): the permit is the first claim's. The
    second is told HELD and parked nowhere, and giving back what it took (its start found
    the step running) frees nothing: a third step still waits."""
    keep_alive(flow, "alive")
    db = Limit("resource", "db", concurrency=2)
    assert acquire(flow, "a", [db], claim="first") is None
    assert acquire(flow, "b", [db], claim="b") is None
    second = acquire(flow, "a", [db], claim="second")
    assert second is not None and second.reason == HELD
    assert parked(flow, db) == {} and take_due(flow) == []
    flow.release(view("a"), [db], claim="second")
    assert acquire(flow, "c", [db], claim="c") is not None
    flow.release(view("a"), [db], SUCCESS, claim="first")
    assert take_due(flow) == ["c"]
    assert acquire(flow, "c", [db], claim="c") is None


def test_a_claim_takes_over_the_permit_of_the_attempt_it_follows_or_of_a_dead_worker(
    flow: FlowControl,
) -> None:
    """A retry, or the copy that runs a lost attempt again, takes over the permit the
    attempt before it still holds (it names that attempt's claim); the late release of
    the old claim then gives back nothing. Of two copies doing so, only the first may.
    A permit of a dead worker goes to any claim."""
    keep_alive(flow, "alive")
    db = Limit("resource", "db", concurrency=1)
    assert acquire(flow, "a", [db], claim="attempt-1") is None
    assert acquire(flow, "a", [db], claim="attempt-2", replaces="attempt-1") is None
    copy = acquire(flow, "a", [db], claim="attempt-2-copy", replaces="attempt-1")
    assert copy is not None and copy.reason == HELD
    flow.release(view("a"), [db], FAILURE, claim="attempt-1")
    assert acquire(flow, "b", [db], claim="b") is not None
    flow.release(view("a"), [db], SUCCESS, claim="attempt-2")
    assert take_due(flow) == ["b"]

    api = Limit("resource", "api-db", concurrency=1)
    assert acquire(flow, "d", [api], incarnation="dead", claim="d-1") is None
    assert acquire(flow, "d", [api], claim="d-2") is None
    flow.release(view("d"), [api], claim="d-1")  # a zombie of the dead worker
    assert acquire(flow, "e", [api], claim="e") is not None


def test_a_concurrency_key_serves_steps_in_submission_order_not_arrival_order(
    flow: FlowControl,
) -> None:
    keep_alive(flow, "alive")
    sku = Limit("key", "A-1", concurrency=1, ordered=True)
    base = flow.store.keys.limit(sku.kind, sku.name)
    # Submission reserved places for workflows 1, 2 and 3 (as create_workflow.lua does).
    for seq in (1, 2, 3):
        submitted(flow, f"w{seq}", "s")
        flow.store.redis.zadd(f"{base}:queue", {member_of(f"w{seq}", "s"): seq * 100_000})
    # Workflow 3's step arrives first: it must wait for 1 and 2.
    assert acquire(flow, "s", [sku], workflow="w3", sequence=3) is not None
    assert acquire(flow, "s", [sku], workflow="w2", sequence=2) is not None
    assert acquire(flow, "s", [sku], workflow="w1", sequence=1) is None
    flow.release(view("s", workflow="w1", sequence=1), [sku])
    assert take_due(flow) == ["s"] and set(parked(flow, sku)) == {"w3/s"}
    assert acquire(flow, "s", [sku], workflow="w3", sequence=3) is not None
    assert acquire(flow, "s", [sku], workflow="w2", sequence=2) is None


def test_a_circuit_opens_after_failures_defers_steps_and_closes_after_a_probe(
    flow: FlowControl,
) -> None:
    keep_alive(flow, "alive")
    pay = Limit("resource", "pay", circuit_failures=2, circuit_open_s=0.3)
    for step in ("a", "b"):
        assert acquire(flow, step, [pay]) is None
        flow.release(view(step), [pay], FAILURE)
    first = acquire(flow, "c", [pay])
    second = acquire(flow, "d", [pay])
    assert first is not None and first.reason == "circuit open" and first.due is not None
    assert second is not None and second.due is None  # only the first in line comes back
    # The first in line comes back when the open period ends and it may probe.
    assert wait_until(lambda: take_due(flow), 5, "the circuit's open period to end") == ["c"]
    assert acquire(flow, "d", [pay]) is not None  # not first in line: no probe
    assert acquire(flow, "c", [pay]) is None  # the half-open probe
    assert acquire(flow, "e", [pay]) is not None  # while the probe runs, others wait
    flow.release(view("c"), [pay], SUCCESS)
    assert take_due(flow) == ["d", "e"]  # closed: every waiter goes, in order
    assert acquire(flow, "d", [pay]) is None


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    limit=st.integers(min_value=1, max_value=3),
    script=st.lists(
        st.tuples(st.sampled_from(["acquire", "release"]), st.integers(min_value=0, max_value=5)),
        max_size=40,
    ),
)
def test_a_semaphore_never_has_more_holders_than_its_limit_and_wakes_in_order(
    flow: FlowControl, limit: int, script: list[tuple[str, int]]
) -> None:
    keep_alive(flow, "alive")
    sem = Limit("resource", f"sem-{uuid.uuid4().hex[:6]}", concurrency=limit)
    holders: set[str] = set()
    waiting: list[str] = []  # in the order they were first refused
    for action, n in script:
        step = f"s{n}"
        if action == "acquire":
            got = acquire(flow, step, [sem]) is None
            if got:
                holders.add(step)
                if step in waiting:
                    waiting.remove(step)
            elif step not in waiting:
                waiting.append(step)
        elif step in holders:
            holders.discard(step)
            flow.release(view(step), [sem])
        assert len(holders) <= limit
        base = flow.store.keys.limit(sem.kind, sem.name)
        assert flow.store.redis.zcard(f"{base}:holders") == len(holders)
        queue = [text(m).split("/")[1] for m in flow.store.redis.zrange(f"{base}:queue", 0, -1)]
        assert queue == waiting
