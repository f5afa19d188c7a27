"""treadle's side of each scenario: workflow specs, submit-and-wait, clean-up.

Times are the ones treadle records: a run lasts from the bench's clock just before
``submit`` (so validation, storing and publishing count) to the workflow's recorded
``finished_at``, written by the worker that ended its last step. Waiting polls one small
field, so the polling neither delays the measured end nor adds more than one command a
poll (which the command count takes off).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from orchestrator.client import Client
from orchestrator.states import WORKFLOW_FINAL
from orchestrator.store import text

POLL_S = 0.05
NOOP = "treadle.noop"


def chain_spec(steps: int) -> dict[str, Any]:
    return {
        "name": f"bench-chain-{steps}",
        "steps": [
            {"id": f"s{i}", "task": NOOP, "after": [f"s{i - 1}"] if i else []} for i in range(steps)
        ],
    }


def parallel_spec(steps: int, priority: str = "default") -> dict[str, Any]:
    return {
        "name": f"bench-parallel-{steps}",
        "priority": priority,
        "steps": [{"id": f"p{i}", "task": NOOP} for i in range(steps)],
    }


def fan_in_spec(steps: int) -> dict[str, Any]:
    spec = parallel_spec(steps)
    spec["name"] = f"bench-fan-in-{steps}"
    spec["steps"].append({"id": "join", "task": NOOP, "after": [f"p{i}" for i in range(steps)]})
    return spec


@dataclass(frozen=True)
class Finished:
    workflow_id: str
    started: float  # the bench's clock just before submit
    finished_at: float  # recorded by the worker that ended the workflow
    polls: int  # HMGETs sent while waiting

    @property
    def seconds(self) -> float:
        return self.finished_at - self.started


def run(client: Client, spec: dict[str, Any], timeout_s: float = 600.0) -> Finished:
    started = time.time()
    workflow_id = client.submit(spec)
    return wait(client, workflow_id, started, timeout_s)


def wait(client: Client, workflow_id: str, started: float, timeout_s: float) -> Finished:
    store = client.orchestrator.store
    key = store.keys.workflow(workflow_id)
    deadline = time.monotonic() + timeout_s
    polls = 0
    while True:
        state, finished_at = (
            text(v) if v is not None else ""
            for v in store.redis.hmget(key, ["state", "finished_at"])
        )
        polls += 1
        if state in WORKFLOW_FINAL:
            if state != "succeeded":
                raise RuntimeError(f"bench workflow {workflow_id} ended {state}")
            return Finished(workflow_id, started, float(finished_at), polls)
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench workflow {workflow_id} not done after {timeout_s} s")
        time.sleep(POLL_S)


def forget(client: Client, workflow_id: str) -> None:
    """Delete a measured workflow, so Redis (and its AOF) stays small across the bench."""
    store = client.orchestrator.store
    store.redis.delete(*store.keys.of_workflow(workflow_id))
    store.redis.zrem(store.keys.index, workflow_id)
