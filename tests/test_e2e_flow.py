"""Flow control end to end: shared rate and concurrency limits, concurrency keys, circuit
breakers, tenant caps and admission control, on real workers. Every check is made on the
recorded transitions (the audit trail), not on what the limiter says about itself.

One stack for the module, with its own topology: a default pool of 4 worker processes.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from config.topology import PriorityClass
from orchestrator.client import Client
from orchestrator.errors import Refused
from orchestrator.metrics import finished_counts, outstanding_counts
from orchestrator.occupancy import Run, max_overlap, max_starts_per_window, overlapping, runs
from orchestrator.stack import Stack, WorkerSpec
from orchestrator.states import WORKFLOW_FINAL
from tests.conftest import TEST_MODULES, run_cli, wait_until
from tests.scraping import scrape, value
from tests.tasks import open_gate

pytestmark = pytest.mark.e2e

TOPOLOGY = """
pools:
  critical: {concurrency: 1}
  default:  {concurrency: 4, tenant_limit: 2}
  bulk:     {concurrency: 2}
resources:
  api:   {rate: 10/s, burst: 2}
  db:    {concurrency: 2}
  flaky: {circuit: {failures: 2, open_s: 1.5}}
admission:
  critical: {high: 4, low: 1}
  default:  {high: 10000}
  bulk:     {high: 6}
"""
QUICK = {
    "sweep_interval_s": 0.5,
    "recovery_after_s": 2.0,
    "worker_lost_after_s": 3.0,
    "stranded_message_after_s": 2.0,
}


@pytest.fixture(scope="module")
def flow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Client]]:
    home = tmp_path_factory.mktemp("flow-home")
    topology = home / "topology.yaml"
    topology.write_text(TOPOLOGY)
    settings = Settings(home=home, task_modules=TEST_MODULES, topology=topology, **QUICK)  # type: ignore[arg-type]
    workers = [
        WorkerSpec(PriorityClass.critical, 1, 1),
        WorkerSpec(PriorityClass.default, 1, 4),
        WorkerSpec(PriorityClass.bulk, 1, 2),
    ]
    env = {f"TREADLE_{name.upper()}": str(value) for name, value in QUICK.items()}
    with (
        Stack(settings, workers=workers, extra_env=env) as stack,
        Client.connect(settings, stack.redis_url) as client,
    ):
        yield stack, client


def finished(client: Client, *ids: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        statuses = [client.status(i) for i in ids]
        return statuses if all(s["state"] in WORKFLOW_FINAL for s in statuses) else None

    return wait_until(done, timeout_s, f"workflows {', '.join(ids)} to end")


def records(client: Client, *ids: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for workflow_id in ids:
        entries, _ = client.orchestrator.store.audit_entries(workflow_id)
        out.extend(json.loads(e) for e in entries)
    return out


def step_runs(client: Client, ids: list[str], prefix: str = "") -> list[Run]:
    return [r for r in runs(records(client, *ids)) if r.step_id.startswith(prefix)]


def parallel(prefix: str, n: int, task: str, **step: Any) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "task": task, **step} for i in range(n)]


def test_a_rate_limit_holds_across_worker_processes_and_waiting_steps_hold_no_slot(
    flow_stack: tuple[Stack, Client],
) -> None:
    _, client = flow_stack
    flood = client.submit(
        {"name": "scan-flood", "steps": parallel("scan", 30, "treadle.noop", resources=["api"])}
    )
    other = client.submit({"name": "unrelated", "steps": [{"id": "x", "task": "treadle.noop"}]})
    statuses = finished(client, flood, other)
    assert [s["state"] for s in statuses] == ["succeeded", "succeeded"]
    assert all(step["attempts"] == 1 for step in statuses[0]["steps"])  # waits cost none
    starts = [r.start for r in step_runs(client, [flood])]
    assert len(starts) == 30
    # 10/s with a burst of 2: never more than 12 starts in any one second.
    assert max_starts_per_window(starts) <= 12
    waited = [r for r in records(client, flood) if r.get("waiting_for") == "api"]
    assert len(waited) >= 15, "most of the flood should have waited for the bucket"
    assert value(scrape(client), "treadle_limit_deferrals_total", limit="api", reason="rate") >= 15
    # Waiting steps hold no worker slot: a step of the same pool ran meanwhile.
    unrelated_end = statuses[1]["steps"][0]["finished_at"]
    assert unrelated_end < max(starts)


def test_a_concurrency_limit_holds_while_a_worker_is_killed(
    flow_stack: tuple[Stack, Client],
) -> None:
    stack, client = flow_stack
    spec = {
        "name": "db-load",
        # A killed worker's attempt counts as one: allow another.
        "steps": parallel(
            "q",
            10,
            "treadle.sleep",
            args={"seconds": 0.6},
            resources=["db"],
            retry={"max_attempts": 3, "backoff_s": 0.1},
        ),
    }
    ids = [client.submit(spec) for _ in range(2)]

    def two_running() -> bool:
        steps = [s for i in ids for s in client.status(i)["steps"]]
        return sum(s["state"] == "running" for s in steps) >= 2  # type: ignore[no-any-return]

    wait_until(two_running, 30, "two db steps to run")
    stack.restart("default-1")  # SIGKILL: its permits come back only by their lease
    statuses = finished(client, *ids, timeout_s=120)
    assert [s["state"] for s in statuses] == ["succeeded", "succeeded"]
    attempts = step_runs(client, ids)
    assert max_overlap(attempts) <= 2
    assert max_overlap(attempts) == 2, "the limit should have been used to the full"
    assert any(s["attempts"] > 1 for st in statuses for s in st["steps"]), "nothing was killed"


def test_steps_with_the_same_key_run_one_at_a_time_in_submission_order(
    flow_stack: tuple[Stack, Client],
) -> None:
    _, client = flow_stack
    ids, keys = [], []
    for i in range(6):
        sku = "A" if i % 2 == 0 else "B"
        # Earlier submissions get there later: their first step takes longer.
        prep = round((5 - i) * 0.25, 2)
        ids.append(
            client.submit(
                {
                    "name": f"order-{i}",
                    "params": {"sku": sku},
                    "steps": [
                        {"id": "prep", "task": "treadle.sleep", "args": {"seconds": prep}},
                        {
                            "id": "reserve",
                            "task": "treadle.sleep",
                            "args": {"seconds": 0.4},
                            "after": ["prep"],
                            "concurrency_key": "sku-{params.sku}",
                        },
                    ],
                }
            )
        )
        keys.append(sku)
    statuses = finished(client, *ids)
    assert all(s["state"] == "succeeded" for s in statuses)
    reserve = {r.workflow_id: r for r in step_runs(client, ids, "reserve")}
    for sku in ("A", "B"):
        same = [reserve[w] for w, k in zip(ids, keys, strict=True) if k == sku]
        assert [r.start for r in same] == sorted(r.start for r in same), "not in submission order"
        assert not any(overlapping(a, b) for a, b in itertools.pairwise(same))
    a_runs = [reserve[w] for w, k in zip(ids, keys, strict=True) if k == "A"]
    b_runs = [reserve[w] for w, k in zip(ids, keys, strict=True) if k == "B"]
    assert any(overlapping(a, b) for a in a_runs for b in b_runs), "different keys ran serially"


def test_a_circuit_breaker_defers_steps_until_a_probe_succeeds(
    flow_stack: tuple[Stack, Client],
) -> None:
    _, client = flow_stack
    failing = [
        client.submit(
            {
                "name": "pay",
                "steps": [{"id": "p", "task": "tests.always_permanent", "resources": ["flaky"]}],
            }
        )
        for _ in range(2)
    ]
    assert [s["state"] for s in finished(client, *failing)] == ["failed", "failed"]
    opened_at = max(s["steps"][0]["finished_at"] for s in map(client.status, failing))
    later = client.submit(
        {
            "name": "pay-later",
            "steps": [{"id": "p", "task": "treadle.noop", "resources": ["flaky"]}],
        }
    )

    def deferred() -> dict[str, Any] | None:
        step = client.status(later)["steps"][0]
        return step if step.get("waiting_for") == "flaky" else None

    step = wait_until(deferred, 20, "the step to wait for the open circuit")
    assert step["state"] == "queued" and step["attempts"] == 0  # deferred, not failed
    status = finished(client, later)[0]
    assert status["state"] == "succeeded"
    assert status["steps"][0]["attempts"] == 1
    assert status["steps"][0]["started_at"] >= opened_at + 1.4  # after the open period
    reasons = [r.get("reason") for r in records(client, later) if r.get("waiting_for")]
    assert reasons == ["circuit open"]


def test_a_tenant_cap_leaves_room_for_another_tenant(flow_stack: tuple[Stack, Client]) -> None:
    _, client = flow_stack
    flood = client.submit(
        {
            "name": "tenant-flood",
            "tenant": "big",
            "steps": parallel("f", 8, "treadle.sleep", args={"seconds": 0.4}),
        }
    )
    small = client.submit(
        {
            "name": "tenant-small",
            "tenant": "small",
            "steps": [{"id": "s", "task": "treadle.sleep", "args": {"seconds": 0.1}}],
        }
    )
    assert [s["state"] for s in finished(client, flood, small)] == ["succeeded", "succeeded"]
    big = step_runs(client, [flood])
    assert max_overlap(big) <= 2  # the cap, although the pool has 4 processes
    small_start = step_runs(client, [small])[0].start
    assert small_start < max(r.start for r in big), "the small tenant waited for the flood"


def test_tenants_at_their_caps_take_turns_with_a_newcomer(
    flow_stack: tuple[Stack, Client],
) -> None:
    _, client = flow_stack
    # Two tenants at their caps (2 each) fill the pool's 4 processes, with more waiting.
    floods = [
        client.submit(
            {
                "name": f"tenant-{tenant}",
                "tenant": tenant,
                "steps": parallel(tenant, 10, "treadle.sleep", args={"seconds": 0.3}),
            }
        )
        for tenant in ("a", "b")
    ]

    def pool_full() -> bool:
        steps = [s for w in floods for s in client.status(w)["steps"]]
        return sum(s["state"] == "running" for s in steps) == 4  # type: ignore[no-any-return]

    wait_until(pool_full, 30, "both tenants to run at their caps")
    arrived = time.time()
    late = client.submit(
        {
            "name": "tenant-c",
            "tenant": "c",
            "steps": [{"id": "c", "task": "treadle.sleep", "args": {"seconds": 0.1}}],
        }
    )
    statuses = finished(client, *floods, late)
    assert all(s["state"] == "succeeded" for s in statuses)
    c_start = step_runs(client, [late])[0].start
    overtaking = [r for r in step_runs(client, floods) if arrived < r.start < c_start]
    # Its turn comes with the first freed slot, or the one after if two free at once:
    # the floods' woken steps do not keep jumping ahead of it.
    assert len(overtaking) <= 2, f"{len(overtaking)} steps of the floods went first"


def test_admission_refuses_a_class_over_its_watermark_and_enqueues_nothing(
    flow_stack: tuple[Stack, Client], tmp_path: Path
) -> None:
    stack, client = flow_stack
    gate = f"admission-{uuid.uuid4().hex}"
    spec = {
        "name": "bulk-load",
        "priority": "bulk",
        "steps": parallel("b", 3, "tests.hold", args={"name": gate}),
    }
    admitted = [client.submit(spec) for _ in range(2)]  # 6 outstanding: the watermark
    before = len(client.list())
    path = tmp_path / "bulk.json"
    path.write_text(json.dumps(spec))
    refused = run_cli(stack, "submit", str(path))
    assert refused.returncode == 3, refused.stderr
    assert "retry in" in refused.stderr and "watermark of 6" in refused.stderr
    assert len(client.list()) == before  # nothing of it was written
    refusals = value(scrape(client), "treadle_admission_refused_total", **{"class": "bulk"})
    with pytest.raises(Refused) as caught:
        client.submit(spec)
    assert caught.value.retry_after_s >= 1
    assert len(client.list()) == before
    assert (
        value(scrape(client), "treadle_admission_refused_total", **{"class": "bulk"})
        == refusals + 1
    )
    # Asked to, the client waits as told and gets in once the class has drained.
    open_gate(gate, stack.redis_url)
    late = client.submit(spec, retry_refused_s=60)
    statuses = finished(client, *admitted, late)
    assert all(s["state"] == "succeeded" for s in statuses)
    assert outstanding_counts(client.orchestrator.store)["bulk"] == (0, 0)


def test_unstarted_bulk_work_is_parked_under_overload_and_resumed_after(
    flow_stack: tuple[Stack, Client],
) -> None:
    stack, client = flow_stack
    # Both bulk processes busy, so the next bulk workflows wait unstarted on the queue.
    gate = f"blocker-{uuid.uuid4().hex}"
    blocker = client.submit(
        {
            "name": "bulk-blocker",
            "priority": "bulk",
            "steps": parallel("b", 2, "tests.hold", args={"name": gate}),
        }
    )
    chain = [
        {"id": "one", "task": "treadle.sleep", "args": {"seconds": 0.2}},
        {"id": "two", "task": "treadle.noop", "after": ["one"]},
    ]
    sheddable = [
        client.submit({"name": f"bulk-{i}", "priority": "bulk", "steps": chain}) for i in range(3)
    ]
    # A critical surge at its watermark (4) is overload: the unstarted bulk work is parked.
    surge = client.submit(
        {
            "name": "surge",
            "priority": "critical",
            "steps": parallel("c", 5, "treadle.sleep", args={"seconds": 1.0}),
        }
    )
    wait_until(
        lambda: all(client.status(i)["state"] == "parked" for i in sheddable),
        20,
        "the unstarted bulk workflows to be parked",
    )
    open_gate(gate, stack.redis_url)
    statuses = finished(client, blocker, surge, *sheddable, timeout_s=90)
    assert all(s["state"] == "succeeded" for s in statuses), [s["state"] for s in statuses]
    surge_end = statuses[1]["finished_at"]
    for workflow_id, status in zip(sheddable, statuses[2:], strict=True):
        moves = [
            (r.get("from"), r.get("to"))
            for r in records(client, workflow_id)
            if r["step_id"] is None
        ]
        assert ("pending", "parked") in moves and ("parked", "pending") in moves
        # Resumed only once the surge had (almost) drained: below the low mark of 1.
        assert min(s["started_at"] for s in status["steps"]) > surge_end - 1.5
        assert client.audit(workflow_id).ok


def test_counts_of_outstanding_steps_return_to_zero(flow_stack: tuple[Stack, Client]) -> None:
    _, client = flow_stack

    def idle() -> bool:
        active = [w for w in client.list() if w["state"] not in WORKFLOW_FINAL]
        return not active

    wait_until(idle, 60, "every workflow of this module to end")
    store = client.orchestrator.store
    counts = outstanding_counts(store)
    assert counts == {"critical": (0, 0), "default": (0, 0), "bulk": (0, 0)}, counts
    # Not because nothing was counted: this module's steps came and went.
    assert sum(finished_counts(store, list(counts)).values()) > 0
