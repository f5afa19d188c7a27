"""A bulk flood against critical work, measured from the recorded times.

    .venv/bin/python ops/bench/flood.py [--runs 3] [--probes 40] [--flood-s 20]

On one embedded stack (critical 2, default 2 and bulk 4 worker processes; the bulk class
admits 400 outstanding steps): critical workflows (a short chain) are submitted one at a
time, first on the idle system, then while producers keep the bulk class at its
watermark (refused submissions retry when told to, as a client should). Per run:

- critical p50/p99 submit-to-finish latency, idle and under the flood, and their ratio
  (goal: p99 under the flood within 1.5x of idle);
- the longest any bulk step waited between entering its queue and starting (aging moves a
  bulk step up after ``max_wait_s``, which bounds it);
- refusals, and whether any refused submission left anything behind (every workflow in
  the store must be one whose id a submission returned);
- parked bulk workflows, and whether every one of them finished: at the end of the flood
  a critical surge goes over its class's watermark, and load shedding parks the bulk
  workflows that have not started.

Prints medians and min-max over ``--runs``; exits 1 if a correctness check failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from config.settings import Settings  # noqa: E402
from config.topology import PriorityClass  # noqa: E402
from orchestrator.client import Client  # noqa: E402
from orchestrator.errors import Refused  # noqa: E402
from orchestrator.stack import Stack, WorkerSpec  # noqa: E402
from orchestrator.states import WORKFLOW_FINAL  # noqa: E402
from orchestrator.store import text  # noqa: E402

BULK_HIGH = 400
CRITICAL_HIGH = 50  # the probes stay far below it; the surge goes over it
BULK_MAX_WAIT_S = 20
TOPOLOGY = f"""
pools:
  critical: {{concurrency: 2}}
  default:  {{concurrency: 2}}
  bulk:     {{concurrency: 4, max_wait_s: {BULK_MAX_WAIT_S}}}
admission:
  critical: {{high: {CRITICAL_HIGH}}}
  default:  {{high: 10000}}
  bulk:     {{high: {BULK_HIGH}, low: {BULK_HIGH // 2}}}
"""
QUICK = {"sweep_interval_s": 0.5, "recovery_after_s": 2.0}
PROBE_EVERY_S = 0.25
BULK_STEPS = 20
PRODUCERS = 2
REFUSED_BACKOFF_CAP_S = 1.0  # the bench keeps the pressure on; a client may wait longer

CRITICAL = {
    "name": "checkout",
    "priority": "critical",
    "steps": [
        {"id": "reserve", "task": "treadle.sleep", "args": {"seconds": 0.02}},
        {"id": "pay", "task": "treadle.sleep", "args": {"seconds": 0.02}, "after": ["reserve"]},
        {"id": "notify", "task": "treadle.noop", "after": ["pay"]},
    ],
}
# Over the critical watermark: load shedding parks the flood's unstarted bulk workflows.
SURGE = {
    "name": "surge",
    "priority": "critical",
    "steps": [
        {"id": f"s{i}", "task": "treadle.sleep", "args": {"seconds": 0.05}} for i in range(20)
    ],
}
BULK = {
    "name": "bulk-import",
    "priority": "bulk",
    "steps": [
        {"id": f"row{i}", "task": "treadle.sleep", "args": {"seconds": 0.05}}
        for i in range(BULK_STEPS)
    ],
}


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def latency_s(status: dict[str, Any]) -> float:
    return float(status["finished_at"]) - float(status["submitted_at"])


def probe(client: Client, count: int) -> list[float]:
    """Submit ``count`` critical workflows, one every PROBE_EVERY_S; their latencies."""
    ids = []
    for _ in range(count):
        ids.append(client.submit(CRITICAL))
        time.sleep(PROBE_EVERY_S)
    statuses = [client.wait(i, timeout_s=120) for i in ids]
    assert all(s["state"] == "succeeded" for s in statuses), "a critical probe failed"
    return [latency_s(s) for s in statuses]


def produce(settings: Settings, redis_url: str, stop_key: str, admitted_key: str) -> None:
    """A producer process: submit bulk work as fast as the class admits it, retrying
    refusals as told, until ``stop_key`` exists. Admitted ids go to ``admitted_key``,
    refusals are counted under ``admitted_key:refused``."""
    with Client.connect(settings, redis_url) as client:
        r = client.orchestrator.store.redis
        while not r.exists(stop_key):
            try:
                workflow_id = client.submit(BULK)
            except Refused as refused:
                r.incr(f"{admitted_key}:refused")
                time.sleep(min(refused.retry_after_s, REFUSED_BACKOFF_CAP_S))
                continue
            r.rpush(admitted_key, workflow_id)


@dataclass
class Flood:
    """Producers in processes of their own, as other clients would be: in this one they
    would hold the GIL while the critical probes submit."""

    settings: Settings
    redis_url: str
    redis: Any
    processes: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key = f"bench:flood:{time.monotonic_ns()}"

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        args = (self.settings, self.redis_url, f"{self.key}:stop", self.key)
        self.processes = [context.Process(target=produce, args=args) for _ in range(PRODUCERS)]
        for process in self.processes:
            process.start()

    def stop(self) -> None:
        self.redis.set(f"{self.key}:stop", 1)
        for process in self.processes:
            process.join()

    @property
    def admitted(self) -> list[str]:
        return [text(i) for i in self.redis.lrange(self.key, 0, -1)]

    @property
    def refused(self) -> int:
        return int(self.redis.get(f"{self.key}:refused") or 0)


@contextmanager
def flooding(settings: Settings, redis_url: str, client: Client) -> Iterator[Flood]:
    flood = Flood(settings, redis_url, client.orchestrator.store.redis)
    flood.start()
    try:
        yield flood
    finally:
        flood.stop()


def wait_for_saturation(client: Client, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        load = client.orchestrator.admission.loads()["bulk"]
        if load.outstanding + load.parked >= BULK_HIGH * 0.9:
            return
        time.sleep(0.2)
    raise TimeoutError("the flood never brought the bulk class to its watermark")


def was_parked(client: Client, workflow_id: str) -> bool:
    entries, _ = client.orchestrator.store.audit_entries(workflow_id)
    return any(json.loads(e).get("to") == "parked" for e in entries)


def run_once(
    client: Client, settings: Settings, redis_url: str, probes: int, flood_s: float
) -> dict[str, float]:
    before = {w["id"] for w in client.list(limit=100_000)}
    idle = probe(client, probes)
    with flooding(settings, redis_url, client) as flood:
        wait_for_saturation(client)
        flooded = probe(client, probes)
        time.sleep(max(flood_s - probes * PROBE_EVERY_S, 0.0))
        surge = [client.submit(SURGE) for _ in range(3)]
        for workflow_id in surge:
            client.wait(workflow_id, timeout_s=300)
    statuses = [client.wait(i, timeout_s=900) for i in flood.admitted]
    bulk_waits = [
        float(s["started_at"]) - float(s["queued_at"])
        for status in statuses
        for s in status["steps"]
        if s.get("started_at") and s.get("queued_at")
    ]
    stored = {w["id"] for w in client.list(limit=100_000)} - before
    ours = (CRITICAL["name"], SURGE["name"])
    critical_ids = {w["id"] for w in client.list(limit=100_000) if w["name"] in ours}
    strays = stored - set(flood.admitted) - critical_ids
    parked = [s for s in statuses if was_parked(client, s["id"])]
    return {
        "idle_p50": statistics.median(idle),
        "idle_p99": percentile(idle, 99),
        "flood_p50": statistics.median(flooded),
        "flood_p99": percentile(flooded, 99),
        "p99_ratio": percentile(flooded, 99) / percentile(idle, 99),
        "bulk_workflows": len(flood.admitted),
        "bulk_max_wait_s": max(bulk_waits),
        "bulk_p99_wait_s": percentile(bulk_waits, 99),
        "refused": flood.refused,
        "half_enqueued": len(strays),
        "parked": len(parked),
        "parked_unfinished": sum(s["state"] != "succeeded" for s in parked),
        "bulk_failed": sum(s["state"] != "succeeded" for s in statuses),
        "unfinished": sum(s["state"] not in WORKFLOW_FINAL for s in statuses),
    }


def summary(values: list[float], unit: str = "") -> str:
    return (
        f"median {statistics.median(values):.3f}{unit} "
        f"(min {min(values):.3f}, max {max(values):.3f})"
    )


def report(results: list[dict[str, float]]) -> bool:
    def column(name: str) -> list[float]:
        return [r[name] for r in results]

    print(f"bulk flood vs critical work, {len(results)} runs:")
    print(f"  critical p50 idle:  {summary(column('idle_p50'), ' s')}")
    print(f"  critical p99 idle:  {summary(column('idle_p99'), ' s')}")
    print(f"  critical p50 flood: {summary(column('flood_p50'), ' s')}")
    print(f"  critical p99 flood: {summary(column('flood_p99'), ' s')}")
    print(f"  p99 flood / idle:   {summary(column('p99_ratio'))} (goal <= 1.5)")
    print(f"  bulk workflows admitted per run: {summary(column('bulk_workflows'))}")
    print(
        f"  longest bulk step wait: {summary(column('bulk_max_wait_s'), ' s')} "
        f"(p99 {summary(column('bulk_p99_wait_s'), ' s')}; aging after {BULK_MAX_WAIT_S} s)"
    )
    print(f"  refused submissions: {summary(column('refused'))}")
    print(f"  parked bulk workflows: {summary(column('parked'))}")
    broken = {
        "refused submissions left workflows behind": sum(column("half_enqueued")),
        "parked workflows did not succeed": sum(column("parked_unfinished")),
        "bulk workflows failed": sum(column("bulk_failed")),
        "bulk workflows never ended": sum(column("unfinished")),
    }
    problems = [f"{what}: {n:g}" for what, n in broken.items() if n]
    print(
        "FAIL: " + "; ".join(problems)
        if problems
        else "nothing half-enqueued, every workflow finished"
    )
    return not problems


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--probes", type=int, default=40, help="critical workflows per phase")
    parser.add_argument("--flood-s", type=float, default=20.0, help="how long the flood lasts")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="treadle-bench-flood-"))
    (home / "topology.yaml").write_text(TOPOLOGY)
    settings = Settings(home=home, topology=home / "topology.yaml", **QUICK)  # type: ignore[arg-type]
    workers = [WorkerSpec(k, 1, c) for k, c in zip(PriorityClass, (2, 2, 4), strict=True)]
    env = {f"TREADLE_{k.upper()}": str(v) for k, v in QUICK.items()}
    with (
        Stack(settings, workers=workers, extra_env=env) as stack,
        Client.connect(settings, stack.redis_url) as client,
    ):
        results = [
            run_once(client, settings, stack.redis_url, args.probes, args.flood_s)
            for _ in range(args.runs)
        ]
    return 0 if report(results) else 1


if __name__ == "__main__":
    sys.exit(main())
