"""From the pairs measured to what is printed, written as JSON and plotted.

Medians and min-max are per side; the ratio is computed pair by pair (each round's
treadle value ÷ the same round's baseline) and then summarised, so that a slow moment on
the machine moves both sides of a ratio together instead of one side of a median.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.bench.rounds import Pair
from ops.bench.scenarios import Scenario


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def text(self, digits: int) -> str:
        if self.low == self.high:  # one run
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    pairs: tuple[Pair, ...]

    @property
    def treadle(self) -> Spread:
        return Spread.of([p.treadle for p in self.pairs])

    @property
    def baseline(self) -> Spread:
        return Spread.of([p.baseline for p in self.pairs])

    @property
    def ratio(self) -> Spread:
        return Spread.of([p.ratio for p in self.pairs])

    @property
    def goal_ratio(self) -> float:
        return self.scenario.goal.ratio_bound(self.treadle.median, self.baseline.median)

    @property
    def goal_met(self) -> bool:
        return self.scenario.goal.met(self.ratio.median, self.treadle.median, self.baseline.median)

    def to_json(self) -> dict[str, Any]:
        s, t, b, r = self.scenario, self.treadle, self.baseline, self.ratio
        return {
            "treadle": t.median,
            "baseline": b.median,
            "ratio": r.median,
            "unit": s.unit,
            "treadle_min": t.low,
            "treadle_max": t.high,
            "baseline_min": b.low,
            "baseline_max": b.high,
            "ratio_min": r.low,
            "ratio_max": r.high,
            "higher_is_better": s.goal.higher_is_better,
            "goal": {"text": s.goal.text, "ratio": self.goal_ratio, "met": self.goal_met},
            "treadle_is": s.treadle_is,
            "baseline_is": s.baseline_is,
            "runs": [
                {
                    "treadle": p.treadle,
                    "baseline": p.baseline,
                    "ratio": p.ratio,
                    "details": dict(p.details),
                }
                for p in self.pairs
            ],
        }


@dataclass(frozen=True)
class Report:
    results: tuple[Result, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        scenarios: Sequence[Scenario],
        pairs: Mapping[str, Sequence[Pair]],
        meta: Mapping[str, Any],
    ) -> Report:
        return cls(tuple(Result(s, tuple(pairs[s.name])) for s in scenarios if pairs[s.name]), meta)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenarios": {r.scenario.name: r.to_json() for r in self.results},
            "meta": dict(self.meta),
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    def table(self) -> str:
        """Medians (min-max) per side, the ratio, and the goal, one scenario a line."""
        head = f"{'scenario':<11} {'unit':<30} {'treadle':>24} {'baseline':>24} {'ratio':>20}  goal"
        lines = [head, "-" * len(head)]
        for r in self.results:
            digits = 3 if r.baseline.median < 10 else 1
            mark = "met" if r.goal_met else "missed"
            direction = ">=" if r.scenario.goal.higher_is_better else "<="
            lines.append(
                f"{r.scenario.name:<11} {r.scenario.unit:<30} {r.treadle.text(digits):>24} "
                f"{r.baseline.text(digits):>24} {r.ratio.text(3):>20}  "
                f"{direction} {r.goal_ratio:.3f} {mark} ({r.scenario.goal.text})"
            )
        runs = {len(r.pairs) for r in self.results}
        lines.append(
            f"ratio = treadle / baseline, pair by pair ({'/'.join(map(str, sorted(runs)))} "
            "runs); medians with (min-max)"
        )
        return "\n".join(lines)
