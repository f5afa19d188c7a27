"""Bad input: every kind of mistake is reported with where it is and what is wrong, all of
them at once. Uses the real task catalog with the built-in ``treadle.*`` tasks. Pure logic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

import workers.builtins  # noqa: F401 - registers the treadle.* built-ins
from orchestrator.errors import InvalidInput, Problem
from orchestrator.model import Workflow
from orchestrator.validate import Limits, load_spec_file, load_spec_text, validate
from tests.strategies import FAST, Tree, compose, stage_spec, trees
from workers.registry import REGISTRY

RESOURCES = ("inventory-db", "payments")
DEFAULT_LIMITS = Limits()


def step(name: str, task: str = "treadle.noop", **extra: Any) -> dict[str, Any]:
    return {"id": name, "task": task, **extra}


def steps_spec(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "w", **fields, "steps": list(steps)}


def check(raw: Any, limits: Limits = DEFAULT_LIMITS, source: str | None = None) -> Workflow:
    return validate(raw, REGISTRY, limits=limits, resources=RESOURCES, source=source)


def problems(raw: Any, limits: Limits = DEFAULT_LIMITS) -> list[Problem]:
    with pytest.raises(InvalidInput) as caught:
        check(raw, limits)
    assert caught.value.exit_code == 2
    return caught.value.problems


def messages(raw: Any, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    return [str(p) for p in problems(raw, limits)]


def only(raw: Any, limits: Limits = DEFAULT_LIMITS) -> Problem:
    found = problems(raw, limits)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------------------
# Valid specs


def test_valid_steps_form() -> None:
    workflow = check(
        steps_spec(
            step("reserve", "treadle.echo", args={"value": "A-1"}, resources=["inventory-db"]),
            step("pay", "treadle.sleep", args={"seconds": 0}, after=["reserve"], timeout_s=30),
            step("label", after=["pay"], retry={"max_attempts": 3}),
            step("notify", "treadle.fail", args={"times": 0}, after=["pay"]),
            priority="critical",
            params={"order_id": 42},
        )
    )
    assert isinstance(workflow, Workflow)
    assert [s.id for s in workflow.steps] == ["reserve", "pay", "label", "notify"]
    assert workflow.step("notify").after == ("pay",)


def test_valid_stage_form() -> None:
    workflow = check(
        {
            "name": "w",
            "stages": [
                {"sequential": [step("reserve"), step("pay")]},
                {"parallel": [step("label"), step("notify", "treadle.items", args={"n": 3})]},
            ],
        }
    )
    assert {s.id: s.after for s in workflow.steps} == {
        "reserve": (),
        "pay": ("reserve",),
        "label": ("pay",),
        "notify": ("pay",),
    }


@FAST
@given(trees())
def test_any_stage_tree_is_valid(tree: Tree) -> None:
    workflow = check(stage_spec(tree))
    assert {s.id: set(s.after) for s in workflow.steps} == {
        node: set(deps) for node, deps in compose(tree).after.items()
    }


# ---------------------------------------------------------------------------------------
# Graph mistakes


def test_duplicate_ids() -> None:
    assert messages(steps_spec(step("a"), step("a"))) == [
        "steps[1].id: duplicate step id 'a' (first at steps[0])"
    ]


def test_duplicate_ids_in_stage_form() -> None:
    raw = {"name": "w", "stages": [step("a"), {"parallel": [step("b"), step("a")]}]}
    assert messages(raw) == ["stages[1].parallel[1].id: duplicate step id 'a' (first at stages[0])"]


def test_unknown_after() -> None:
    raw = steps_spec(
        step("reserve"), step("label"), step("notify"), step("ship", after=["reserve", "pay"])
    )
    assert messages(raw) == ["steps[3].after: unknown step 'pay'"]


def test_unknown_after_with_a_hint() -> None:
    raw = steps_spec(step("reserve"), step("pay", after=["reserv"]))
    assert messages(raw) == ["steps[1].after: unknown step 'reserv' (did you mean 'reserve'?)"]


def test_cycle() -> None:
    raw = steps_spec(step("a", after=["c"]), step("b", after=["a"]), step("c", after=["b"]))
    assert messages(raw) == ["cycle: a -> b -> c -> a"]


def test_self_dependency() -> None:
    assert messages(steps_spec(step("a"), step("b", after=["a", "b"]))) == [
        "steps[1].after: step 'b' depends on itself"
    ]


# ---------------------------------------------------------------------------------------
# Tasks and their arguments


def test_unknown_task_with_a_hint() -> None:
    problem = only(steps_spec(step("a", "treadle.slep")))
    assert problem.where == "steps[0].task"
    assert problem.what == "unknown task 'treadle.slep' (did you mean 'treadle.sleep'?)"


def test_unknown_compensation_task() -> None:
    problem = only(steps_spec(step("a", compensate="shop.nothing_like_this")))
    assert str(problem) == "steps[0].compensate: unknown task 'shop.nothing_like_this'"


def test_task_name_of_the_wrong_shape() -> None:
    problem = only(steps_spec(step("a", "not a task")))
    assert problem.where == "steps[0].task"
    assert "pattern" in problem.what


def test_missing_argument() -> None:
    assert messages(steps_spec(step("a", "treadle.sleep"))) == [
        "steps[0].args.seconds: missing required argument"
    ]


def test_unexpected_argument() -> None:
    assert messages(steps_spec(step("a", "treadle.noop", args={"loud": True}))) == [
        "steps[0].args.loud: unexpected argument (not a parameter of the task function)"
    ]


def test_argument_of_the_wrong_type() -> None:
    problem = only(steps_spec(step("a", "treadle.sleep", args={"seconds": "abc"})))
    assert problem.where == "steps[0].args.seconds"
    assert "number" in problem.what


def test_argument_problems_in_stage_form_name_the_stage() -> None:
    raw = {
        "name": "w",
        "stages": [{"parallel": [step("a"), step("b", "treadle.items", args={"n": "many"})]}],
    }
    assert only(raw).where == "stages[0].parallel[1].args.n"


def test_context_parameter_is_not_an_argument() -> None:
    assert messages(steps_spec(step("a", "treadle.fail", args={"ctx": {}}))) == [
        "steps[0].args.ctx: unexpected argument (not a parameter of the task function)"
    ]


def test_a_bare_yaml_date_stays_a_string() -> None:
    # Plain YAML would make 2024-01-01 a date, which JSON cannot carry.
    raw = load_spec_text(
        "name: w\nsteps:\n  - {id: a, task: treadle.echo, args: {value: 2024-01-01}}\n", "w.yaml"
    )
    assert raw["steps"][0]["args"]["value"] == "2024-01-01"
    assert validate(raw, REGISTRY).steps[0].args == {"value": "2024-01-01"}


def test_args_that_are_not_json() -> None:
    raw = {"name": "w", "steps": [{"id": "a", "task": "treadle.echo", "args": {"value": {1, 2}}}]}
    assert only(raw).where == "steps[0].args.value"


@pytest.mark.parametrize(
    ("text", "source"),
    [
        ("name: w\nname: v\nsteps: []\n", "w.yaml"),
        ('{"name": "w", "name": "v", "steps": []}', "w.json"),
    ],
)
def test_a_repeated_key_is_refused(text: str, source: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_spec_text(text, source)
    assert "duplicate key 'name'" in str(caught.value)


# ---------------------------------------------------------------------------------------
# Shape of the spec


def test_empty_steps() -> None:
    assert messages(steps_spec()) == ["steps: the workflow has no steps"]


def test_empty_stages() -> None:
    assert messages({"name": "w", "stages": []}) == [
        "stages: empty block: a block needs at least one step"
    ]


def test_empty_stage_block() -> None:
    raw = {"name": "w", "stages": [{"parallel": []}, {"sequential": [step("a")]}]}
    assert messages(raw) == ["stages[0].parallel: empty block: a block needs at least one step"]


def test_nested_empty_stage_blocks_are_all_reported() -> None:
    raw = {
        "name": "w",
        "stages": [step("a"), {"sequential": [{"parallel": []}, {"sequential": []}]}],
    }
    assert [p.where for p in problems(raw)] == [
        "stages[1].sequential[0].parallel",
        "stages[1].sequential[1].sequential",
    ]


def test_after_in_stage_form() -> None:
    raw = {"name": "w", "stages": [step("a"), {"parallel": [step("b", after=["a"])]}]}
    assert messages(raw) == ["stages[1].parallel[0].after: unknown field"]


def test_mistake_deep_in_stages_is_reported_once() -> None:
    raw = {
        "name": "w",
        "stages": [{"sequential": [step("a"), {"parallel": [step("b", timeout_s=0)]}]}],
    }
    problem = only(raw)
    assert problem.where == "stages[0].sequential[1].parallel[0].timeout_s"


def test_stage_item_that_is_not_a_mapping() -> None:
    assert only({"name": "w", "stages": ["a"]}).where == "stages[0]"


def test_unknown_top_level_field() -> None:
    assert messages(steps_spec(step("a"), colour="blue")) == ["colour: unknown field"]


def test_unknown_step_field() -> None:
    assert messages(steps_spec(step("a", retries=3))) == ["steps[0].retries: unknown field"]


def test_both_steps_and_stages() -> None:
    problem = only({"name": "w", "steps": [step("a")], "stages": [step("b")]})
    assert "give either 'steps' or 'stages', not both" in problem.what


def test_neither_steps_nor_stages() -> None:
    problem = only({"name": "w"})
    assert "a workflow needs 'steps' or 'stages'" in problem.what


def test_missing_name() -> None:
    assert messages({"steps": [step("a")]}) == ["name: Field required"]


def test_unknown_priority() -> None:
    assert only(steps_spec(step("a"), priority="urgent")).where == "priority"
    assert only(steps_spec(step("a", priority="urgent"))).where == "steps[0].priority"


def test_bad_step_id() -> None:
    assert only(steps_spec(step("no spaces"))).where == "steps[0].id"


def test_bad_retry_policy() -> None:
    problem = only(steps_spec(step("a", retry={"backoff_s": 10, "backoff_max_s": 1})))
    assert problem.where == "steps[0].retry"
    assert "backoff_max_s must not be smaller than backoff_s" in problem.what


def test_on_failure_takes_stop_or_compensate() -> None:
    assert validate(steps_spec(step("a"), on_failure="compensate"), REGISTRY).on_failure == (
        "compensate"
    )
    problem = only(steps_spec(step("a"), on_failure="undo"))
    assert problem.where == "on_failure"


def test_spec_that_is_not_a_mapping() -> None:
    assert messages(["a", "b"]) == ["a workflow spec must be a mapping (object)"]
    assert messages(None) == ["a workflow spec must be a mapping (object)"]


# ---------------------------------------------------------------------------------------
# Limits and resources


def test_too_many_steps() -> None:
    raw = steps_spec(*(step(f"s{i}") for i in range(4)))
    assert messages(raw, Limits(max_steps=3)) == ["steps: 4 steps; at most 3"]
    assert isinstance(check(raw, Limits(max_steps=4)), Workflow)


def test_params_too_large() -> None:
    raw = steps_spec(step("a"), params={"blob": "x" * 200})
    problem = only(raw, Limits(max_params_bytes=100))
    assert problem.where == "params"
    assert problem.what.endswith("bytes of JSON; at most 100")


def test_args_too_large() -> None:
    raw = steps_spec(step("a"), step("b", "treadle.echo", args={"value": "x" * 200}))
    problem = only(raw, Limits(max_args_bytes=100))
    assert problem.where == "steps[1].args"
    assert problem.what.endswith("bytes of JSON; at most 100")


def test_timeout_above_the_limit() -> None:
    raw = steps_spec(step("a", timeout_s=7200))
    problem = only(raw, Limits(max_step_timeout_s=3600))
    assert problem.where == "steps[0].timeout_s"
    assert "7200" in problem.what
    assert isinstance(check(steps_spec(step("a", timeout_s=3600))), Workflow)


def test_unknown_resource() -> None:
    raw = steps_spec(step("a", resources=["payments", "inventory_db"]))
    assert messages(raw) == [
        "steps[0].resources[1]: unknown resource 'inventory_db' (did you mean 'inventory-db'?)"
    ]


# ---------------------------------------------------------------------------------------
# Everything at once


def test_several_problems_are_reported_together() -> None:
    raw = steps_spec(
        step("a", after=["c"]),
        step("b", after=["a"]),
        step("c", after=["b"]),
        step("a"),
        step("d", "treadle.nope"),
        step("e", "treadle.sleep", args={"seconds": "abc"}, after=["ghost"]),
        step("f", compensate="shop.nothing_like_this"),
    )
    found = messages(raw)
    assert "steps[3].id: duplicate step id 'a' (first at steps[0])" in found
    assert "steps[5].after: unknown step 'ghost'" in found
    assert any(m.startswith("steps[4].task: unknown task 'treadle.nope'") for m in found)
    assert any(m.startswith("steps[5].args.seconds: ") for m in found)
    assert "steps[6].compensate: unknown task 'shop.nothing_like_this'" in found
    assert "cycle: a -> b -> c -> a" in found
    assert len(found) == 6


def test_rendered_error_names_the_source() -> None:
    with pytest.raises(InvalidInput) as caught:
        check(steps_spec(step("a"), step("a")), source="order.yaml")
    assert caught.value.render() == (
        "order.yaml: steps[1].id: duplicate step id 'a' (first at steps[0])"
    )


# ---------------------------------------------------------------------------------------
# Reading spec text


def test_invalid_yaml_reports_a_line() -> None:
    text = "name: w\nsteps:\n  - id: a\n    task: treadle.noop\n   after: [b]\n"
    with pytest.raises(InvalidInput) as caught:
        load_spec_text(text, "w.yaml")
    (problem,) = caught.value.problems
    assert problem.where.startswith("line 5 column ")
    assert problem.what.startswith("not valid YAML: ")
    assert caught.value.source == "w.yaml"


def test_invalid_json_reports_a_line() -> None:
    text = '{\n  "name": "w",\n  "steps": [\n    {"id": "a", "task": "treadle.noop",}\n  ]\n}\n'
    with pytest.raises(InvalidInput) as caught:
        load_spec_text(text, "w.json")
    (problem,) = caught.value.problems
    assert problem.where.startswith("line 4 column ")
    assert problem.what.startswith("not valid JSON: ")


def test_broken_json_without_a_json_name_reports_the_json_error() -> None:
    with pytest.raises(InvalidInput) as caught:
        load_spec_text('{"name": "w",\n "steps": [}', "-")
    (problem,) = caught.value.problems
    assert problem.where == "line 2 column 12"
    assert problem.what.startswith("not valid JSON: ")


def test_json_and_yaml_read_alike() -> None:
    as_json = load_spec_text('{"name": "w", "steps": [{"id": "a", "task": "treadle.noop"}]}', "-")
    as_yaml = load_spec_text("name: w\nsteps:\n  - {id: a, task: treadle.noop}\n", "w.yaml")
    assert as_json == as_yaml
    assert isinstance(check(as_json), Workflow)


def test_yaml_in_flow_style_is_yaml() -> None:
    raw = load_spec_text("{name: w, steps: [{id: a, task: treadle.noop}]}\n", "w.yaml")
    assert raw == {"name": "w", "steps": [{"id": "a", "task": "treadle.noop"}]}


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_spec_file(tmp_path / "missing.yaml")
    assert caught.value.problems[0].what.startswith("cannot read: ")
    assert caught.value.source == str(tmp_path / "missing.yaml")


def test_spec_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text('{"name": "w", "steps": [{"id": "a", "task": "treadle.noop"}]}')
    assert isinstance(check(load_spec_file(path)), Workflow)


def test_a_retry_delay_may_be_long_it_waits_in_redis_not_in_a_worker() -> None:
    raw = steps_spec(
        {"id": "a", "task": "treadle.noop", "retry": {"max_attempts": 3, "backoff_max_s": 7200}}
    )
    assert validate(raw, REGISTRY).steps[0].retry is not None
    too_long = steps_spec(
        {"id": "a", "task": "treadle.noop", "retry": {"max_attempts": 3, "backoff_max_s": 1e6}}
    )
    assert [p.where for p in problems(too_long)] == ["steps[0].retry.backoff_max_s"]


# ---------------------------------------------------------------------------------------
# Conditions, fan-out, trigger rules


def test_a_condition_with_bad_syntax_is_located() -> None:
    found = problems(steps_spec({"id": "a", "task": "treadle.noop", "when": "params.x >"}))
    assert [p.where for p in found] == ["steps[0].when"]


def test_a_condition_may_read_only_its_own_dependencies() -> None:
    raw = steps_spec(
        {"id": "a", "task": "treadle.noop"},
        {"id": "b", "task": "treadle.noop"},
        {"id": "c", "task": "treadle.noop", "after": ["a"], "when": "results.b == 1"},
    )
    assert messages(raw) == [
        "steps[2].when: reads results of 'b', which is not a dependency of this step "
        "(add it to after)"
    ]


def test_for_each_names_a_known_step_and_becomes_a_dependency() -> None:
    found = problems(steps_spec({"id": "a", "task": "treadle.echo", "for_each": "nope"}))
    assert [p.where for p in found] == ["steps[0].for_each"]
    workflow = validate(
        steps_spec(
            {"id": "src", "task": "treadle.items", "args": {"n": 3}},
            {"id": "each", "task": "treadle.echo", "for_each": "src"},
        ),
        REGISTRY,
    )
    assert workflow.step("each").after == ("src",)


def test_max_parallel_needs_for_each() -> None:
    found = problems(steps_spec({"id": "a", "task": "treadle.noop", "max_parallel": 2}))
    assert [p.where for p in found] == ["steps[0]"]
    assert "for_each" in found[0].what


def test_unknown_trigger_rule_is_refused() -> None:
    found = problems(steps_spec({"id": "a", "task": "treadle.noop", "trigger": "one_done"}))
    assert [p.where for p in found] == ["steps[0].trigger"]
