"""Audit chains per step, and claims a worker makes from what it kept without reading
first: against a real Redis, through the store's own scripts (no workers take part)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from ops.bench.redis_stats import CommandMix, monitored
from orchestrator.audit import chain_problems
from orchestrator.client import Client
from orchestrator.compiler import compile_workflow
from orchestrator.definitions import DefinitionCache
from orchestrator.dispatch import mark_queued
from orchestrator.stack import Stack
from orchestrator.store import Change, Conflict, StateStore, StepView

pytestmark = pytest.mark.e2e

STEPS = ("s0", "s1", "s2", "s3")


@dataclass
class Submitted:
    workflow_id: str
    shared: StateStore  # the orchestrator's (keeps nothing)
    worker: StateStore  # a worker's: keeps definitions, on a connection of its own

    def sent_by(self, mix: CommandMix, store: StateStore) -> Counter[str]:
        """What ``store``'s one connection sent (the orchestrator's sweep and the workers
        share the server meanwhile)."""
        return mix.by_address.get(str(store.redis.client_info()["addr"]), Counter())


def _create(client: Client, workflow_id: str, spec_steps: list[dict[str, object]]) -> None:
    workflow = client.orchestrator.checker.check(
        {"name": "chains", "priority": "bulk", "params": {"n": 1}, "steps": spec_steps}
    )
    client.orchestrator.store.create(workflow_id, workflow, compile_workflow(workflow))
    # Marked dispatched, though nothing is published: else the recovery sweep would
    # dispatch it to the session's workers after recovery_after_s.
    client.orchestrator.store.set_fields(workflow_id, {"dispatched_at": repr(time.time())})


@pytest.fixture
def submitted(stack: Stack, client: Client) -> Iterator[Submitted]:
    """Four steps without dependencies, queued but never published; a worker's store that
    has read two of them (the second read keeps the whole workflow)."""
    shared = client.orchestrator.store
    workflow_id = f"chains-{time.time_ns()}"
    _create(client, workflow_id, [{"id": s, "task": "treadle.noop"} for s in STEPS])
    mark_queued(shared, workflow_id, list(STEPS))
    # One connection (used turn by turn, the pool keeps just one), told apart under MONITOR.
    connection = redis.Redis.from_url(stack.redis_url)
    worker = StateStore(connection, shared.keys, definitions=DefinitionCache())
    worker.load_step(workflow_id, "s0")
    worker.load_step(workflow_id, "s1")
    yield Submitted(workflow_id, shared, worker)
    connection.close()
    shared.redis.delete(*shared.keys.of_workflow(workflow_id))


def _start(view: StepView) -> Change:
    now = time.time()
    return Change(
        view.step_id,
        "queued",
        "running",
        {"attempts": 1, "started_at": now},
        {"at": now, "attempt": 1},
    )


def _claim(store: StateStore, view: StepView) -> None:
    store.apply(view.workflow_id, [_start(view)], tails=view.tails, guard=view.presumed)


def test_a_kept_workflow_lets_a_step_be_claimed_in_one_call(
    stack: Stack, submitted: Submitted
) -> None:
    view = submitted.worker.presume_step(submitted.workflow_id, "s2")
    assert view is not None and view.presumed is not None
    assert view.params == {"n": 1} and view.priority == "bulk"
    with monitored(stack.redis_url, 0) as mix:
        _claim(submitted.worker, view)
    # One script call, nothing read before it.
    assert submitted.sent_by(mix, submitted.worker) == Counter({"evalsha": 1}), mix.by_address
    record = submitted.shared.step_records_of(submitted.workflow_id, ["s2"])["s2"]
    assert record["state"] == "running" and record["tail"]
    assert record["queued_at"]  # kept: the presumed claim does not know it, nor replace it
    entries, tails = submitted.shared.audit_entries(submitted.workflow_id)
    assert tails["s2"] == record["tail"]
    assert chain_problems(entries, tails) == []


def test_a_second_presumed_claim_of_the_same_step_conflicts(submitted: Submitted) -> None:
    first = submitted.worker.presume_step(submitted.workflow_id, "s2")
    second = submitted.worker.presume_step(submitted.workflow_id, "s2")
    assert first is not None and second is not None
    _claim(submitted.worker, first)
    with pytest.raises(Conflict):
        _claim(submitted.worker, second)


def test_a_presumed_claim_of_a_step_run_before_conflicts_even_when_it_is_queued_again(
    submitted: Submitted,
) -> None:
    """Queued again (a retry): its chain has records, so it is not the step presumed."""
    store, wid = submitted.shared, submitted.workflow_id
    view = store.load_step(wid, "s3")
    store.apply(wid, [_start(view)], tails=view.tails)
    view = store.load_step(wid, "s3")
    store.apply(wid, [Change("s3", "running", "queued", {}, {"at": time.time()})])
    presumed = submitted.worker.presume_step(wid, "s3")
    assert presumed is not None
    with pytest.raises(Conflict):
        _claim(submitted.worker, presumed)
    assert store.step_records_of(wid, ["s3"])["s3"]["attempts"] == 1


@pytest.mark.parametrize("state", ["cancelled", "parked"])
def test_a_presumed_claim_in_a_workflow_that_stopped_conflicts(
    submitted: Submitted, state: str
) -> None:
    store, wid = submitted.shared, submitted.workflow_id
    current = store.workflow_fields(wid)["state"]
    store.apply(wid, [Change(None, current, state, {}, {"at": time.time()})])
    view = submitted.worker.presume_step(wid, "s2")
    assert view is not None
    with pytest.raises(Conflict) as raised:
        _claim(submitted.worker, view)
    assert raised.value.target is None and raised.value.current == state
    assert store.step_records_of(wid, ["s2"])["s2"]["state"] == "queued"


def test_a_workflow_submitted_again_under_its_id_is_not_claimed_from_the_old_one(
    client: Client, submitted: Submitted
) -> None:
    store, wid = submitted.shared, submitted.workflow_id
    view = submitted.worker.presume_step(wid, "s2")
    store.redis.delete(*store.keys.of_workflow(wid))
    _create(client, wid, [{"id": s, "task": "treadle.echo", "args": {"value": s}} for s in STEPS])
    mark_queued(store, wid, list(STEPS))
    assert view is not None
    with pytest.raises(Conflict):
        _claim(submitted.worker, view)
    # Read again, it is the new submission's step.
    assert submitted.worker.load_step(wid, "s2").definition["task"] == "treadle.echo"


def test_rewritten_definitions_are_not_claimed_from_the_kept_ones(submitted: Submitted) -> None:
    """A resume rewrites definitions under the same submission: a kept copy is stale."""
    store, wid = submitted.shared, submitted.workflow_id
    definition = {**store.step_defs_of(wid, ["s1"])["s1"], "args": {"rewritten": True}}
    store.apply(wid, [Change("s1", "queued", "queued", {}, {"at": 1.0}, definition=definition)])
    view = submitted.worker.presume_step(wid, "s2")
    assert view is not None
    with pytest.raises(Conflict):
        _claim(submitted.worker, view)
    assert submitted.worker.load_step(wid, "s1").definition["args"] == {"rewritten": True}


def test_no_presumption_for_a_step_whose_input_or_fate_needs_a_read(client: Client) -> None:
    shared = client.orchestrator.store
    wid = f"chains-{time.time_ns()}"
    _create(
        client,
        wid,
        [
            {"id": "a", "task": "treadle.noop"},
            {"id": "b", "task": "treadle.noop", "after": ["a"]},
            {"id": "c", "task": "treadle.noop", "when": "params.n == 1"},
        ],
    )
    worker = StateStore(shared.redis, shared.keys, definitions=DefinitionCache())
    assert worker.presume_step(wid, "a") is None  # nothing kept yet
    worker.load_step(wid, "a")
    worker.load_step(wid, "a")
    assert worker.presume_step(wid, "a") is not None
    assert worker.presume_step(wid, "b") is None  # its input is a's result
    assert worker.presume_step(wid, "c") is None  # its condition may skip it
    shared.redis.delete(*shared.keys.of_workflow(wid))


def test_transitions_of_different_steps_never_make_each_other_stale(
    stack: Stack, submitted: Submitted
) -> None:
    """Each step's records chain on their own: views read before other steps moved
    still claim in one call each (one chain for the whole workflow made every claim
    after the first retry)."""
    store, wid = submitted.worker, submitted.workflow_id
    views = [store.load_step(wid, s) for s in STEPS]
    with monitored(stack.redis_url, 0) as mix:
        for view in views:
            store.apply(wid, [_start(view)], tails=view.tails)
    assert submitted.sent_by(mix, store) == Counter({"evalsha": len(STEPS)}), mix.by_address
    entries, tails = store.audit_entries(wid)
    assert chain_problems(entries, tails) == []
    assert set(tails) == {"", *STEPS}


def test_a_batch_queued_at_once_is_one_record_of_the_workflow(submitted: Submitted) -> None:
    entries, _ = submitted.shared.audit_entries(submitted.workflow_id)
    records = [json.loads(e) for e in entries]
    assert len(records) == 2  # submitted, then queued
    assert records[1]["step_id"] is None and records[1]["queued"] == list(STEPS)
    assert "from" not in records[1] and "to" not in records[1]
    states = submitted.shared.step_records(submitted.workflow_id)
    assert {r["state"] for r in states.values()} == {"queued"}
    assert not any(r.get("tail") for r in states.values())  # no record of their own yet
