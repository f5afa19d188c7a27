"""Chaos: many mixed workflows while worker processes are SIGKILLed and restarted.

    .venv/bin/python ops/chaos/run.py [--workflows 300] [--kill-every 2] [--deadline 600]
                                      [--redis-crash-every 0]

With ``--redis-crash-every S`` the embedded Redis (AOF, appendfsync always) is also
SIGKILLed and started again on its data every S seconds.

Passes (exit 0) when every workflow reached a final state, `treadle audit` finds no
violation in any of them (no step started early, none succeeded twice), and the
side-effect ledger shows each succeeded step's effect applied exactly once.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from config.settings import Settings  # noqa: E402
from config.topology import PRIORITY_ORDER  # noqa: E402
from ops.chaos.tasks import CALLS, LEDGER  # noqa: E402
from orchestrator.client import Client  # noqa: E402
from orchestrator.stack import Stack, WorkerSpec  # noqa: E402
from orchestrator.states import WORKFLOW_FINAL  # noqa: E402

RETRY = {"max_attempts": 6, "backoff_s": 0.2, "backoff_max_s": 1.0}


def effect(step_id: str, after: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "task": "chaos.effect",
        "args": {"work_s": 0.1},
        "retry": RETRY,
        "after": after or [],
        **extra,
    }


def workflow(i: int, rng: random.Random) -> dict[str, Any]:
    shape = i % 4
    klass = PRIORITY_ORDER[i % 3].value
    if shape == 0:  # the long walk
        steps = [effect(f"s{j}", [f"s{j - 1}"] if j else []) for j in range(5)]
    elif shape == 1:  # a diamond: chord
        steps = [effect("a"), effect("b", ["a"]), effect("c", ["a"]), effect("d", ["b", "c"])]
    elif shape == 2:  # an N: counters
        steps = [effect("a"), effect("b"), effect("c", ["a", "b"]), effect("d", ["b"])]
    else:  # a fan-out
        steps = [
            {"id": "list", "task": "treadle.items", "args": {"n": rng.randint(2, 6)}},
            effect("each", for_each="list"),
            effect("join", ["each"]),
        ]
    return {"name": f"chaos-{i}", "priority": klass, "steps": steps}


def killer(
    stack: Stack, every_s: float, stop: threading.Event, rng: random.Random, kills: list[str]
) -> None:
    while not stop.wait(every_s * rng.uniform(0.5, 1.5)):
        workers = [
            c
            for c in stack.children
            if c.name.split("-")[0] in ("critical", "default", "bulk") and c.alive()
        ]
        if not workers:
            continue
        victim = rng.choice(workers)
        victim.signal(signal.SIGKILL)  # the whole worker: main process and pool
        kills.append(victim.name)
        stack.restart(victim.name)


def redis_crasher(
    stack: Stack, every_s: float, stop: threading.Event, rng: random.Random, crashes: list[str]
) -> None:
    while not stop.wait(every_s * rng.uniform(0.5, 1.5)):
        stack.restart_redis(crash=True)
        crashes.append("redis")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=300)
    parser.add_argument("--kill-every", type=float, default=2.0)
    parser.add_argument("--deadline", type=float, default=600.0)
    parser.add_argument("--redis-crash-every", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    quick = {
        "sweep_interval_s": 0.5,
        "recovery_after_s": 3.0,
        "worker_lost_after_s": 3.0,
        "stranded_message_after_s": 3.0,
    }
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(
            home=Path(home),
            task_modules="ops.chaos.tasks",
            sweep_interval_s=0.5,
            recovery_after_s=3.0,
            worker_lost_after_s=3.0,
            stranded_message_after_s=3.0,
        )
        env = {f"TREADLE_{k.upper()}": str(v) for k, v in quick.items()}
        workers = [WorkerSpec(k, 1, 2) for k in PRIORITY_ORDER]
        with (
            Stack(settings, workers=workers, extra_env=env) as stack,
            Client.connect(settings, stack.redis_url) as client,
        ):
            stop, kills = threading.Event(), list[str]()
            threads = []
            if args.kill_every > 0:
                threads.append(
                    threading.Thread(
                        target=killer, args=(stack, args.kill_every, stop, rng, kills), daemon=True
                    )
                )
            if args.redis_crash_every > 0:
                threads.append(
                    threading.Thread(
                        target=redis_crasher,
                        args=(stack, args.redis_crash_every, stop, rng, kills),
                        daemon=True,
                    )
                )
            started = time.monotonic()
            for thread in threads:
                thread.start()
            ids = [client.submit(workflow(i, rng)) for i in range(args.workflows)]
            deadline = started + args.deadline
            pending = set(ids)
            while pending and time.monotonic() < deadline:
                pending = {w for w in pending if client.status(w)["state"] not in WORKFLOW_FINAL}
                time.sleep(0.5)
            stop.set()
            for thread in threads:
                thread.join()
            return report(client, stack.redis_url, ids, pending, kills, time.monotonic() - started)


def report(
    client: Client, url: str, ids: list[str], pending: set[str], kills: list[str], took: float
) -> int:
    states: dict[str, int] = {}
    violations, succeeded_keys = [], set()
    for wid in ids:
        status = client.status(wid)
        states[status["state"]] = states.get(status["state"], 0) + 1
        audit = client.audit(wid)
        violations += [f"{wid}: {p}" for p in audit.problems]
        fan_outs = {s["item_of"] for s in status["steps"] if "item_of" in s}
        succeeded_keys |= {  # a fan-out's own result is its join, not a call
            f"{wid}:{s['id']}"
            for s in status["steps"]
            if s["state"] == "succeeded" and s["task"] == "chaos.effect" and s["id"] not in fan_outs
        }
        if wid in pending:
            stuck = [
                (s["id"], s["state"], s["attempts"], s["worker"])
                for s in status["steps"]
                if s["state"] not in ("succeeded", "skipped", "dead-lettered")
            ]
            print(f"not final: {wid} {status['name']} {stuck}")
    with redis.Redis.from_url(url) as r:
        ledger = {k.decode() for k in r.hkeys(LEDGER)}
        calls = r.llen(CALLS)
    missing = succeeded_keys - ledger  # a step recorded as done whose effect never happened
    crashes = kills.count("redis")
    print(
        f"{len(ids)} workflows in {took:.0f} s, {len(kills) - crashes} worker processes "
        f"SIGKILLed, Redis SIGKILLed and restarted {crashes} times"
    )
    print("final states:", states, "| not final:", len(pending))
    print(
        f"effects applied: {len(ledger)} for {len(succeeded_keys)} succeeded steps; "
        f"{calls} calls in all ({calls - len(ledger)} repeated after a kill, absorbed by "
        "the idempotency key)"
    )
    print(f"audit violations: {len(violations)}")
    for line in violations[:20]:
        print("  ", line)
    ok = not pending and not violations and not missing and succeeded_keys <= ledger
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
