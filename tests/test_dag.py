"""Graph facts: topological order, cycles, critical path, list scheduling. Pure logic."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.dag import CycleError, Graph, critical_path, simulate
from tests.strategies import FAST, Dag, dags, shuffled

DIAMOND: Dag = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}


def reference_topological_order(after: Dag) -> list[str]:
    """The smallest topological order by declaration rank, the slow obvious way."""
    nodes = list(after)
    done: list[str] = []
    while len(done) < len(nodes):
        ready = next(n for n in nodes if n not in done and all(d in done for d in after[n]))
        done.append(ready)
    return done


def reference_longest(after: Dag, durations: dict[str, float]) -> float:
    finish: dict[str, float] = {}
    for node in reference_topological_order(after):
        finish[node] = max((finish[d] for d in after[node]), default=0.0) + durations[node]
    return max(finish.values(), default=0.0)


# ---------------------------------------------------------------------------------------
# Topological order


@FAST
@given(shuffled(dags()))
def test_topological_order_respects_edges_and_declaration_order(after: Dag) -> None:
    order = Graph.from_after(after).topological_order()
    assert sorted(order) == sorted(after)
    position = {n: i for i, n in enumerate(order)}
    for node, deps in after.items():
        for dep in deps:
            assert position[dep] < position[node]
    # Ties go to the step declared first: the order is the smallest by declaration rank.
    assert order == reference_topological_order(after)


def test_topological_order_without_edges_is_declaration_order() -> None:
    after: Dag = {n: () for n in ["z", "b", "y", "a"]}
    assert Graph.from_after(after).topological_order() == ["z", "b", "y", "a"]


def test_topological_order_takes_the_earliest_declared_ready_step() -> None:
    # c is declared first but waits for b; a and b are free.
    after: Dag = {"c": ("b",), "a": (), "b": (), "d": ("a",)}
    assert Graph.from_after(after).topological_order() == ["a", "b", "c", "d"]


def test_duplicate_after_entries_do_not_break_the_order() -> None:
    after: Dag = {"a": (), "b": ("a", "a"), "c": ("b",)}
    assert Graph.from_after(after).topological_order() == ["a", "b", "c"]


# ---------------------------------------------------------------------------------------
# Cycles


def assert_closed_path(graph: Graph, cycle: list[str]) -> None:
    assert len(cycle) >= 2
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1, "a simple cycle visits each step once"
    for before, after in itertools.pairwise(cycle):
        assert after in graph.succs[before], f"{before} -> {after} is not an edge"


@FAST
@given(shuffled(dags()))
def test_a_dag_has_no_cycle(after: Dag) -> None:
    assert Graph.from_after(after).find_cycle() is None


@FAST
@given(dags(), st.data())
def test_a_back_edge_always_closes_a_cycle(after: Dag, data: st.DataObject) -> None:
    closure = sorted(Graph.from_after(after).closure())
    # Either a self-dependency, or a step that comes before another now also after it.
    self_loop: bool = data.draw(st.booleans())
    if closure and not self_loop:
        first, then = data.draw(st.sampled_from(closure))
    else:
        first = then = data.draw(st.sampled_from(list(after)))
    cyclic = {**after, first: (*after[first], then)}
    graph = Graph.from_after(cyclic)

    cycle = graph.find_cycle()
    assert cycle is not None
    assert_closed_path(graph, cycle)

    with pytest.raises(CycleError) as caught:
        graph.topological_order()
    assert_closed_path(graph, caught.value.cycle)
    assert str(caught.value) == "cycle: " + " -> ".join(caught.value.cycle)


def test_cycle_error_message_names_the_closed_path() -> None:
    graph = Graph.from_after({"a": ("c",), "b": ("a",), "c": ("b",), "d": ()})
    with pytest.raises(CycleError, match=r"^cycle: a -> b -> c -> a$"):
        graph.topological_order()


def test_self_dependency_is_a_cycle_of_one() -> None:
    graph = Graph.from_after({"a": (), "b": ("a", "b")})
    assert graph.find_cycle() == ["b", "b"]
    with pytest.raises(CycleError, match=r"^cycle: b -> b$"):
        graph.topological_order()


def test_cycle_behind_an_acyclic_prefix_is_found() -> None:
    after: Dag = {"a": (), "b": ("a", "d"), "c": ("b",), "d": ("c",), "e": ("d",)}
    cycle = Graph.from_after(after).find_cycle()
    assert cycle is not None
    assert set(cycle) == {"b", "c", "d"}
    assert_closed_path(Graph.from_after(after), cycle)


# ---------------------------------------------------------------------------------------
# Closure


def test_closure_of_a_diamond() -> None:
    assert Graph.from_after(DIAMOND).closure() == {
        ("a", "b"),
        ("a", "c"),
        ("a", "d"),
        ("b", "d"),
        ("c", "d"),
    }


@FAST
@given(shuffled(dags()))
def test_closure_is_transitive_and_contains_every_edge(after: Dag) -> None:
    closure = Graph.from_after(after).closure()
    for node, deps in after.items():
        for dep in deps:
            assert (dep, node) in closure
    for a, b in closure:
        assert a != b
        for c in after:
            if (b, c) in closure:
                assert (a, c) in closure


# ---------------------------------------------------------------------------------------
# Critical path


def test_critical_path_of_a_weighted_diamond() -> None:
    graph = Graph.from_after(DIAMOND)
    assert critical_path(graph, {"a": 1, "b": 5, "c": 2, "d": 1}) == (7.0, ["a", "b", "d"])
    assert critical_path(graph, {"a": 1, "b": 2, "c": 5, "d": 1}) == (7.0, ["a", "c", "d"])


def test_critical_path_defaults_to_one_second_a_step() -> None:
    graph = Graph.from_after({"a": (), "b": ("a",), "c": ("b",), "x": ()})
    assert critical_path(graph, {}) == (3.0, ["a", "b", "c"])


def test_critical_path_can_start_at_a_late_declared_step() -> None:
    # The heavy branch is the second root; the light chain is longer in steps only.
    after: Dag = {"a": (), "b": ("a",), "c": ("b",), "heavy": (), "end": ("c", "heavy")}
    durations = {"a": 1, "b": 1, "c": 1, "heavy": 10, "end": 2}
    assert critical_path(Graph.from_after(after), durations) == (12.0, ["heavy", "end"])


def test_critical_path_of_nothing() -> None:
    assert critical_path(Graph.from_after({}), {}) == (0.0, [])


@FAST
@given(shuffled(dags()), st.data())
def test_critical_path_is_a_longest_path(after: Dag, data: st.DataObject) -> None:
    durations = {n: float(data.draw(st.integers(0, 9))) for n in after}
    graph = Graph.from_after(after)
    length, path = critical_path(graph, durations)
    assert length == reference_longest(after, durations)
    assert sum(durations[n] for n in path) == length
    assert after[path[0]] == (), "the path starts at a step that waits for nothing"
    for before, nxt in itertools.pairwise(path):
        assert before in after[nxt]


# ---------------------------------------------------------------------------------------
# Simulated schedule


@FAST
@given(shuffled(dags()), st.data())
def test_unlimited_slots_finish_at_the_critical_path(after: Dag, data: st.DataObject) -> None:
    durations = {n: float(data.draw(st.integers(1, 9))) for n in after}
    graph = Graph.from_after(after)
    makespan, widest = simulate(graph, durations)
    assert makespan == critical_path(graph, durations)[0]
    assert 1 <= widest <= len(after)


@FAST
@given(shuffled(dags()), st.data())
def test_one_slot_runs_everything_back_to_back(after: Dag, data: st.DataObject) -> None:
    durations = {n: float(data.draw(st.integers(1, 9))) for n in after}
    assert simulate(Graph.from_after(after), durations, slots=1) == (sum(durations.values()), 1)


@FAST
@given(shuffled(dags()), st.integers(1, 6), st.data())
def test_limited_slots_stay_within_list_scheduling_bounds(
    after: Dag, slots: int, data: st.DataObject
) -> None:
    durations = {n: float(data.draw(st.integers(1, 9))) for n in after}
    graph = Graph.from_after(after)
    makespan, widest = simulate(graph, durations, slots=slots)
    longest = critical_path(graph, durations)[0]
    total = sum(durations.values())
    assert widest <= slots
    assert makespan >= max(longest, total / slots)
    # Graham's bound for greedy list scheduling.
    assert makespan <= total / slots + longest


@pytest.mark.parametrize(
    ("after", "slots", "expected"),
    [
        (DIAMOND, None, (3.0, 2)),
        (DIAMOND, 1, (4.0, 1)),
        ({f"s{i}": () for i in range(5)}, None, (1.0, 5)),
        ({f"s{i}": () for i in range(5)}, 2, (3.0, 2)),
        ({"a": (), "b": ("a",), "c": ("b",)}, None, (3.0, 1)),
        # a fans out to three, which join in d: width 3
        ({"a": (), "b": ("a",), "c": ("a",), "e": ("a",), "d": ("b", "c", "e")}, None, (3.0, 3)),
    ],
)
def test_simulate_known_widths(after: Dag, slots: int | None, expected: tuple[float, int]) -> None:
    assert simulate(Graph.from_after(after), {}, slots=slots) == expected


def test_simulate_frees_slots_of_steps_ending_together() -> None:
    # a and b end at t=2 together; c and d (each after one of them) then run side by side.
    after: Dag = {"a": (), "b": (), "c": ("a",), "d": ("b",)}
    durations = {"a": 2.0, "b": 2.0, "c": 1.0, "d": 1.0}
    assert simulate(Graph.from_after(after), durations, slots=2) == (3.0, 2)


def test_simulate_does_not_count_a_step_that_has_ended_as_running() -> None:
    # a and b end together at t=1; only then do c, d and e run: never more than three.
    after: Dag = {"a": (), "b": (), "c": ("a",), "d": ("a",), "e": ("a",)}
    assert simulate(Graph.from_after(after), {}) == (2.0, 3)


def test_simulate_of_nothing() -> None:
    assert simulate(Graph.from_after({}), {}) == (0.0, 0)
