"""The DAG compiler: canvases respect every dependency, add none to series-parallel graphs,
and read back (steps, order, first steps, JSON) the way dispatch relies on. Pure logic."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    plan_timeline,
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


def canvas_of(result: Compiled) -> Node:
    assert result.canvas is not None
    return result.canvas


@FAST
@given(shuffled(dags()), st.data())
def test_every_step_starts_exactly_when_its_own_dependencies_end(after: Dag, data: Any) -> None:
    # The compiled plan, executed with unlimited workers and arbitrary durations: no step
    # starts before a dependency ends, and none waits for anything else.
    graph = Graph.from_after(after)
    durations = {n: data.draw(st.floats(min_value=0.01, max_value=10.0), label=n) for n in after}
    timeline = plan_timeline(compile_graph(graph), graph, durations)
    for step, deps in after.items():
        start, end = timeline[step]
        assert end == pytest.approx(start + durations[step])
        assert start == pytest.approx(max((timeline[d][1] for d in deps), default=0.0))


@FAST
@given(shuffled(dags()))
def test_canvas_respects_every_dependency_and_adds_none(after: Dag) -> None:
    graph = Graph.from_after(after)
    result = compile_graph(graph)
    closure = graph.closure()
    if result.canvas is not None:
        order = happens_before(result.canvas)
        inside = set(steps_of(result.canvas))
        assert order == {(a, b) for a, b in closure if a in inside and b in inside}
        assert_well_formed(result.canvas)
    # Counter steps form closed parts: no edge crosses between them and the canvas.
    for a, b in closure:
        assert (a in result.counters) == (b in result.counters)


@FAST
@given(shuffled(dags()))
def test_every_step_is_in_the_canvas_or_on_counters_once(after: Dag) -> None:
    result = compiled(after)
    found = steps_of(result.canvas) if result.canvas is not None else []
    assert len(found) == len(set(found))
    assert set(found).isdisjoint(result.counters)
    assert set(found) | result.counters == set(after)


@FAST
@given(series_parallel_dags())
def test_series_parallel_graphs_need_no_counters(after: Dag) -> None:
    graph = Graph.from_after(after)
    result = compile_graph(graph)
    assert result.counters == frozenset()
    assert happens_before(canvas_of(result)) == graph.closure()


@FAST
@given(shuffled(series_parallel_dags()))
def test_series_parallel_compiles_the_same_whatever_the_declaration_order(after: Dag) -> None:
    graph = Graph.from_after(after)
    result = compile_graph(graph)
    assert result.counters == frozenset()
    assert happens_before(canvas_of(result)) == graph.closure()


@FAST
@given(series_parallel_dags())
def test_redundant_edges_keep_a_series_parallel_graph_on_the_canvas(after: Dag) -> None:
    # Adding every implied edge (the transitive closure) keeps the same order.
    closure = Graph.from_after(after).closure()
    full = {n: tuple(a for a in after if (a, n) in closure) for n in after}
    result = compiled(full)
    assert result.counters == frozenset()
    assert happens_before(canvas_of(result)) == closure


@FAST
@given(shuffled(dags()))
def test_first_steps_are_the_canvas_steps_nothing_precedes(after: Dag) -> None:
    result = compiled(after)
    if result.canvas is None:
        return
    first = first_steps(result.canvas)
    assert len(first) == len(set(first))
    waiting = {b for _, b in happens_before(result.canvas)}
    assert set(first) == set(steps_of(result.canvas)) - waiting
    assert set(first) == {s for s, deps in after.items() if not deps} - result.counters


@FAST
@given(shuffled(dags()))
def test_json_round_trip(after: Dag) -> None:
    result = compiled(after)
    if result.canvas is None:
        return
    canvas = result.canvas
    assert from_json(to_json(canvas)) == canvas
    assert from_json(json.loads(json.dumps(to_json(canvas)))) == canvas


def assert_publishable(node: Node) -> None:
    """What dispatch hands to Celery: chains and groups only, a group never followed by
    more work in a chain (Celery would turn that into a chord)."""
    assert not isinstance(node, Chord)
    if isinstance(node, Task):
        return
    for i, item in enumerate(node.items):
        assert_publishable(item)
        if isinstance(node, Chain):
            assert not (isinstance(item, Group) and i < len(node.items) - 1)


@FAST
@given(shuffled(dags()))
def test_split_publishes_every_canvas_step_once_and_no_chord(after: Dag) -> None:
    result = compiled(after)
    split = result.split()
    parts = ([split.now] if split.now is not None else []) + list(split.held.values())
    found = [s for part in parts for s in steps_of(part)]
    assert len(found) == len(set(found))
    assert set(found) == (set(steps_of(result.canvas)) if result.canvas is not None else set())
    for part in parts:
        assert_publishable(part)
    for gate, part in split.held.items():
        assert first_steps(part)[0] == gate
    for step_id, gate in split.gated().items():
        assert step_id in first_steps(split.held[gate]) and step_id != gate
    assert result.counted == result.counters | frozenset(split.held)


@FAST
@given(shuffled(series_parallel_dags()))
def test_a_gate_depends_on_every_step_its_part_waits_for(after: Dag) -> None:
    # Its count reaching zero must mean everything the canvas orders before its part has
    # ended: every step before the part is the gate's dependency or one of theirs.
    graph = Graph.from_after(after)
    result = compile_graph(graph)
    split = result.split()
    closure = graph.closure()
    for gate, part in split.held.items():
        inside = set(steps_of(part))
        before = {a for a, b in happens_before(canvas_of(result)) if b in inside} - inside
        assert before == {a for a, b in closure if b == gate}


# ---------------------------------------------------------------------------------------
# Known shapes


def test_single_step_is_a_task() -> None:
    assert compiled({"a": ()}) == Compiled(Task("a"))


def test_diamond_is_a_chain_ending_in_a_chord() -> None:
    result = compiled({"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")})
    assert result.canvas == Chain((Task("a"), Chord(tasks("b", "c"), Task("d"))))
    assert result.counters == frozenset()
    assert first_steps(result.canvas) == ["a"]


def test_n_shape_runs_on_counters() -> None:
    # a -> c, b -> c, b -> d: no canvas can start d without also waiting for a.
    result = compiled({"a": (), "b": (), "c": ("a", "b"), "d": ("b",)})
    assert result.canvas is None
    assert result.counters == frozenset("abcd")


def test_only_the_part_with_the_n_runs_on_counters() -> None:
    after: Dag = {
        "start": (),
        "a": ("start",),
        "b": ("start",),
        "c": ("a", "b"),
        "d": ("b",),
        "end": ("c", "d"),
        "side": (),
        "side2": ("side",),
    }
    result = compiled(after)
    assert result.counters == frozenset({"start", "a", "b", "c", "d", "end"})
    assert result.canvas == Chain(tasks("side", "side2"))


def test_parallel_stages_back_to_back() -> None:
    result = from_stages(
        [{"parallel": [step("a"), step("b")]}, {"parallel": [step("c"), step("d")]}]
    )
    assert result.canvas == Chord(tasks("a", "b"), Group(tasks("c", "d")))
    assert result.counters == frozenset()


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
    assert result.counters == frozenset()


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


def test_a_fan_in_publishes_its_stage_and_holds_the_join() -> None:
    after: Dag = {f"p{i}": () for i in range(3)} | {"join": ("p0", "p1", "p2")}
    split = compiled(after).split()
    assert split.now == Group(tasks("p0", "p1", "p2"))
    assert split.held == {"join": Task("join")}


def test_a_chord_in_a_chain_holds_its_body_and_the_rest_of_the_chain() -> None:
    result = from_stages(
        [
            step("fetch"),
            {"parallel": [step("x"), {"sequential": [step("y1"), step("y2")]}]},
            step("join"),
            step("publish"),
            {"parallel": [step("c"), step("d")]},
            step("end"),
        ]
    )
    split = result.split()
    assert split.now == Chain((Task("fetch"), Group((Task("x"), Chain(tasks("y1", "y2"))))))
    assert split.held == {
        "join": Chain((Task("join"), Task("publish"), Group(tasks("c", "d")))),
        "end": Task("end"),
    }
    assert result.counted == frozenset({"join", "end"})


def test_back_to_back_stages_hold_each_stage_behind_one_gate() -> None:
    split = from_stages(
        [
            {"parallel": [step("a"), step("b")]},
            {"parallel": [step("c"), step("d")]},
            {"parallel": [step("e"), step("f")]},
            step("end"),
        ]
    ).split()
    assert split.now == Group(tasks("a", "b"))
    assert split.held == {
        "c": Group(tasks("c", "d")),
        "e": Group(tasks("e", "f")),
        "end": Task("end"),
    }
    assert split.gated() == {"d": "c", "f": "e"}


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
    assert result.counters == frozenset()


def test_ten_thousand_independent_steps_are_one_group_quickly() -> None:
    names = [f"s{i}" for i in range(10_000)]
    started = time.perf_counter()
    result = compiled({n: () for n in names})
    elapsed = time.perf_counter() - started
    assert result.canvas == Group(tasks(*names))
    assert result.counters == frozenset()
    assert first_steps(result.canvas) == names
    assert elapsed < 2.0, f"took {elapsed:.2f} s"


def test_a_cycle_is_refused() -> None:
    with pytest.raises(CycleError, match="cycle: a -> b -> a"):
        compiled({"a": ("b",), "b": ("a",)})


def test_json_shape() -> None:
    canvas = canvas_of(compiled({"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ()}))
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
    canvas = canvas_of(compiled(after))
    assert from_json(json.loads(json.dumps(to_json(canvas)))) == canvas
