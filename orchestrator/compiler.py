"""Compile a workflow's DAG to a canvas of chains, groups and chords, plus counters.

Pure: the canvas here is plain data; ``orchestrator.dispatch`` turns it into Celery
signatures. Series-parallel graphs (everything the stages form can write, and any steps
form graph without an "N" in it) compile to a canvas that orders two steps if and only if
the DAG does. A connected part of the graph that is not series-parallel (``a→c, b→c,
b→d``) cannot be written as chains, groups and chords without making some step wait for
one it does not depend on; its steps run on dependency counters instead: each such step
waits in Redis for a count of unfinished dependencies, which the step runtime decrements
atomically as each dependency ends, and is published when the count reaches zero. Either
way a step starts as soon as its own dependencies have finished, and no sooner.

A chord is not run as Celery's chord (which stores every header task's result in the
backend and counts them there: about 13 more Redis commands a header step, and a body
lost with ``result_chord_expires``); its header is published as a group and its body is
held back: the body's first step (its gate) waits on a dependency counter like a counter
step, and when the transition that records the header's last end brings it to zero, the
step runtime publishes the body and what follows it in its chain (``split_joins``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from orchestrator.dag import Graph
from orchestrator.model import Workflow


@dataclass(frozen=True)
class Task:
    step: str


@dataclass(frozen=True)
class Chain:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Group:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Chord:
    """``header`` runs in parallel; ``body`` starts once all of it has finished."""

    header: tuple[Node, ...]
    body: Node


Node = Union[Task, Chain, Group, Chord]  # noqa: UP007 - recursive alias of dataclasses


@dataclass(frozen=True)
class Compiled:
    """``canvas`` runs the series-parallel parts (None if there are none); the steps in
    ``counters`` run on dependency counters."""

    canvas: Node | None
    counters: frozenset[str] = field(default_factory=frozenset)

    def split(self) -> Split:
        """What dispatch publishes, and what the chords' gates hold back."""
        return split_joins(self.canvas)

    @property
    def counted(self) -> frozenset[str]:
        """Every step published when a dependency counter reaches zero: counter steps and
        the chords' gates."""
        return self.counters | frozenset(self.split().held)


@dataclass(frozen=True)
class Split:
    """A canvas without chords: ``now`` is published at once (chains and groups only);
    ``held`` maps each chord's gate (its body's first step) to what is published when
    the gate's counter reaches zero: the body and the rest of its chain up to the next
    chord's header."""

    now: Node | None
    held: Mapping[str, Node]

    def gated(self) -> dict[str, str]:
        """The other first steps of each held part, and the gate they are published with."""
        return {s: gate for gate, node in self.held.items() for s in first_steps(node) if s != gate}


class _NotSeriesParallel(Exception):
    pass


def compile_graph(graph: Graph) -> Compiled:
    """Canvas and counter steps for ``graph``; raises CycleError if it has a cycle."""
    if not graph.nodes:
        raise ValueError("a workflow needs at least one step to compile")
    order = graph.topological_order()
    compiler = _Compiler(graph, order)
    canvases: list[Node] = []
    counters: set[str] = set()
    # Parts that share no edge are independent: each one that is series-parallel keeps
    # its canvas even when another part needs counters.
    for part in compiler.components(order):
        try:
            canvases.append(_with_chords(compiler.decompose(part)))
        except _NotSeriesParallel:
            counters.update(part)
    canvas: Node | None = None
    if len(canvases) == 1:
        canvas = canvases[0]
    elif canvases:
        canvas = Group(tuple(canvases))
    return Compiled(canvas=canvas, counters=frozenset(counters))


class _Compiler:
    def __init__(self, graph: Graph, order: list[str]):
        self.graph = graph
        self.rank = {n: i for i, n in enumerate(order)}
        self.bit = {n: 1 << i for i, n in enumerate(graph.nodes)}
        self.below = graph.descendant_masks(order)

    def decompose(self, nodes: Sequence[str]) -> Node:
        """``nodes`` in topological order; returns a Task, Chain or Group (no chords yet)."""
        if len(nodes) == 1:
            return Task(nodes[0])
        parts = self.components(nodes)
        if len(parts) > 1:
            return Group(tuple(self.decompose(part) for part in parts))
        segments = self._series_segments(nodes)
        if len(segments) == 1:
            # Connected, and no cut orders all of one side before all of the other: the
            # part contains an "N" and no canvas expresses it exactly.
            raise _NotSeriesParallel()
        return _chain(self.decompose(seg) for seg in segments)

    def components(self, nodes: Sequence[str]) -> list[list[str]]:
        """Weakly connected parts, each in topological order, ordered by first node."""
        inside = set(nodes)
        seen: set[str] = set()
        parts: list[list[str]] = []
        for start in nodes:
            if start in seen:
                continue
            seen.add(start)
            stack, part = [start], []
            while stack:
                node = stack.pop()
                part.append(node)
                for nxt in (*self.graph.succs[node], *self.graph.preds[node]):
                    if nxt in inside and nxt not in seen:
                        seen.add(nxt)
                        stack.append(nxt)
            parts.append(sorted(part, key=self.rank.__getitem__))
        return parts

    def _series_segments(self, nodes: Sequence[str]) -> list[list[str]]:
        """Cut ``nodes`` wherever every step before the cut precedes every step after it.

        Any such cut is a prefix of every topological order, so one pass over the order
        finds them all: a prefix can be cut off when the steps all its members precede
        (the intersection of their descendant sets) are exactly the rest.
        """
        inside = 0
        for node in nodes:
            inside |= self.bit[node]
        segments: list[list[str]] = []
        current: list[str] = []
        common = -1
        remaining = len(nodes)
        for node in nodes:
            current.append(node)
            remaining -= 1
            common &= self.below[node] & inside
            if remaining and common.bit_count() == remaining:
                segments.append(current)
                current, common = [], -1
        segments.append(current)
        return segments


def _chain(items: Iterator[Node] | Sequence[Node]) -> Node:
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, Chain) else (item,))
    return flat[0] if len(flat) == 1 else Chain(tuple(flat))


def _with_chords(node: Node) -> Node:
    """In a chain, a group followed by more work becomes a chord whose body is the next
    item; the chain goes on after the chord. Kept flat (``chain(chord(g1, t1),
    chord(g2, t2))``) rather than nesting the rest of the chain in each body, so a long
    pipeline of fan-outs stays shallow, as Celery's own chain upgrading does."""
    if isinstance(node, Task):
        return node
    if isinstance(node, Group):
        return Group(tuple(_with_chords(item) for item in node.items))
    if isinstance(node, Chord):
        return Chord(tuple(_with_chords(i) for i in node.header), _with_chords(node.body))
    items = [_with_chords(item) for item in node.items]
    out: list[Node] = []
    i = 0
    while i < len(items):
        if not isinstance(items[i], Group) or i == len(items) - 1:
            out.append(items[i])
            i += 1
            continue
        # A run of consecutive groups, then the item that waits for the last of them.
        end = i
        while end + 1 < len(items) and isinstance(items[end + 1], Group):
            end += 1
        if end + 1 < len(items):
            body, run, i = items[end + 1], items[i : end + 1], end + 2
        else:
            body, run, i = items[end], items[i:end], end + 1
        for group in reversed(run):
            assert isinstance(group, Group)
            body = Chord(group.items, body)
        out.append(body)
    return out[0] if len(out) == 1 else Chain(tuple(out))


def split_joins(canvas: Node | None) -> Split:
    """``canvas`` with every chord's header published as a group and its body held back
    for its gate. Each step is in exactly one published part, so the held parts together
    are no bigger than the canvas."""
    held: dict[str, Node] = {}
    now = _publishable(canvas, held) if canvas is not None else None
    return Split(now, held)


def _publishable(node: Node, held: dict[str, Node]) -> Node:
    if isinstance(node, Task):
        return node
    if isinstance(node, Group):
        return Group(tuple(_publishable(i, held) for i in node.items))
    if isinstance(node, Chord):
        _hold(node.body, (), held)
        return Group(tuple(_publishable(i, held) for i in node.header))
    out: list[Node] = []
    for i, item in enumerate(node.items):
        if isinstance(item, Chord):
            out.append(Group(tuple(_publishable(h, held) for h in item.header)))
            _hold(item.body, node.items[i + 1 :], held)
            break
        out.append(_publishable(item, held))
    return _chain(out)


def _hold(body: Node, rest: Sequence[Node], held: dict[str, Node]) -> None:
    # The gate is one first step of the body: each of them depends directly on every last
    # step of the header (the cut before the body orders all of the header first, and a
    # first step has no dependency inside the body), so its count reaching zero means the
    # whole header has ended.
    held[first_steps(body)[0]] = _publishable(_chain((body, *rest)), held)


# ---------------------------------------------------------------------------------------
# Reading a canvas back


def steps_of(node: Node) -> list[str]:
    if isinstance(node, Task):
        return [node.step]
    if isinstance(node, Chord):
        return [s for item in node.header for s in steps_of(item)] + steps_of(node.body)
    return [s for item in node.items for s in steps_of(item)]


def happens_before(node: Node) -> set[tuple[str, str]]:
    """Every (a, b) such that the canvas cannot start b before a has finished."""
    pairs: set[tuple[str, str]] = set()
    _collect_order(node, pairs)
    return pairs


def _collect_order(node: Node, pairs: set[tuple[str, str]]) -> None:
    if isinstance(node, Task):
        return
    if isinstance(node, Chord):
        sequence: Sequence[Node] = (Group(node.header), node.body)
    elif isinstance(node, Chain):
        sequence = node.items
    else:
        sequence = ()
        for item in node.items:
            _collect_order(item, pairs)
    for i, item in enumerate(sequence):
        _collect_order(item, pairs)
        later = [s for nxt in sequence[i + 1 :] for s in steps_of(nxt)]
        pairs.update((s, t) for s in steps_of(item) for t in later)


def first_steps(node: Node) -> list[str]:
    """The steps the canvas starts with, before anything has finished."""
    if isinstance(node, Task):
        return [node.step]
    if isinstance(node, Chain):
        return first_steps(node.items[0])
    if isinstance(node, Chord):
        return [s for item in node.header for s in first_steps(item)]
    return [s for item in node.items for s in first_steps(item)]


def to_json(node: Node) -> Any:
    """A JSON-able tree, as ``treadle plan --json`` prints it."""
    if isinstance(node, Task):
        return node.step
    if isinstance(node, Chain):
        return {"chain": [to_json(i) for i in node.items]}
    if isinstance(node, Group):
        return {"group": [to_json(i) for i in node.items]}
    return {"chord": {"header": [to_json(i) for i in node.header], "body": to_json(node.body)}}


def from_json(data: Any) -> Node:
    """The inverse of :func:`to_json`: a stored canvas back to nodes."""
    if isinstance(data, str):
        return Task(data)
    if "chain" in data:
        return Chain(tuple(from_json(i) for i in data["chain"]))
    if "group" in data:
        return Group(tuple(from_json(i) for i in data["group"]))
    chord = data["chord"]
    return Chord(tuple(from_json(i) for i in chord["header"]), from_json(chord["body"]))


def canvas_timeline(
    node: Node, durations: Mapping[str, float], start: float = 0.0
) -> dict[str, tuple[float, float]]:
    """When each step of the canvas starts and ends with unlimited workers: Celery's
    semantics of chain, group and chord, made executable."""
    out: dict[str, tuple[float, float]] = {}
    _timeline(node, durations, start, out)
    return out


def _timeline(
    node: Node, durations: Mapping[str, float], start: float, out: dict[str, tuple[float, float]]
) -> float:
    if isinstance(node, Task):
        end = start + durations.get(node.step, 1.0)
        out[node.step] = (start, end)
        return end
    if isinstance(node, Chain):
        for item in node.items:
            start = _timeline(item, durations, start, out)
        return start
    if isinstance(node, Group):
        return max((_timeline(i, durations, start, out) for i in node.items), default=start)
    header_end = max((_timeline(i, durations, start, out) for i in node.header), default=start)
    return _timeline(node.body, durations, header_end, out)


def plan_timeline(
    compiled: Compiled, graph: Graph, durations: Mapping[str, float]
) -> dict[str, tuple[float, float]]:
    """Start and end of every step as dispatch and the step runtime run the compiled plan,
    with unlimited workers: what is published at once as Celery runs it; a chord's held
    part and a counter step when the count of the gate (or step) reaches zero, that is
    when its last dependency ends."""
    split = compiled.split()
    parts: dict[str, Node] = {**{s: Task(s) for s in compiled.counters}, **split.held}
    part_of = {s: gate for gate, node in parts.items() for s in steps_of(node)}
    out = canvas_timeline(split.now, durations) if split.now is not None else {}
    # Every dependency of a gate comes before the cut its part starts after, so before
    # any step of the part in a topological order: met first, a part can be timed whole.
    for step in graph.topological_order():
        if step in out:
            continue
        gate = part_of[step]
        begin = max((out[dep][1] for dep in graph.preds[gate]), default=0.0)
        out.update(canvas_timeline(parts[gate], durations, begin))
    return out


def compile_workflow(workflow: Workflow) -> Compiled:
    return compile_graph(Graph.from_after({s.id: s.after for s in workflow.steps}))
