"""One round of the bench: every selected scenario once, on both sides.

Sides take turns going first from round to round, so that neither always runs on a
machine the other has just warmed (or loaded). A measurement that several scenarios read
(the parallel stage: its time, its Redis commands, its throughput against Dramatiq's) is
made once per round and shared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ops.bench import redis_stats
from ops.bench.environment import Environment
from ops.bench.redis_stats import Usage

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class Pair:
    """One side-by-side measurement: treadle's value, the baseline's, and notes."""

    treadle: float
    baseline: float
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.treadle / self.baseline


@dataclass(frozen=True)
class Counted:
    """A run's result, and the Redis commands attributable to it."""

    value: Any
    usage: Usage  # less the idle background and the bench's own commands
    raw: Usage  # everything Redis executed meanwhile


@dataclass
class Round:
    env: Environment
    index: int
    idle: Usage  # per second, measured at the start of the round
    _shared: dict[str, Any] = field(default_factory=dict)

    def in_turn(self, treadle: Callable[[], T], baseline: Callable[[], U]) -> tuple[T, U]:
        if self.index % 2 == 0:
            first_t = treadle()
            return first_t, baseline()
        first_b = baseline()
        return treadle(), first_b

    def shared(self, name: str, measure: Callable[[], T]) -> T:
        if name not in self._shared:
            self._shared[name] = measure()
        value: T = self._shared[name]
        return value

    def counted(self, run: Callable[[], tuple[T, Mapping[str, int]]]) -> Counted:
        """Run ``run`` (which returns its result and the commands the bench itself sent)
        between two snapshots of Redis's counters."""
        before = redis_stats.snapshot(self.env.treadle_redis)
        value, own = run()
        raw = redis_stats.between(before, redis_stats.snapshot(self.env.treadle_redis))
        return Counted(value, redis_stats.attributable(raw, self.idle, own), raw)
