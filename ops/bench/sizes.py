"""How big each scenario is: the sizes issue 7 names, and tiny ones for the test."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    chain_steps: int = 200
    parallel_steps: int = 2_000
    fan_in_steps: int = 2_000  # joined by one more step
    publish_steps: int = 10_000
    dag_nodes: int = 50
    dag_layers: int = 6
    dag_workers: int = 12  # more processes than the DAG is wide: the scheduler is measured
    soak_steps: int = 20_000
    soak_batch: int = 2_000  # the soak runs as parallel stages of this many steps
    dramatiq_tasks: int = 2_000
    processes: int = 2  # worker processes on every side (one per core here)

    @property
    def soak_batches(self) -> int:
        return max(self.soak_steps // self.soak_batch, 2)


FULL = Sizes()

# --quick: one run of every scenario at the sizes, except the soak, whose 20,000
# steps a side take longer than the three minutes --quick has (Celery's side alone takes
# about a minute): 8,000 steps in 10 stages of 800, still a warm-up and nine samples.
QUICK = Sizes(soak_steps=8_000, soak_batch=800)

# For tests/test_bench.py: every scenario, every side, in seconds rather than minutes.
TINY = Sizes(
    chain_steps=5,
    parallel_steps=20,
    fan_in_steps=20,
    publish_steps=50,
    dag_nodes=8,
    dag_layers=3,
    dag_workers=4,
    soak_steps=60,
    soak_batch=20,
    dramatiq_tasks=20,
)
