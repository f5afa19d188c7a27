"""What a scenario is, and the runs that several scenarios make the same way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ops.bench import celery_side, treadle_side
from ops.bench.goals import Goal
from ops.bench.redis_stats import Usage
from ops.bench.rounds import Pair, Round


@dataclass(frozen=True)
class Scenario:
    name: str
    unit: str
    treadle_is: str
    baseline_is: str
    goal: Goal
    run: Callable[[Round], Pair]


@dataclass(frozen=True)
class SideRun:
    seconds: float  # from just before publishing to the recorded end of the last step
    usage: Usage  # Redis commands attributable to the run, per step


def treadle_workflow(rnd: Round, spec: dict[str, Any]) -> SideRun:
    client = rnd.env.client

    def submit_and_wait() -> tuple[treadle_side.Finished, dict[str, int]]:
        finished = treadle_side.run(client, spec)
        return finished, {"hmget": finished.polls}

    counted = rnd.counted(submit_and_wait)
    finished: treadle_side.Finished = counted.value
    treadle_side.forget(client, finished.workflow_id)
    celery_side.forget(rnd.env.treadle_redis)  # the chord counters and results Celery keeps for us
    return SideRun(finished.seconds, counted.usage.per(len(spec["steps"])))


def celery_canvas(
    rnd: Round, run: Callable[[int], tuple[float, list[Any]]], tasks: int, steps: int
) -> SideRun:
    counted = rnd.counted(lambda: (run(tasks), {}))
    started, results = counted.value
    seconds = celery_side.end_of(results) - started
    celery_side.forget(rnd.env.celery_redis)
    return SideRun(seconds, counted.usage.per(steps))
