"""The outside reference: Dramatiq's no-op throughput against treadle's parallel stage.

Dramatiq's run lasts from just before the first ``send()`` until its queue is empty with
nothing in flight (``broker.join``, polled every 10 ms); treadle's is the parallel stage
of the same round. Both publish and run 2,000 no-ops on the same number of processes.
"""

from __future__ import annotations

import time

from ops.bench.goals import at_least
from ops.bench.rounds import Pair, Round
from ops.bench.scenarios import parallel
from ops.bench.scenarios.base import Scenario

JOIN_POLL_MS = 10
TIMEOUT_MS = 600_000


def run(rnd: Round) -> Pair:
    module = rnd.env.dramatiq
    if module is None:
        raise RuntimeError("the dramatiq scenario needs the environment started with Dramatiq")
    treadle = parallel.measure(rnd)
    tasks = rnd.env.sizes.dramatiq_tasks
    started = time.perf_counter()
    for _ in range(tasks):
        module.noop.send()
    module.broker.join(module.QUEUE, interval=JOIN_POLL_MS, timeout=TIMEOUT_MS)
    seconds = time.perf_counter() - started
    return Pair(
        treadle.steps / treadle.treadle.seconds,
        tasks / seconds,
        {"dramatiq_s": seconds, "treadle_s": treadle.treadle.seconds, "tasks": tasks},
    )


SCENARIO = Scenario(
    name="dramatiq",
    unit="no-ops per s",
    treadle_is="the parallel stage's steps per second (same round)",
    baseline_is="Dramatiq: 2,000 noop.send() until the queue is drained",
    goal=at_least(1.0, ">= Dramatiq's throughput"),
    run=run,
)
