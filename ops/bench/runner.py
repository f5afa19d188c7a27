"""Runs the bench: start everything, warm up, N rounds of the selected scenarios, report.

treadle bench [--quick] [--json PATH] [--plot PATH] [--runs N] [--only NAME,...]
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ops.bench import celery_side, redis_stats, treadle_side
from ops.bench.environment import Environment, started
from ops.bench.report import Report
from ops.bench.rounds import Pair, Round
from ops.bench.scenarios import ALL, BY_NAME, Scenario
from ops.bench.sizes import FULL, Sizes
from orchestrator.metrics import typical_run_s

REPO = Path(__file__).resolve().parents[2]
IDLE_WINDOW_S = 1.0
WARM_UP_STEPS = 20
DEFAULT_RUNS = 3
QUICK_RUNS = 1


class UnknownScenario(ValueError):
    pass


@dataclass(frozen=True)
class Options:
    runs: int = DEFAULT_RUNS
    only: tuple[str, ...] = ()  # empty: every scenario
    sizes: Sizes = FULL
    home: Path | None = None  # where Redis and the logs live (default: a temporary dir)
    progress: Callable[[str], None] = field(default=print, compare=False)


def select(only: Sequence[str]) -> list[Scenario]:
    unknown = [n for n in only if n not in BY_NAME]
    if unknown:
        raise UnknownScenario(
            f"unknown scenario {', '.join(map(repr, unknown))}; choose from {', '.join(BY_NAME)}"
        )
    return [s for s in ALL if not only or s.name in only]


def missing_packages(scenarios: Sequence[Scenario], plot: bool) -> list[str]:
    """The ``bench`` extra's packages this run needs and cannot import."""
    needed = ["psutil"] if any(s.name == "soak_rss" for s in scenarios) else []
    needed += ["dramatiq"] if any(s.name == "dramatiq" for s in scenarios) else []
    needed += ["matplotlib"] if plot else []
    return [name for name in needed if importlib.util.find_spec(name) is None]


def run_bench(options: Options) -> Report:
    scenarios = select(options.only)
    say = options.progress
    began = time.monotonic()
    commit = _commit()  # now: the checkout may change while the bench runs
    pairs: dict[str, list[Pair]] = {s.name: [] for s in scenarios}
    say(f"starting Redis, treadle, Celery{' and Dramatiq' if 'dramatiq' in pairs else ''} ...")
    with started(options.sizes, with_dramatiq="dramatiq" in pairs, home=options.home) as env:
        warm_up(env)
        say(f"ready after {time.monotonic() - began:.0f} s")
        for index in range(options.runs):
            rnd = Round(env, index, redis_stats.idle_rate(env.treadle_redis, IDLE_WINDOW_S))
            for scenario in scenarios:
                at = time.monotonic()
                pair = scenario.run(rnd)
                env.check_alive()
                pairs[scenario.name].append(pair)
                say(
                    f"round {index + 1}/{options.runs} {scenario.name:<10} treadle "
                    f"{pair.treadle:.4g} baseline {pair.baseline:.4g} ratio {pair.ratio:.3f} "
                    f"({time.monotonic() - at:.0f} s)"
                )
        meta = describe(env, options, commit, time.monotonic() - began)
    return Report.of(scenarios, pairs, meta)


def warm_up(env: Environment) -> None:
    """A few steps on every side first: the first run after a start pays for imports,
    connections and caches that no later run does."""
    for spec in (treadle_side.parallel_spec(WARM_UP_STEPS), treadle_side.chain_spec(3)):
        finished = treadle_side.run(env.client, spec)
        treadle_side.forget(env.client, finished.workflow_id)
    celery_side.run_group(WARM_UP_STEPS)
    celery_side.run_chain(3)
    celery_side.forget(env.celery_redis)
    celery_side.forget(env.treadle_redis)
    # The workers report run times once a second; until the no-op's is known, treadle
    # sends each step alone (orchestrator.bundles), which no run after the first does.
    store, deadline = env.client.orchestrator.store, time.monotonic() + 10.0
    while typical_run_s(store, [treadle_side.NOOP])[treadle_side.NOOP] is None:
        if time.monotonic() > deadline:
            break  # measured as it comes: the first round pays for it
        time.sleep(0.1)


def describe(
    env: Environment, options: Options, commit: str | None, elapsed_s: float
) -> dict[str, Any]:
    server = env.treadle_redis.info("server")
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit,
        "runs": options.runs,
        "elapsed_s": round(elapsed_s, 1),
        "sizes": asdict(options.sizes),
        "processes_per_side": options.sizes.processes,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "redis": server.get("redis_version"),
        "redis_appendfsync": env.stack.settings.redis_appendfsync,
        "versions": {p: _version(p) for p in ("celery", "kombu", "redis", "dramatiq")},
    }


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
