"""One module per scenario; ``ALL`` in the order a round runs them.

Each module defines ``SCENARIO``: its name (a key of the JSON), its unit, what its
treadle and baseline values are, its goal, and ``run``, which measures one pair.
"""

from __future__ import annotations

from ops.bench.scenarios import (
    chain,
    dramatiq,
    fan_in,
    makespan,
    parallel,
    publish,
    redis_cmds,
    soak_rss,
)
from ops.bench.scenarios.base import Scenario

ALL: tuple[Scenario, ...] = (
    chain.SCENARIO,
    parallel.SCENARIO,
    redis_cmds.SCENARIO,
    dramatiq.SCENARIO,
    fan_in.SCENARIO,
    publish.SCENARIO,
    makespan.SCENARIO,
    soak_rss.SCENARIO,
)
BY_NAME = {s.name: s for s in ALL}

__all__ = ["ALL", "BY_NAME", "Scenario"]
