"""Per-hop latency: a chain of no-op steps, each started when the one before has ended."""

from __future__ import annotations

from ops.bench import celery_side, treadle_side
from ops.bench.goals import at_most
from ops.bench.rounds import Pair, Round
from ops.bench.scenarios.base import Scenario, celery_canvas, treadle_workflow


def run(rnd: Round) -> Pair:
    steps = rnd.env.sizes.chain_steps
    treadle, baseline = rnd.in_turn(
        lambda: treadle_workflow(rnd, treadle_side.chain_spec(steps)),
        lambda: celery_canvas(rnd, celery_side.run_chain, steps, steps),
    )
    return Pair(
        treadle.seconds / steps * 1000,
        baseline.seconds / steps * 1000,
        {
            "steps": steps,
            "treadle_s": treadle.seconds,
            "baseline_s": baseline.seconds,
            "treadle_commands_per_step": treadle.usage.commands,
            "baseline_commands_per_step": baseline.usage.commands,
        },
    )


SCENARIO = Scenario(
    name="chain",
    unit="ms per hop",
    treadle_is="a 200-step sequential workflow of treadle.noop",
    baseline_is="chain(noop.si() x 200).apply_async().get()",
    goal=at_most(1.10, "<= 1.10"),
    run=run,
)
