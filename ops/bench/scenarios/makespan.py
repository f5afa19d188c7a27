"""A random 50-node DAG of sleeping steps: makespan ÷ critical path.

``ops/bench/makespan.py``'s measurement on ``tests/graphs.py``'s layered DAG (a new graph
and new durations each round), run on the bulk pool, which has more processes than the
graph is wide: what is measured is how soon treadle starts each step, not a queue.
There is no Celery side: the "baseline" is the critical path itself.
"""

from __future__ import annotations

import random

from ops.bench import makespan
from ops.bench.goals import makespan_within
from ops.bench.rounds import Pair, Round
from ops.bench.scenarios.base import Scenario
from tests.graphs import layered_dag

POOL = "bulk"


def run(rnd: Round) -> Pair:
    sizes = rnd.env.sizes
    after = layered_dag(
        random.Random(rnd.index + 1), nodes=sizes.dag_nodes, layers=sizes.dag_layers
    )
    name = f"bench-dag-{sizes.dag_nodes}-{rnd.index}"
    result = makespan.measure(rnd.env.client, name, after, seed=rnd.index, priority=POOL)
    return Pair(
        result["makespan_s"],
        result["critical_path_s"],
        {"steps": len(after), "runs_on": result["mechanism"], "within_goal": result["within_goal"]},
    )


SCENARIO = Scenario(
    name="makespan",
    unit="s: makespan vs critical path",
    treadle_is="makespan: submit to the recorded end of the workflow",
    baseline_is="the critical path of the step durations",
    goal=makespan_within(1.05, 0.1),
    run=run,
)
