"""The DAG compiler: canvases respect every dependency, add none to series-parallel graphs,
and read back (steps, order, first steps, JSON) the way dispatch relies on. Pure logic."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given

from orchestrator.compiler import (
    Chain,
    Chord,
    Compiled,
    Group,
    Node,
    Task,
    compile_graph,
    first_steps,
    from_json,
    happens_before,
    steps_of,
    to_json,
)
from orchestrator.dag import CycleError, Graph
from orchestrator.model import WorkflowSpec, normalise
from tests.strategies import FAST, Dag, dags, series_parallel_dags, shuffled


def compiled(after: Dag) -> Compiled:
    return compile_graph(Graph.from_after(after))


def from_stages(stages: list[Any]) -> Compiled:
    workflow = normalise(WorkflowSpec.model_validate({"name": "w", "stages": stages}))
    return compile_graph(Graph.from_after({s.id: s.after for s in workflow.steps}))


def step(name: str) -> dict[str, str]:
    return {"id": name, "task": "treadle.noop"}


def tasks(*names: str) -> tuple[Task, ...]:
    return tuple(Task(n) for n in names)


def assert_well_formed(node: Node) -> None:
    """The shapes dispatch turns into Celery canvas: no one-item chains or groups, no chain
    in a chain, no group in a group or a chord header, no group before more work in a chain
    (that is a chord)."""
    if isinstance(node, Task):
        return
    if isinstance(node, Chord):
        assert node.header
        for item in node.header:
            assert not isinstance(item, Group)
            assert_well_formed(item)
        assert_well_formed(node.body)
        return
    assert len(node.items) >= 2
    for i, item in enumerate(node.items):
        assert not isinstance(item, type(node)), f"{type(node).__name__} directly inside one"
        if isinstance(node, Chain):
            assert not (isinstance(item, Group) and i < len(node.items) - 1), "group, not chord"
        assert_well_formed(item)


# ---------------------------------------------------------------------------------------
# Properties over random graphs


@FAST
@given(shuffled(dags()))
def test_canvas_respects_every_dependency_and_inverts_none(after: Dag) -> None:
    graph = Graph.from_after(after)
    result = compile_graph(graph)
    order = happens_before(result.canvas)
    closure = graph.closure()
    assert closure <= order, f"dependencies lost: {sorted(closure - order)}"
    inverted = {(a, b) for a, b in order if (b, a) in closure}
    assert not inverted, f"inverted: {sorted(inverted)}"
    assert all(a != b for a, b in order)


@FAST
@given(shuffled(dags()))
def test_every_step_appears_exactly_once(after: Dag) -> None:
    canvas = compiled(after).canvas
    found = steps_of(canvas)
    assert len(found) == len(after)
    assert set(found) == set(after)
    assert_well_formed(canvas)


@FAST
@given(shuffled(dags()))
def test_exact_means_no_false_dependency(after: Dag) -> None:
    graph = Graph.from_after(after)
    result = compile_graph(graph)
    order, closure = happens_before(result.canvas), graph.closure()
    assert result.exact == (order == closure)
    assert result.exact == (not result.levelled)
    # Any extra wait is between two steps the levelling touched.
    for a, b in order - closure:
        assert a in result.levelled
        assert b in result.levelled


@FAST
@given(series_parallel_dags())
def test_series_parallel_graphs_compile_exactly(after: Dag) -> None:
    graph = Graph.from_after(after)
    result = compile_graph(graph)
    assert result.exact
    assert result.levelled == frozenset()
    assert happens_before(result.canvas) == graph.closure()


@FAST
@given(shuffled(series_parallel_dags()))
def test_series_parallel_exactness_does_not_depend_on_declaration_order(after: Dag) -> None:
    graph = Graph.from_after(after)
    result = compile_graph(graph)
    assert result.exact
    assert happens_before(result.canvas) == graph.closure()


@FAST
@given(series_parallel_dags())
def test_redundant_edges_do_not_spoil_exactness(after: Dag) -> None:
    # Adding every implied edge (the transitive closure) keeps the same order.
    closure = Graph.from_after(after).closure()
    full = {n: tuple(a for a in after if (a, n) in closure) for n in after}
    result = compiled(full)
    assert result.exact
    assert happens_before(result.canvas) == closure


@FAST
@given(shuffled(dags()))
def test_first_steps_are_the_steps_nothing_precedes(after: Dag) -> None:
    canvas = compiled(after).canvas
    order = happens_before(canvas)
    waiting = {b for _, b in order}
    first = first_steps(canvas)
    assert len(first) == len(set(first))
    assert set(first) == set(after) - waiting
    # Exactly the steps that wait for nothing start first, even when levelled.
    assert set(first) == {s for s, deps in after.items() if not deps}


@FAST
@given(shuffled(dags()))
def test_json_round_trip(after: Dag) -> None:
    canvas = compiled(after).canvas
    assert from_json(to_json(canvas)) == canvas
    assert from_json(json.loads(json.dumps(to_json(canvas)))) == canvas


# ---------------------------------------------------------------------------------------
# Known shapes


def test_single_step_is_a_task() -> None:
    assert compiled({"a": ()}) == Compiled(Task("a"), exact=True)


def test_diamond_is_a_chain_ending_in_a_chord() -> None:
    result = compiled({"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")})
    assert result.canvas == Chain((Task("a"), Chord(tasks("b", "c"), Task("d"))))
    assert result.exact
    assert first_steps(result.canvas) == ["a"]


def test_n_shape_is_levelled() -> None:
    # a -> c, b -> c, b -> d: no series or parallel split; d ends up waiting for a.
    result = compiled({"a": (), "b": (), "c": ("a", "b"), "d": ("b",)})
    assert not result.exact
    assert result.levelled == frozenset("abcd")
    assert result.canvas == Chord(tasks("a", "b"), Group(tasks("c", "d")))
    assert ("a", "d") in happens_before(result.canvas)


def test_only_the_n_part_is_levelled() -> None:
    after: Dag = {
        "start": (),
        "a": ("start",),
        "b": ("start",),
        "c": ("a", "b"),
        "d": ("b",),
        "end": ("c", "d"),
        "side": (),
    }
    result = compiled(after)
    assert result.levelled == frozenset("abcd")
    order = happens_before(result.canvas)
    assert not any("side" in pair for pair in order)
    assert ("start", "a") in order
    assert ("d", "end") in order


def test_parallel_stages_back_to_back() -> None:
    result = from_stages(
        [{"parallel": [step("a"), step("b")]}, {"parallel": [step("c"), step("d")]}]
    )
    assert result.canvas == Chord(tasks("a", "b"), Group(tasks("c", "d")))
    assert result.exact


def test_parallel_stage_followed_by_more_work_is_a_chord() -> None:
    result = from_stages(
        [
            step("fetch"),
            {"parallel": [step("x"), {"sequential": [step("y1"), step("y2")]}]},
            step("join"),
            step("publish"),
        ]
    )
    assert result.canvas == Chain(
        (
            Task("fetch"),
            Chord((Task("x"), Chain(tasks("y1", "y2"))), Task("join")),
            Task("publish"),
        )
    )
    assert result.exact


def test_two_fan_outs_in_a_row_are_a_flat_chain_of_chords() -> None:
    result = from_stages(
        [
            {"parallel": [step("a"), step("b")]},
            step("mid"),
            {"parallel": [step("c"), step("d")]},
            step("end"),
        ]
    )
    assert result.canvas == Chain(
        (Chord(tasks("a", "b"), Task("mid")), Chord(tasks("c", "d"), Task("end")))
    )


def test_consecutive_parallel_stages_nest_only_as_deep_as_the_run() -> None:
    result = from_stages(
        [
            {"parallel": [step("a"), step("b")]},
            {"parallel": [step("c"), step("d")]},
            {"parallel": [step("e"), step("f")]},
            step("end"),
        ]
    )
    assert result.canvas == Chord(
        tasks("a", "b"), Chord(tasks("c", "d"), Chord(tasks("e", "f"), Task("end")))
    )


def test_a_group_at_the_end_stays_a_group() -> None:
    result = compiled({"a": (), "b": ("a",), "c": ("a",)})
    assert result.canvas == Chain((Task("a"), Group(tasks("b", "c"))))


def test_independent_chains_run_as_a_group_of_chains() -> None:
    result = compiled({"a1": (), "a2": ("a1",), "b1": (), "b2": ("b1",)})
    assert result.canvas == Group((Chain(tasks("a1", "a2")), Chain(tasks("b1", "b2"))))


def test_a_long_chain_is_one_flat_chain() -> None:
    names = [f"s{i}" for i in range(200)]
    after: Dag = {n: ((names[i - 1],) if i else ()) for i, n in enumerate(names)}
    result = compiled(after)
    assert result.canvas == Chain(tasks(*names))
    assert result.exact


def test_ten_thousand_independent_steps_are_one_group_quickly() -> None:
    names = [f"s{i}" for i in range(10_000)]
    started = time.perf_counter()
    result = compiled({n: () for n in names})
    elapsed = time.perf_counter() - started
    assert result.canvas == Group(tasks(*names))
    assert result.exact
    assert first_steps(result.canvas) == names
    assert elapsed < 2.0, f"took {elapsed:.2f} s"


def test_a_cycle_is_refused() -> None:
    with pytest.raises(CycleError, match="cycle: a -> b -> a"):
        compiled({"a": ("b",), "b": ("a",)})


def test_json_shape() -> None:
    canvas = compiled({"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ()}).canvas
    assert to_json(canvas) == {
        "group": [{"chain": ["a", {"chord": {"header": ["b", "c"], "body": "d"}}]}, "e"]
    }


def test_a_long_pipeline_of_fan_outs_compiles() -> None:
    after: Dag = {}
    previous: tuple[str, ...] = ()
    for i in range(400):
        after[f"t{i}"] = previous
        after[f"a{i}"] = (f"t{i}",)
        after[f"b{i}"] = (f"t{i}",)
        previous = (f"a{i}", f"b{i}")
    canvas = compiled(after).canvas
    assert from_json(json.loads(json.dumps(to_json(canvas)))) == canvas
