"""Redis commands per step, end to end, counted over the parallel stage's runs.

``INFO commandstats`` deltas, less the idle background and the bench's own polling.
Commands that Lua scripts run count, as Redis counts them. Beside the total: socket reads
(about one per client round trip), script calls and the server's CPU time per step (the
load the count stands for: a command in a pipeline or a script costs less than one sent
alone); and, in the first round, an
untimed pass under MONITOR that splits the commands into those clients sent and those
scripts ran, with the most frequent of each (each side's database only, so the other
side's idle polling is left out; its own is in).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ops.bench import celery_side, treadle_side
from ops.bench.environment import CELERY_DB, TREADLE_DB
from ops.bench.goals import commands_at_most_plus
from ops.bench.redis_stats import CommandMix, Usage, monitored
from ops.bench.rounds import Pair, Round
from ops.bench.scenarios import parallel
from ops.bench.scenarios.base import Scenario

MIX_STEPS = 200  # enough to average over; MONITOR makes Redis slow
TOP = 6


def run(rnd: Round) -> Pair:
    runs = parallel.measure(rnd)
    details: dict[str, Any] = {
        "steps": runs.steps,
        "treadle_usage": _summary(runs.treadle.usage),
        "baseline_usage": _summary(runs.baseline.usage),
        "idle_commands_per_s": rnd.idle.commands,
    }
    if rnd.index == 0:
        details["mix"] = _mix(rnd, min(MIX_STEPS, runs.steps))
    return Pair(runs.treadle.usage.commands, runs.baseline.usage.commands, details)


def _summary(usage: Usage) -> dict[str, Any]:
    top = sorted(usage.calls.items(), key=lambda kv: -kv[1])[:TOP]
    return {
        "commands_per_step": usage.commands,
        "reads_per_step": usage.reads,
        "script_calls_per_step": usage.script_calls,
        "redis_cpu_us_per_step": round(usage.cpu_s * 1e6, 1),
        "top": {name: round(n, 2) for name, n in top},
    }


def _mix(rnd: Round, steps: int) -> dict[str, Any]:
    """Per step: what clients sent and what scripts ran, for each side (untimed)."""
    with monitored(rnd.env.url, TREADLE_DB) as treadle_mix:
        finished = treadle_side.run(rnd.env.client, treadle_side.parallel_spec(steps))
    treadle_side.forget(rnd.env.client, finished.workflow_id)
    with monitored(rnd.env.url, CELERY_DB) as celery_mix:
        celery_side.run_group(steps)
    celery_side.forget(rnd.env.celery_redis)
    return {
        "steps": steps,
        "treadle": _split(treadle_mix, steps),
        "baseline": _split(celery_mix, steps),
    }


def _split(mix: CommandMix, steps: int) -> dict[str, Any]:
    def top(counter: Counter[str]) -> dict[str, float]:
        return {name: round(n / steps, 2) for name, n in counter.most_common(TOP)}

    return {
        "client_commands_per_step": sum(mix.by_client.values()) / steps,
        "script_commands_per_step": sum(mix.by_script.values()) / steps,
        "client_top": top(mix.by_client),
        "script_top": top(mix.by_script),
    }


SCENARIO = Scenario(
    name="redis_cmds",
    unit="commands per step",
    treadle_is="INFO commandstats delta over the 2,000-step parallel stage, per step",
    baseline_is="the same over group(noop.s() x 2,000) with results, per task",
    goal=commands_at_most_plus(4),
    run=run,
)
