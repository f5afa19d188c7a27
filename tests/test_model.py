"""The spec model: both forms normalise to one DAG; steps and retry policies. Pure logic."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from config.topology import PriorityClass
from orchestrator.model import (
    ParallelBlock,
    RetryPolicy,
    SequentialBlock,
    StageStep,
    Step,
    Workflow,
    WorkflowSpec,
    normalise,
)
from tests.strategies import FAST, Tree, compose, leaves, stage_spec, trees


def step(name: str, **extra: Any) -> dict[str, Any]:
    return {"id": name, "task": "treadle.noop", **extra}


def from_spec(raw: dict[str, Any]) -> Workflow:
    return normalise(WorkflowSpec.model_validate(raw))


def edges(workflow: Workflow) -> dict[str, tuple[str, ...]]:
    return {s.id: s.after for s in workflow.steps}


def as_sets(after: dict[str, tuple[str, ...]]) -> dict[str, set[str]]:
    return {node: set(deps) for node, deps in after.items()}


# ---------------------------------------------------------------------------------------
# Stage form


def test_top_level_stages_are_sequential() -> None:
    workflow = from_spec({"name": "w", "stages": [step("a"), step("b"), step("c")]})
    assert edges(workflow) == {"a": (), "b": ("a",), "c": ("b",)}


def test_sequential_inside_parallel_inside_sequential() -> None:
    workflow = from_spec(
        {
            "name": "w",
            "stages": [
                step("a"),
                {"parallel": [{"sequential": [step("b"), step("c")]}, step("d")]},
                step("e"),
            ],
        }
    )
    assert edges(workflow) == {"a": (), "b": ("a",), "c": ("b",), "d": ("a",), "e": ("c", "d")}
    assert [s.where for s in workflow.steps] == [
        "stages[0]",
        "stages[1].parallel[0].sequential[0]",
        "stages[1].parallel[0].sequential[1]",
        "stages[1].parallel[1]",
        "stages[2]",
    ]


def test_parallel_blocks_back_to_back_join_completely() -> None:
    workflow = from_spec(
        {
            "name": "w",
            "stages": [
                {"parallel": [step("a"), step("b")]},
                {"parallel": [step("c"), {"sequential": [step("d"), step("e")]}]},
            ],
        }
    )
    assert edges(workflow) == {
        "a": (),
        "b": (),
        "c": ("a", "b"),
        "d": ("a", "b"),
        "e": ("d",),
    }


def test_parallel_inside_parallel_flattens() -> None:
    workflow = from_spec(
        {
            "name": "w",
            "stages": [
                step("first"),
                {"parallel": [step("a"), {"parallel": [step("b"), step("c")]}]},
                step("last"),
            ],
        }
    )
    assert edges(workflow)["last"] == ("a", "b", "c")
    assert edges(workflow)["c"] == ("first",)


def test_a_sequential_block_ends_with_its_last_item() -> None:
    workflow = from_spec(
        {
            "name": "w",
            "stages": [
                {"sequential": [step("a"), {"parallel": [step("b"), step("c")]}]},
                step("d"),
            ],
        }
    )
    assert edges(workflow) == {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}


@FAST
@given(trees())
def test_stage_form_is_the_hand_composed_dag(tree: Tree) -> None:
    workflow = from_spec(stage_spec(tree))
    expected = compose(tree).after
    assert [s.id for s in workflow.steps] == list(leaves(tree))
    assert as_sets(edges(workflow)) == as_sets(expected)
    for s in workflow.steps:
        assert len(s.after) == len(set(s.after))
        assert s.where.startswith("stages[")


@FAST
@given(trees())
def test_steps_form_of_the_same_graph_normalises_the_same(tree: Tree) -> None:
    after = compose(tree).after
    steps = [step(node, after=list(deps)) for node, deps in after.items()]
    stage_form = from_spec(stage_spec(tree))
    steps_form = from_spec({"name": "stages", "steps": steps})
    assert as_sets(edges(steps_form)) == as_sets(edges(stage_form))
    assert [s.where for s in steps_form.steps] == [f"steps[{i}]" for i in range(len(steps))]


def test_stage_items_are_parsed_as_the_kind_they_name() -> None:
    spec = WorkflowSpec.model_validate(
        {"name": "w", "stages": [{"sequential": [step("a")]}, {"parallel": [step("b")]}, step("c")]}
    )
    assert spec.stages is not None
    assert [type(item) for item in spec.stages] == [SequentialBlock, ParallelBlock, StageStep]


def test_stage_models_can_be_built_directly() -> None:
    spec = WorkflowSpec(
        name="w",
        stages=[
            SequentialBlock(sequential=[StageStep(id="a", task="t.a")]),
            StageStep(id="b", task="t.b"),
        ],
    )
    assert edges(normalise(spec)) == {"a": (), "b": ("a",)}


def test_a_mistake_in_a_stage_step_is_reported_once_where_it_is() -> None:
    with pytest.raises(ValidationError) as caught:
        WorkflowSpec.model_validate(
            {"name": "w", "stages": [{"parallel": [step("a"), step("b", after=["a"])]}]}
        )
    errors = caught.value.errors()
    assert len(errors) == 1
    assert errors[0]["type"] == "extra_forbidden"
    assert errors[0]["loc"][-1] == "after"


def test_a_stage_step_has_no_after() -> None:
    with pytest.raises(ValidationError):
        WorkflowSpec.model_validate({"name": "w", "stages": [step("a", after=[])]})


# ---------------------------------------------------------------------------------------
# Steps form


def test_duplicate_after_entries_collapse() -> None:
    workflow = from_spec(
        {
            "name": "w",
            "steps": [step("a"), step("b"), step("c", after=["a", "b", "a", "b", "a"])],
        }
    )
    assert workflow.step("c").after == ("a", "b")
    assert list(workflow.edges()) == [("a", "c"), ("b", "c")]


def test_after_may_name_a_step_declared_later() -> None:
    workflow = from_spec({"name": "w", "steps": [step("b", after=["a"]), step("a")]})
    assert edges(workflow) == {"b": ("a",), "a": ()}


def test_workflow_fields_carry_over() -> None:
    workflow = from_spec(
        {
            "name": "w",
            "priority": "critical",
            "tenant": "t1",
            "idempotency_key": "k",
            "params": {"x": [1, 2]},
            "steps": [step("a", priority="bulk"), step("b")],
        }
    )
    assert workflow.priority is PriorityClass.critical
    assert (workflow.tenant, workflow.idempotency_key) == ("t1", "k")
    assert workflow.params == {"x": [1, 2]}
    assert workflow.on_failure == "stop"
    assert workflow.step_priority(workflow.step("a")) is PriorityClass.bulk
    assert workflow.step_priority(workflow.step("b")) is PriorityClass.critical


# ---------------------------------------------------------------------------------------
# Step JSON


def test_step_json_round_trip_with_every_field() -> None:
    original = Step(
        id="pay",
        task="shop.authorize_payment",
        where="steps[1]",
        args={"amount": 12.5, "card": {"last4": "4242"}},
        after=("reserve", "quote"),
        compensate="shop.refund",
        retry=RetryPolicy(
            max_attempts=5, backoff_s=0.5, backoff_max_s=8, jitter=False, retry_on=["OSError"]
        ),
        timeout_s=30.0,
        resources=("payments", "inventory-db"),
        priority=PriorityClass.critical,
        when="params.express",
        trigger="all_done",
    )
    data = original.to_json()
    assert data["priority"] == "critical"
    assert data["retry"] == {
        "max_attempts": 5,
        "backoff_s": 0.5,
        "backoff_max_s": 8.0,
        "jitter": False,
        "retry_on": ["OSError"],
    }
    assert Step.from_json(data, where="steps[1]") == original


def test_retry_on_names_classes_by_name_or_dotted_path() -> None:
    policy = RetryPolicy(max_attempts=3, retry_on=["OSError", "builtins.KeyError"])
    assert policy.retries(ConnectionError("reset"))  # a subclass of OSError
    assert policy.retries(KeyError("k"))
    assert not policy.retries(ValueError("v"))
    assert RetryPolicy(max_attempts=3).retries(ValueError("v"))


def test_step_json_round_trip_with_defaults() -> None:
    original = Step(id="a", task="treadle.noop", where="")
    assert Step.from_json(original.to_json()) == original


@FAST
@given(
    st.dictionaries(
        st.text("abc", max_size=3), st.integers() | st.text("xyz", max_size=3), max_size=3
    ),
    st.lists(st.sampled_from(["x", "y", "z"]), unique=True),
    st.none() | st.floats(0.1, 3600),
    st.none() | st.sampled_from(list(PriorityClass)),
)
def test_step_json_round_trip_property(
    args: dict[str, Any],
    after: list[str],
    timeout_s: float | None,
    priority: PriorityClass | None,
) -> None:
    original = Step(
        id="s",
        task="t.s",
        where="steps[0]",
        args=args,
        after=tuple(after),
        timeout_s=timeout_s,
        priority=priority,
    )
    assert Step.from_json(original.to_json(), where="steps[0]") == original


# ---------------------------------------------------------------------------------------
# Retry policy


def test_retry_delay_doubles_then_stays_at_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_s=1, backoff_max_s=10, jitter=False)
    assert [policy.delay_s(a, 0.5) for a in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_retry_delay_before_the_first_retry_is_the_base() -> None:
    policy = RetryPolicy(backoff_s=3, backoff_max_s=100, jitter=False)
    assert policy.delay_s(0, 0.9) == 3
    assert policy.delay_s(1, 0.9) == 3


def test_retry_delay_with_jitter_scales_the_ceiling() -> None:
    policy = RetryPolicy(backoff_s=2, backoff_max_s=60, jitter=True)
    assert policy.delay_s(3, 0.0) == 0.0
    assert policy.delay_s(3, 0.25) == 2.0
    assert policy.delay_s(10, 0.5) == 30.0


@FAST
@given(
    st.floats(0, 100),
    st.floats(0, 1000),
    st.integers(0, 100),
    st.floats(0, 1, exclude_max=True),
    st.booleans(),
)
def test_retry_delay_stays_within_zero_and_the_cap(
    base: float, extra: float, attempt: int, fraction: float, jitter: bool
) -> None:
    policy = RetryPolicy(backoff_s=base, backoff_max_s=base + extra, jitter=jitter)
    delay = policy.delay_s(attempt, fraction)
    ceiling = min(policy.backoff_max_s, base * 2 ** max(attempt - 1, 0))
    assert 0 <= delay <= policy.backoff_max_s
    assert delay == (ceiling * fraction if jitter else ceiling)


def test_retry_max_below_base_is_refused() -> None:
    with pytest.raises(ValidationError, match="backoff_max_s must not be smaller than backoff_s"):
        RetryPolicy(backoff_s=10, backoff_max_s=5)


@pytest.mark.parametrize(
    "fields",
    [{"max_attempts": 0}, {"max_attempts": 101}, {"backoff_s": -1}, {"retries": 3}],
)
def test_retry_policy_bounds(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RetryPolicy.model_validate(fields)


def test_retry_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.backoff_s, policy.backoff_max_s, policy.jitter) == (
        1,
        1.0,
        60.0,
        True,
    )
