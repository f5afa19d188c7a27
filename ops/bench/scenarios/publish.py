"""Publishing: expanding and enqueuing a 10,000-step parallel stage, no worker running.

treadle's time is the whole ``submit``: validation, compiling, storing the workflow and
publishing every step's message, to the ``critical`` queue, which no bench worker
consumes. Celery's is ``group(noop.s() x 10,000).apply_async()`` to a queue no worker
consumes. Afterwards (untimed) the workflow is cancelled and both queues emptied.
"""

from __future__ import annotations

import time
from typing import Any

from config.queues import queue_for
from config.topology import PriorityClass
from ops.bench import celery_side, treadle_side
from ops.bench.goals import at_most
from ops.bench.rounds import Pair, Round
from ops.bench.scenarios.base import Scenario

UNCONSUMED = PriorityClass.critical  # the bench starts no critical worker


def run(rnd: Round) -> Pair:
    steps = rnd.env.sizes.publish_steps
    treadle, baseline = rnd.in_turn(lambda: _treadle(rnd, steps), lambda: _celery(rnd, steps))
    return Pair(
        treadle[0],
        baseline[0],
        {
            "steps": steps,
            "treadle_ms_per_step": treadle[0] / steps * 1000,
            "baseline_ms_per_step": baseline[0] / steps * 1000,
            "treadle_commands_per_step": treadle[1] / steps,
            "baseline_commands_per_step": baseline[1] / steps,
        },
    )


def _treadle(rnd: Round, steps: int) -> tuple[float, float]:
    client = rnd.env.client
    spec = treadle_side.parallel_spec(steps, priority=UNCONSUMED.value)

    def submit() -> tuple[tuple[str, float], dict[str, Any]]:
        started = time.perf_counter()
        workflow_id = client.submit(spec)
        return (workflow_id, time.perf_counter() - started), {}

    counted = rnd.counted(submit)
    workflow_id, seconds = counted.value
    client.cancel(workflow_id)
    treadle_side.forget(client, workflow_id)
    rnd.env.treadle_redis.delete(queue_for(UNCONSUMED))
    return seconds, counted.usage.commands


def _celery(rnd: Round, steps: int) -> tuple[float, float]:
    counted = rnd.counted(lambda: (celery_side.publish_group(steps), {}))
    celery_side.forget(rnd.env.celery_redis)
    return counted.value, counted.usage.commands


SCENARIO = Scenario(
    name="publish",
    unit="s to publish the stage",
    treadle_is="Client.submit of a 10,000-step parallel workflow (nothing consumes it)",
    baseline_is="group(noop.s() x 10,000).apply_async() (nothing consumes it)",
    goal=at_most(0.2, "<= 0.2 of the raw group"),
    run=run,
)
