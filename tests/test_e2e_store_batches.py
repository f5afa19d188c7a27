"""The state store's scripts with batches bigger than one Redis call can carry from Lua:
every write lands, the audit chain holds, and a batch costs a handful of commands."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from ops.bench.redis_stats import monitored
from orchestrator.client import Client
from orchestrator.compiler import compile_workflow
from orchestrator.definitions import DefinitionCache
from orchestrator.metrics import exposition
from orchestrator.stack import Stack
from orchestrator.store import Change, StateStore

pytestmark = pytest.mark.e2e

# Past the scripts' chunk of 4,000 values (2,000 hash fields) more than once.
WIDE = 4_500


@contextmanager
def script_commands(stack: Stack, *names: str) -> Iterator[dict[str, int]]:
    """How many of each command the Lua scripts ran during the block (MONITOR): what
    clients send, such as the workers' once-a-second metrics flush, is left out."""
    counted: dict[str, int] = {}
    with monitored(stack.redis_url, 0) as mix:
        yield counted
    counted.update({n: mix.by_script[n] for n in names})


def test_a_wide_batch_is_written_whole_in_a_few_commands(stack: Stack, client: Client) -> None:
    store: StateStore = client.orchestrator.store
    spec = {
        "name": "wide-batch",
        "priority": "bulk",
        "steps": [{"id": f"s{i}", "task": "treadle.noop"} for i in range(WIDE)],
    }
    workflow = client.orchestrator.checker.check(spec)
    workflow_id = f"wide-batch-{time.time_ns()}"
    watched = ("hset", "rpush", "hincrby")
    with script_commands(stack, *watched) as created:
        store.create(workflow_id, workflow, compile_workflow(workflow))
    assert created["hset"] >= 3, created  # the script was seen
    # Fields, defs, records: three hashes in chunks of 2,000 fields each.
    assert created["hset"] <= 12, created
    assert len(store.step_records(workflow_id)) == WIDE
    assert len(store.step_defs(workflow_id)) == WIDE

    now = time.time()
    changes = [
        Change(f"s{i}", "pending", "queued", {"queued_at": now}, {"at": now}) for i in range(WIDE)
    ]
    with script_commands(stack, *watched) as moved:
        applied = store.apply(workflow_id, changes)
    assert (applied.steps_done, applied.steps_total) == (0, WIDE)
    assert moved["rpush"] >= 1 and moved["hincrby"] >= 1, moved  # the script was seen
    assert moved["rpush"] <= 3, moved  # the audit records, in chunks
    assert moved["hset"] <= 6, moved  # the records, and the workflow's tail once
    assert moved["hincrby"] <= 6, moved  # one per counter, not one per step

    records = store.step_records(workflow_id)
    assert {r["state"] for r in records.values()} == {"queued"}
    assert all(r["queued_at"] == pytest.approx(now) for r in records.values())
    log, _ = client.audit_log(workflow_id)
    assert len(log) == 1 + WIDE
    assert client.audit_chain_problems(workflow_id) == []

    metrics = exposition(store, client.orchestrator.checker.topology)[0].decode()
    queued = [
        line
        for line in metrics.splitlines()
        if line.startswith('treadle_steps{class="bulk",state="queued"}')
    ]
    assert queued and float(queued[0].split()[-1]) >= WIDE
    client.cancel(workflow_id)


def test_a_worker_store_keeps_definitions_but_never_those_of_an_older_submission(
    client: Client, redis_client: redis.Redis
) -> None:
    orchestrator_store: StateStore = client.orchestrator.store
    worker_store = StateStore(redis_client, orchestrator_store.keys, definitions=DefinitionCache())
    workflow_id = f"kept-defs-{time.time_ns()}"

    def submit(task: str) -> None:
        spec = {"name": "kept", "steps": [{"id": f"s{i}", "task": task} for i in range(3)]}
        workflow = client.orchestrator.checker.check(spec)
        orchestrator_store.create(workflow_id, workflow, compile_workflow(workflow))

    submit("treadle.noop")
    for step in ("s0", "s1", "s2"):
        assert worker_store.load_step(workflow_id, step).definition["task"] == "treadle.noop"
    assert worker_store.definitions is not None
    assert worker_store.definitions.get(workflow_id, None, "s2") is not None, "not kept"
    # Forgotten, then submitted again under the same id with other steps.
    redis_client.delete(*orchestrator_store.keys.of_workflow(workflow_id))
    submit("treadle.fail")
    for step in ("s0", "s1", "s2"):
        assert worker_store.load_step(workflow_id, step).definition["task"] == "treadle.fail"
