"""Flow control, measured from the recorded transitions (the audit trail).

    .venv/bin/python ops/bench/flow.py [--runs 3] [--steps 200] [--rate 20] [--burst 5]

On one embedded stack with a default pool of 4 worker processes:

- rate: a parallel stage of ``--steps`` no-op steps behind a shared token bucket; the
  achieved start rate after the burst, as a ratio of the configured rate, and the most
  starts in any one-second window against rate + burst;
- concurrency: sleeping steps behind a semaphore of 3 while the worker is SIGKILLed
  every 2 s (for up to 20 s); the most attempts ever running at once;
- keys: workflows over 3 concurrency keys whose keyed steps arrive in reverse order of
  submission; same-key overlaps and order violations.

Prints medians and min-max over ``--runs``; exits 1 if a limit was ever exceeded.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from config.settings import Settings  # noqa: E402
from config.topology import PriorityClass  # noqa: E402
from orchestrator.client import Client  # noqa: E402
from orchestrator.occupancy import (  # noqa: E402
    Run,
    max_overlap,
    max_starts_per_window,
    overlapping,
    runs,
)
from orchestrator.stack import Stack, WorkerSpec  # noqa: E402

QUICK = {
    "worker_lost_after_s": 3.0,
    "stranded_message_after_s": 2.0,
    "sweep_interval_s": 0.5,
    "recovery_after_s": 1.0,
}
KILLING_FOR_S = 20.0  # then the run settles, and what the kills lost is repaired


def topology(rate: float, burst: int) -> str:
    return f"""
pools:
  critical: {{concurrency: 1}}
  default:  {{concurrency: 4}}
  bulk:     {{concurrency: 1}}
resources:
  api: {{rate: {rate}/s, burst: {burst}}}
  db:  {{concurrency: 3}}
"""


def wait_all(client: Client, ids: list[str], timeout_s: float = 600) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    return [client.wait(i, timeout_s=max(deadline - time.monotonic(), 0.0)) for i in ids]


def trail(client: Client, ids: list[str]) -> list[Run]:
    records: list[dict[str, Any]] = []
    for workflow_id in ids:
        entries, _ = client.orchestrator.store.audit_entries(workflow_id)
        records.extend(json.loads(e) for e in entries)
    return runs(records)


def bench_rate(client: Client, steps: int, rate: float, burst: int) -> dict[str, float]:
    spec = {
        "name": "bench-rate",
        "steps": [
            {"id": f"s{i}", "task": "treadle.noop", "resources": ["api"]} for i in range(steps)
        ],
    }
    workflow_id = client.submit(spec)
    wait_all(client, [workflow_id])
    starts = sorted(r.start for r in trail(client, [workflow_id]))
    # After the burst the bucket gives one token per 1/rate: steps - burst starts over
    # the time from the first to the last start.
    achieved = (len(starts) - burst) / (starts[-1] - starts[0])
    return {
        "rate_ratio": achieved / rate,
        "max_per_window": max_starts_per_window(starts),
        "allowed_per_window": rate + burst,
    }


def bench_concurrency(stack: Stack, client: Client) -> dict[str, float]:
    spec = {
        "name": "bench-db",
        "steps": [
            {
                "id": f"q{i}",
                "task": "treadle.sleep",
                "args": {"seconds": 0.3},
                "resources": ["db"],
                "retry": {"max_attempts": 5, "backoff_s": 0.1},
            }
            for i in range(40)
        ],
    }
    ids = [client.submit(spec) for _ in range(2)]
    stop = threading.Event()
    kills = 0

    def killer() -> None:
        nonlocal kills
        until = time.monotonic() + KILLING_FOR_S
        while not stop.wait(2.0) and time.monotonic() < until:
            stack.restart("default-1")
            kills += 1

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        statuses = wait_all(client, ids)
    finally:
        stop.set()
        thread.join()
    succeeded = sum(s["state"] == "succeeded" for s in statuses)
    return {"max_overlap": max_overlap(trail(client, ids)), "kills": kills, "ok": succeeded}


def bench_keys(client: Client) -> dict[str, float]:
    ids, keys = [], []
    for i in range(12):
        key = "ABC"[i % 3]
        spec = {
            "name": f"bench-key-{i}",
            "params": {"sku": key},
            "steps": [
                {"id": "prep", "task": "treadle.sleep", "args": {"seconds": (11 - i) * 0.05}},
                {
                    "id": "take",
                    "task": "treadle.sleep",
                    "args": {"seconds": 0.1},
                    "after": ["prep"],
                    "concurrency_key": "{params.sku}",
                },
            ],
        }
        ids.append(client.submit(spec))
        keys.append(key)
    wait_all(client, ids)
    taken = {r.workflow_id: r for r in trail(client, ids) if r.step_id == "take"}
    overlaps = order_violations = 0
    for key in "ABC":
        same = [taken[w] for w, k in zip(ids, keys, strict=True) if k == key]
        overlaps += sum(overlapping(a, b) for i, a in enumerate(same) for b in same[i + 1 :])
        order_violations += sum(a.start > b.start for a, b in itertools.pairwise(same))
    return {"overlaps": overlaps, "order_violations": order_violations}


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="treadle-bench-flow-"))
    (home / "topology.yaml").write_text(topology(args.rate, args.burst))
    settings = Settings(
        home=home,
        topology=home / "topology.yaml",
        **QUICK,  # type: ignore[arg-type]
    )
    workers = [WorkerSpec(k, 1, c) for k, c in zip(PriorityClass, (1, 4, 1), strict=True)]
    env = {f"TREADLE_{k.upper()}": str(v) for k, v in QUICK.items()}
    results: dict[str, list[dict[str, float]]] = {"rate": [], "concurrency": [], "keys": []}
    with (
        Stack(settings, workers=workers, extra_env=env) as stack,
        Client.connect(settings, stack.redis_url) as client,
    ):
        for _ in range(args.runs):
            results["rate"].append(bench_rate(client, args.steps, args.rate, args.burst))
            results["concurrency"].append(bench_concurrency(stack, client))
            results["keys"].append(bench_keys(client))
    rate = results["rate"]
    print(f"rate {args.rate}/s burst {args.burst}, 4 worker processes, {args.runs} runs:")
    print(f"  achieved / configured: {summary([r['rate_ratio'] for r in rate])}")
    print(
        f"  most starts in a 1 s window: {summary([r['max_per_window'] for r in rate])}"
        f" (allowed {args.rate + args.burst:g})"
    )
    conc = results["concurrency"]
    print("concurrency 3 while the worker is SIGKILLed every 2 s:")
    print(f"  most running at once: {summary([r['max_overlap'] for r in conc])}")
    print(f"  kills per run: {summary([r['kills'] for r in conc])}")
    keys = results["keys"]
    print(
        f"concurrency keys: overlaps {sum(r['overlaps'] for r in keys)}, order violations "
        f"{sum(r['order_violations'] for r in keys)}"
    )
    broken = (
        any(r["max_per_window"] > r["allowed_per_window"] for r in rate)
        or any(r["max_overlap"] > 3 or r["ok"] < 2 for r in conc)
        or any(r["overlaps"] or r["order_violations"] for r in keys)
    )
    print("FAIL: a limit was exceeded" if broken else "every limit held")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
