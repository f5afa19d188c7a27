"""Fan-in: a parallel stage joined by one step, against Celery's chord of the same."""

from __future__ import annotations

from ops.bench import celery_side, treadle_side
from ops.bench.goals import at_most
from ops.bench.rounds import Pair, Round
from ops.bench.scenarios.base import Scenario, celery_canvas, treadle_workflow


def run(rnd: Round) -> Pair:
    steps = rnd.env.sizes.fan_in_steps
    treadle, baseline = rnd.in_turn(
        lambda: treadle_workflow(rnd, treadle_side.fan_in_spec(steps)),
        lambda: celery_canvas(rnd, celery_side.run_chord, steps, steps + 1),
    )
    return Pair(
        treadle.seconds,
        baseline.seconds,
        {
            "steps": steps + 1,
            "treadle_commands_per_step": treadle.usage.commands,
            "baseline_commands_per_step": baseline.usage.commands,
        },
    )


SCENARIO = Scenario(
    name="fan_in",
    unit="s per stage + join",
    treadle_is="2,000 parallel treadle.noop steps, then one step after all of them",
    baseline_is="chord(noop.s() x 2,000)(join.s()).get()",
    goal=at_most(0.4, "<= 0.4 of the raw chord"),
    run=run,
)
