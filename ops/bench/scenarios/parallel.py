"""Throughput: one parallel stage of no-op steps, from publishing to the last step's end.

The same runs give ``redis_cmds`` its counts and ``dramatiq`` treadle's throughput, so a
round makes them once (``Round.shared``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ops.bench import celery_side, treadle_side
from ops.bench.goals import at_most
from ops.bench.rounds import Pair, Round
from ops.bench.scenarios.base import Scenario, SideRun, celery_canvas, treadle_workflow


@dataclass(frozen=True)
class ParallelRuns:
    steps: int
    treadle: SideRun
    baseline: SideRun


def measure(rnd: Round) -> ParallelRuns:
    def both() -> ParallelRuns:
        steps = rnd.env.sizes.parallel_steps
        treadle, baseline = rnd.in_turn(
            lambda: treadle_workflow(rnd, treadle_side.parallel_spec(steps)),
            lambda: celery_canvas(rnd, celery_side.run_group, steps, steps),
        )
        return ParallelRuns(steps, treadle, baseline)

    return rnd.shared("parallel", both)


def run(rnd: Round) -> Pair:
    runs = measure(rnd)
    return Pair(
        runs.treadle.seconds,
        runs.baseline.seconds,
        {
            "steps": runs.steps,
            "treadle_steps_per_s": runs.steps / runs.treadle.seconds,
            "baseline_tasks_per_s": runs.steps / runs.baseline.seconds,
        },
    )


SCENARIO = Scenario(
    name="parallel",
    unit="s per stage",
    treadle_is="a workflow of 2,000 parallel treadle.noop steps",
    baseline_is="group(noop.s() x 2,000).apply_async().get()",
    goal=at_most(1.10, "<= 1.10"),
    run=run,
)
