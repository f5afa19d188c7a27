"""The state store through a connection that drops just after Redis answered: the client
retries, and the repeated transition must be applied exactly once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from config.redis_client import connect
from config.settings import Settings
from orchestrator.client import Client
from orchestrator.compiler import compile_workflow
from orchestrator.keys import Keys
from orchestrator.store import StateStore, lua_script
from tests.faults import CuttingProxy, record_start, record_success

N_SHAPE = {
    "name": "lost-replies",
    "steps": [
        {"id": "a", "task": "treadle.noop"},
        {"id": "b", "task": "treadle.noop"},
        {"id": "c", "task": "treadle.noop", "after": ["a", "b"]},
        {"id": "d", "task": "treadle.noop", "after": ["b"]},
    ],
}


@pytest.fixture
def store(proxy: CuttingProxy, settings: Settings) -> Iterator[StateStore]:
    client = connect(proxy.url, settings)
    # Connected and the script cached before any cut, so that the cut reply is the
    # script's own answer, not a NOSCRIPT that would make any client run it again.
    client.script_load(lua_script("transition.lua"))
    yield StateStore(client, Keys(settings.key_prefix))
    client.close()


def stored_workflow(client: Client, store: StateStore) -> str:
    workflow = client.orchestrator.checker.check(N_SHAPE)
    workflow_id = f"lost-replies-{time.time_ns()}"
    store.create(workflow_id, workflow, compile_workflow(workflow))
    return workflow_id


def test_a_transition_whose_reply_was_lost_is_applied_once(
    client: Client, store: StateStore, proxy: CuttingProxy
) -> None:
    workflow_id = stored_workflow(client, store)
    proxy.cut_reply_to(b"EVALSHA")
    record_start(store, workflow_id, "a")
    assert proxy.cuts == 1
    entries, _ = store.audit_entries(workflow_id)
    assert len(entries) == 2  # the submission and one start, not two
    record = store.step_records_of(workflow_id, ["a"])["a"]
    assert (record["state"], record["attempts"]) == ("running", 1)
    assert store.workflow_fields(workflow_id)["state"] == "running"


def test_a_repeated_release_counts_down_once_and_still_reports_what_it_freed(
    client: Client, store: StateStore, proxy: CuttingProxy
) -> None:
    workflow_id = stored_workflow(client, store)
    for step in ("a", "b"):
        record_start(store, workflow_id, step)
    assert record_success(store, workflow_id, "a") == ()
    proxy.cut_reply_to(b"EVALSHA")
    # b is the last dependency of both c and d: the retried call must say so, or they
    # would wait for the recovery sweep.
    assert sorted(record_success(store, workflow_id, "b")) == ["c", "d"]
    assert proxy.cuts == 1
    assert store.waiting_counts(workflow_id) == {"c": 0, "d": 0}
    fields = store.workflow_fields(workflow_id)
    assert fields["steps_done"] == "2"
    assert client.audit_chain_problems(workflow_id) == []
