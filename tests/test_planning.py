"""`treadle plan`: the walk-or-sprint estimates for one graph. Pure."""

from __future__ import annotations

import pytest

import workers.builtins  # noqa: F401 - registers the treadle.* built-ins
from config.topology import Pool, PriorityClass, Topology
from orchestrator.errors import InvalidInput
from orchestrator.model import Workflow
from orchestrator.planning import check_durations, make_plan
from orchestrator.validate import validate
from workers.registry import REGISTRY

DIAMOND = {
    "name": "diamond",
    "steps": [
        {"id": "a", "task": "treadle.noop"},
        {"id": "b", "task": "treadle.noop", "after": ["a"]},
        {"id": "c", "task": "treadle.noop", "after": ["a"]},
        {"id": "d", "task": "treadle.noop", "after": ["b", "c"]},
    ],
}
DURATIONS = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 1.0}


def workflow() -> Workflow:
    return validate(DIAMOND, REGISTRY)


def pools(concurrency: int) -> Topology:
    return Topology(pools={PriorityClass.default: Pool(concurrency=concurrency)})


def test_the_three_architectures_of_one_graph() -> None:
    plan = make_plan(workflow(), pools(2), DURATIONS)
    assert plan.estimates.sequential_s == 7.0  # the long walk
    assert plan.estimates.parallel_s == 5.0  # a, then c (the longer branch), then d
    assert plan.estimates.configured_s == 5.0  # two workers are enough
    assert plan.critical_path == ["a", "c", "d"]
    assert plan.width == 2


def test_one_worker_walks_even_when_the_graph_could_sprint() -> None:
    plan = make_plan(workflow(), pools(1), DURATIONS)
    assert plan.estimates.configured_s == 7.0
    assert plan.estimates.slots == {"default": 1}


def test_each_step_counts_for_a_second_without_durations() -> None:
    plan = make_plan(workflow(), pools(4))
    assert (plan.estimates.sequential_s, plan.estimates.parallel_s) == (4.0, 3.0)
    assert plan.to_json()["durations"] == "each step 1 s"


def test_steps_of_another_class_use_their_own_pool() -> None:
    spec = {
        "name": "mixed",
        "steps": [
            {"id": "x", "task": "treadle.noop", "priority": "bulk"},
            {"id": "y", "task": "treadle.noop", "priority": "bulk"},
            {"id": "z", "task": "treadle.noop"},
        ],
    }
    topology = Topology(
        pools={PriorityClass.default: Pool(concurrency=4), PriorityClass.bulk: Pool(concurrency=1)}
    )
    plan = make_plan(validate(spec, REGISTRY), topology)
    assert plan.estimates.parallel_s == 1.0
    assert plan.estimates.configured_s == 2.0  # x and y share the one bulk worker


def test_a_durations_file_names_only_known_steps_and_numbers() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_durations({"a": 1, "zz": 2, "b": "slow", "c": -1}, workflow(), "d.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "zz: no such step in the workflow",
        "b: 'slow' is not a number of seconds",
        "c: -1 is not a number of seconds",
    ]
    assert check_durations({"a": 2}, workflow(), "d.yaml") == {"a": 2.0}
