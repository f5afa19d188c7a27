"""Hypothesis strategies for workflow graphs, shared by the pure-logic tests.

A DAG is a ``dict[str, tuple[str, ...]]``: step id -> the ids it comes ``after``, in
declaration order (the shape ``Graph.from_after`` takes).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

Dag = dict[str, tuple[str, ...]]

MAX_NODES = 40

# Quick and never flaky: no deadline (the first call imports and warms up), a modest
# number of examples, and no complaint about 40-node examples being slow to generate.
FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def step_id(i: int) -> str:
    return f"s{i}"


# ---------------------------------------------------------------------------------------
# (a) random DAGs


@st.composite
def dags(draw: st.DrawFn, min_nodes: int = 1, max_nodes: int = MAX_NODES) -> Dag:
    """Ids ``s0..sN`` in declaration order; every edge goes from a lower to a higher index."""
    n = draw(st.integers(min_nodes, max_nodes))
    # One density per graph, so that both sparse and dense graphs come up.
    fan_in = draw(st.integers(0, 6))
    after: Dag = {}
    for j in range(n):
        preds: set[int] = (
            draw(st.sets(st.integers(0, j - 1), max_size=min(j, fan_in))) if j else set()
        )
        after[step_id(j)] = tuple(step_id(i) for i in sorted(preds))
    return after


@st.composite
def shuffled(draw: st.DrawFn, graphs: st.SearchStrategy[Dag]) -> Dag:
    """The same graph declared in another order (``after`` may name later steps)."""
    after = draw(graphs)
    order = draw(st.permutations(list(after)))
    return {node: after[node] for node in order}


# ---------------------------------------------------------------------------------------
# (b) series-parallel DAGs, from a composition tree


@dataclass(frozen=True)
class Leaf:
    id: str


@dataclass(frozen=True)
class Series:
    parts: tuple[Tree, ...]


@dataclass(frozen=True)
class Parallel:
    parts: tuple[Tree, ...]


Tree = Leaf | Series | Parallel


def leaves(tree: Tree) -> Iterator[str]:
    if isinstance(tree, Leaf):
        yield tree.id
    else:
        for part in tree.parts:
            yield from leaves(part)


@st.composite
def trees(draw: st.DrawFn, min_leaves: int = 1, max_leaves: int = MAX_NODES) -> Tree:
    """A random composition tree; leaves are ``s0..sN`` from left to right."""
    total = draw(st.integers(min_leaves, max_leaves))
    counter = iter(range(total))

    def build(n: int) -> Tree:
        if n == 1:
            return Leaf(step_id(next(counter)))
        arity = draw(st.integers(2, min(n, 4)))
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), min_size=arity - 1, max_size=arity - 1)))
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
        parts = tuple(build(size) for size in sizes)
        return Series(parts) if draw(st.booleans()) else Parallel(parts)

    return build(total)


@dataclass(frozen=True)
class Composed:
    after: Dag
    sources: tuple[str, ...]
    sinks: tuple[str, ...]


def compose(tree: Tree) -> Composed:
    """The DAG of ``tree``: series(A, B) adds an edge from every sink of A to every source
    of B; parallel(A, B) adds none. Leaves are declared from left to right."""
    if isinstance(tree, Leaf):
        return Composed({tree.id: ()}, (tree.id,), (tree.id,))
    parts = [compose(part) for part in tree.parts]
    after: Dag = {}
    for part in parts:
        after.update(part.after)
    if isinstance(tree, Parallel):
        return Composed(
            after,
            tuple(s for p in parts for s in p.sources),
            tuple(s for p in parts for s in p.sinks),
        )
    for prev, nxt in itertools.pairwise(parts):
        for source in nxt.sources:
            after[source] = (*after[source], *prev.sinks)
    return Composed(after, parts[0].sources, parts[-1].sinks)


def series_parallel_dags(max_nodes: int = MAX_NODES) -> st.SearchStrategy[Dag]:
    return trees(max_leaves=max_nodes).map(lambda tree: compose(tree).after)


# ---------------------------------------------------------------------------------------
# (c) stage form specs


def stage_item(tree: Tree) -> dict[str, Any]:
    if isinstance(tree, Leaf):
        return {"id": tree.id, "task": "treadle.noop"}
    key = "sequential" if isinstance(tree, Series) else "parallel"
    return {key: [stage_item(part) for part in tree.parts]}


def stage_spec(tree: Tree, name: str = "stages") -> dict[str, Any]:
    """A stage-form spec dict for ``tree`` (the top-level ``stages`` list is sequential)."""
    items = [stage_item(p) for p in tree.parts] if isinstance(tree, Series) else [stage_item(tree)]
    return {"name": name, "stages": items}


def stage_specs(max_steps: int = MAX_NODES) -> st.SearchStrategy[dict[str, Any]]:
    return trees(max_leaves=max_steps).map(stage_spec)
