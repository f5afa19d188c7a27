"""The commands that need no Redis: `treadle validate`, `plan` and `schema`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import SAMPLE_MODULES, clean_env, treadle
from workers.samples import workflow_files


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return treadle(*args, env=clean_env(task_modules=SAMPLE_MODULES), timeout_s=60)


def test_validate_accepts_every_sample() -> None:
    result = run("validate", *map(str, workflow_files()))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok ") == len(workflow_files())


def test_plan_shows_counters_critical_path_and_estimates(tmp_path: Path) -> None:
    spec = tmp_path / "n.yaml"
    spec.write_text(
        "name: n\nsteps:\n"
        "  - {id: a, task: treadle.noop}\n  - {id: b, task: treadle.noop}\n"
        "  - {id: c, task: treadle.noop, after: [a, b]}\n"
        "  - {id: d, task: treadle.noop, after: [b]}\n"
    )
    durations = tmp_path / "d.yaml"
    durations.write_text("{a: 2, b: 1, c: 1, d: 5}\n")
    result = run("plan", str(spec), "--durations", str(durations), "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["canvas"] is None and plan["counters"] == ["a", "b", "c", "d"]
    assert plan["critical_path"] == ["b", "d"] and plan["critical_path_s"] == 6.0
    assert plan["estimates"]["sequential_s"] == 9.0
    assert plan["estimates"]["parallel_s"] == 6.0

    human = run("plan", str(spec))
    assert human.returncode == 0
    assert "counters" in human.stdout and "estimated makespan" in human.stdout

    durations.write_text("{zz: 1}\n")
    refused = run("plan", str(spec), "--durations", str(durations))
    assert refused.returncode == 2
    assert "zz: no such step in the workflow" in refused.stderr


def test_schema_is_json_schema_of_specs() -> None:
    result = run("schema")
    schema = json.loads(result.stdout)
    assert {"steps", "stages", "params", "priority"} <= set(schema["properties"])
