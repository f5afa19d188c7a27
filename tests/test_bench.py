"""`treadle bench`: the runner end to end at tiny sizes, and how results are summarised.

Nothing here asserts on speed: the machine is shared, and the bench reports, not judges.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ops.bench.goals import commands_at_most_plus, growth_below
from ops.bench.report import Report
from ops.bench.rounds import Pair
from ops.bench.runner import UnknownScenario, select
from ops.bench.scenarios import BY_NAME
from tests.conftest import clean_env, treadle

NAMES = {"chain", "parallel", "fan_in", "publish", "makespan", "redis_cmds", "soak_rss", "dramatiq"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_scenarios_are_the_ones_issue_7_names() -> None:
    assert set(BY_NAME) == NAMES


def test_ratios_are_taken_pair_by_pair_then_summarised() -> None:
    # Given three rounds in which the machine slowed both sides down together
    pairs = [Pair(2.0, 1.0), Pair(8.0, 4.0), Pair(3.3, 3.0)]
    # When they are summarised
    result = Report.of([BY_NAME["chain"]], {"chain": pairs}, {}).results[0]
    # Then the ratio is the median of the rounds' ratios, not a ratio of medians
    assert result.ratio.median == pytest.approx(2.0)
    assert result.ratio.low == pytest.approx(1.1) and result.ratio.high == pytest.approx(2.0)
    assert result.treadle.median == 3.3 and result.baseline.median == 3.0
    assert result.treadle.median / result.baseline.median != pytest.approx(result.ratio.median)


def test_a_runs_details_never_shadow_its_values() -> None:
    pair = Pair(2.0, 1.0, {"treadle": {"commands_per_step": 30}})
    row = Report.of([BY_NAME["chain"]], {"chain": [pair]}, {}).to_json()["scenarios"]["chain"]
    assert row["runs"] == [
        {"treadle": 2.0, "baseline": 1.0, "ratio": 2.0, "details": dict(pair.details)}
    ]


def test_goals_in_other_units_become_ratio_bounds() -> None:
    # Celery's 19 commands per step + 4 allowed
    assert commands_at_most_plus(4).ratio_bound(30.0, 19.0) == pytest.approx(23 / 19)
    # treadle may grow 5 %, whatever Celery's own growth was
    goal = growth_below(0.05)
    assert goal.met(1.04 / 1.01, 1.04, 1.01) and not goal.met(1.07 / 1.01, 1.07, 1.01)
    assert BY_NAME["dramatiq"].goal.met(1.2, 600.0, 500.0)  # higher is better
    assert not BY_NAME["dramatiq"].goal.met(0.8, 400.0, 500.0)


def test_unknown_scenarios_are_refused_before_anything_starts() -> None:
    with pytest.raises(UnknownScenario, match="'chains'"):
        select(["chain", "chains"])
    result = treadle("bench", "--only", "chain,chains", env=clean_env(), timeout_s=60)
    assert result.returncode == 2
    assert "--only: unknown scenario 'chains'" in result.stderr


@pytest.mark.e2e
def test_bench_at_tiny_sizes_writes_every_scenario_and_the_plot(tmp_path: Path) -> None:
    # When the whole bench runs once, at tiny sizes, through the real command
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = treadle(
        "bench",
        "--tiny",
        "--quick",
        "--json",
        str(out),
        "--plot",
        str(png),
        env=clean_env(),
        timeout_s=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # Then every scenario is in the JSON, in the shape issue 7 asks for
    scenarios = json.loads(out.read_text())["scenarios"]
    assert set(scenarios) == NAMES
    for name, row in scenarios.items():
        assert {"treadle", "baseline", "ratio", "unit"} <= set(row), name
        assert row["treadle"] > 0 and row["baseline"] > 0, name
        assert len(row["runs"]) == 1, name
        # One run: the ratio is that run's treadle ÷ baseline, for every scenario alike
        assert math.isclose(row["ratio"], row["treadle"] / row["baseline"]), name
        assert row["higher_is_better"] is (name == "dramatiq"), name
        assert isinstance(row["goal"]["met"], bool), name

    # And the ratios mean what they say
    assert scenarios["dramatiq"]["unit"] == "no-ops per s"  # throughput: treadle ÷ Dramatiq
    makespan = scenarios["makespan"]
    assert makespan["treadle"] >= makespan["baseline"]  # nothing beats the critical path
    mix = scenarios["redis_cmds"]["runs"][0]["details"]["mix"]
    assert mix["treadle"]["client_commands_per_step"] > 0

    # And the table was printed, and the plot written
    assert "ratio = treadle / baseline" in result.stdout
    assert png.read_bytes().startswith(PNG_MAGIC)
