"""Issue 7's goals, each as a bound on a scenario's ratio (treadle ÷ baseline).

Most are fixed bounds. Two are stated in the scenario's own units and become ratio bounds
through the measured baseline: Redis commands per step at most Celery's + 4, and memory
growth over the soak under 5 % (a ratio of growth factors, whatever Celery's own growth).
The makespan bound is issue 3's: at most 1.05 x the critical path + 0.1 s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    text: str
    bound: Callable[[float, float], float]  # (treadle median, baseline median) -> ratio bound
    higher_is_better: bool = False

    def ratio_bound(self, treadle: float, baseline: float) -> float:
        return self.bound(treadle, baseline)

    def met(self, ratio: float, treadle: float, baseline: float) -> bool:
        bound = self.bound(treadle, baseline)
        return ratio >= bound if self.higher_is_better else ratio <= bound


def at_most(ratio: float, text: str) -> Goal:
    return Goal(text, lambda _t, _b: ratio)


def at_least(ratio: float, text: str) -> Goal:
    return Goal(text, lambda _t, _b: ratio, higher_is_better=True)


def commands_at_most_plus(extra: float) -> Goal:
    return Goal(f"<= Celery's + {extra:g} per step", lambda _t, b: (b + extra) / b)


def growth_below(fraction: float) -> Goal:
    return Goal(f"treadle grows < {fraction:.0%}", lambda _t, b: (1 + fraction) / b)


def makespan_within(factor: float, slack_s: float) -> Goal:
    return Goal(
        f"<= {factor:g} x critical path + {slack_s:g} s", lambda _t, cp: factor + slack_s / cp
    )
