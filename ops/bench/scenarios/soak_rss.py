"""Worker memory over a soak: 20,000 no-op steps per side, as parallel stages of 2,000.

After each batch (both sides idle) the resident memory of each side's worker tree (the
main process and its pool children, from /proc) is read. The value per side is the
memory after the last batch ÷ the memory after the first one (the warm-up): 1.00 is no
growth. The workers never recycle their children here (see ``environment``).
"""

from __future__ import annotations

from ops.bench import celery_side, treadle_side
from ops.bench.goals import growth_below
from ops.bench.processes import tree_rss_bytes
from ops.bench.rounds import Pair, Round
from ops.bench.scenarios.base import Scenario, celery_canvas, treadle_workflow

MB = 1024 * 1024


def run(rnd: Round) -> Pair:
    env, sizes = rnd.env, rnd.env.sizes
    treadle_mb: list[float] = []
    baseline_mb: list[float] = []
    spec = treadle_side.parallel_spec(sizes.soak_batch)
    for _ in range(sizes.soak_batches):
        rnd.in_turn(
            lambda: treadle_workflow(rnd, spec),
            lambda: celery_canvas(rnd, celery_side.run_group, sizes.soak_batch, sizes.soak_batch),
        )
        treadle_mb.append(tree_rss_bytes(env.treadle_worker_pid()) / MB)
        baseline_mb.append(tree_rss_bytes(env.celery_worker.pid) / MB)
    return Pair(
        treadle_mb[-1] / treadle_mb[0],
        baseline_mb[-1] / baseline_mb[0],
        {
            "steps": sizes.soak_batch * sizes.soak_batches,
            "treadle_growth_pct": (treadle_mb[-1] / treadle_mb[0] - 1) * 100,
            "baseline_growth_pct": (baseline_mb[-1] / baseline_mb[0] - 1) * 100,
            "treadle_mb": [round(m, 1) for m in treadle_mb],
            "baseline_mb": [round(m, 1) for m in baseline_mb],
        },
    )


SCENARIO = Scenario(
    name="soak_rss",
    unit="RSS end / after warm-up",
    treadle_is="treadle worker tree after 20,000 steps / after the first 2,000",
    baseline_is="celery worker tree, the same",
    goal=growth_below(0.05),
    run=run,
)
