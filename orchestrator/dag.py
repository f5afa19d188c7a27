"""Graph facts about a workflow's DAG: order, cycles, reachability, critical path, width.

Pure: works on step ids and ``after`` lists only.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


class CycleError(ValueError):
    def __init__(self, cycle: list[str]):
        self.cycle = cycle
        super().__init__("cycle: " + " -> ".join(cycle))


@dataclass(frozen=True)
class Graph:
    """Nodes in a stable order with predecessor and successor lists."""

    nodes: tuple[str, ...]
    preds: Mapping[str, tuple[str, ...]]
    succs: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_after(cls, after: Mapping[str, Sequence[str]]) -> Graph:
        nodes = tuple(after)
        succs: dict[str, list[str]] = {n: [] for n in nodes}
        for node, deps in after.items():
            for dep in deps:
                succs[dep].append(node)
        return cls(
            nodes=nodes,
            preds={n: tuple(after[n]) for n in nodes},
            succs={n: tuple(s) for n, s in succs.items()},
        )

    def topological_order(self) -> list[str]:
        """Kahn's order, ties broken by declaration order; raises CycleError."""
        rank = {n: i for i, n in enumerate(self.nodes)}
        missing = {n: len(self.preds[n]) for n in self.nodes}
        ready = [rank[n] for n in self.nodes if missing[n] == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            node = self.nodes[heapq.heappop(ready)]
            order.append(node)
            for nxt in self.succs[node]:
                missing[nxt] -= 1
                if missing[nxt] == 0:
                    heapq.heappush(ready, rank[nxt])
        if len(order) != len(self.nodes):
            raise CycleError(self.find_cycle() or [])
        return order

    def find_cycle(self) -> list[str] | None:
        """One cycle as a closed path ``[a, b, c, a]`` (edges point dependency -> step)."""
        white, grey, black = 0, 1, 2
        colour = dict.fromkeys(self.nodes, white)
        for root in self.nodes:
            if colour[root] != white:
                continue
            stack: list[tuple[str, int]] = [(root, 0)]
            path: list[str] = [root]
            colour[root] = grey
            while stack:
                node, i = stack[-1]
                succs = self.succs[node]
                if i < len(succs):
                    stack[-1] = (node, i + 1)
                    nxt = succs[i]
                    if colour[nxt] == grey:
                        return [*path[path.index(nxt) :], nxt]
                    if colour[nxt] == white:
                        colour[nxt] = grey
                        stack.append((nxt, 0))
                        path.append(nxt)
                else:
                    colour[node] = black
                    stack.pop()
                    path.pop()
        return None

    def descendant_masks(self, order: Sequence[str] | None = None) -> dict[str, int]:
        """Bitset (over ``self.nodes`` indices) of every node reachable from each node."""
        index = {n: i for i, n in enumerate(self.nodes)}
        masks: dict[str, int] = {}
        for node in reversed(order or self.topological_order()):
            mask = 0
            for nxt in self.succs[node]:
                mask |= (1 << index[nxt]) | masks[nxt]
            masks[node] = mask
        return masks

    def closure(self) -> set[tuple[str, str]]:
        """Every (before, after) pair the edges imply."""
        masks = self.descendant_masks()
        return {
            (node, other)
            for node in self.nodes
            for j, other in enumerate(self.nodes)
            if masks[node] >> j & 1
        }


def critical_path(
    graph: Graph, durations: Mapping[str, float], order: Sequence[str] | None = None
) -> tuple[float, list[str]]:
    """The longest chain of dependent steps by summed duration, and its steps."""
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for node in order or graph.topological_order():
        start, best = 0.0, None
        for dep in graph.preds[node]:
            if finish[dep] > start or best is None:
                start, best = max(start, finish[dep]), dep
        finish[node] = start + durations.get(node, 1.0)
        via[node] = best
    if not finish:
        return 0.0, []
    end = max(finish, key=lambda n: finish[n])
    path: list[str] = []
    cursor: str | None = end
    while cursor is not None:
        path.append(cursor)
        cursor = via[cursor]
    return finish[end], path[::-1]


def simulate(
    graph: Graph,
    durations: Mapping[str, float],
    slots: int | Mapping[str, int] | None = None,
    order: Sequence[str] | None = None,
    classes: Mapping[str, str] | None = None,
) -> tuple[float, int]:
    """List-schedule the DAG, ready steps first come first served in declaration order.

    ``slots``: None for unlimited workers, a number for one shared pool, or workers per
    class when ``classes`` maps each step to its class (a step runs only in its class's
    pool). Returns (makespan, most steps running at once).
    """
    rank = {n: i for i, n in enumerate(order or graph.topological_order())}
    klass = classes or {}
    if isinstance(slots, Mapping):
        limits: dict[str, float] = {k: float(v) for k, v in slots.items()}
    else:
        limits = {"": math.inf if slots is None else float(slots)}
        klass = {}
    missing = {n: len(graph.preds[n]) for n in graph.nodes}
    ready: dict[str, list[tuple[float, int, str]]] = {k: [] for k in limits}
    busy = dict.fromkeys(limits, 0)
    for n in graph.nodes:
        if missing[n] == 0:
            heapq.heappush(ready[klass.get(n, "")], (0.0, rank[n], n))
    running: list[tuple[float, int, str]] = []
    now, makespan, widest = 0.0, 0.0, 0
    while running or any(ready.values()):
        for k, queue in ready.items():
            while queue and busy[k] < limits[k] and queue[0][0] <= now:
                _, r, node = heapq.heappop(queue)
                heapq.heappush(running, (now + durations.get(node, 1.0), r, node))
                busy[k] += 1
        widest = max(widest, len(running))
        if not running:
            now = min(q[0][0] for q in ready.values() if q)
            continue
        now = running[0][0]
        makespan = max(makespan, now)
        # Everything finishing at the same instant frees its slot before we schedule.
        while running and running[0][0] <= now:
            _, _, done = heapq.heappop(running)
            busy[klass.get(done, "")] -= 1
            for nxt in graph.succs[done]:
                missing[nxt] -= 1
                if missing[nxt] == 0:
                    heapq.heappush(ready[klass.get(nxt, "")], (now, rank[nxt], nxt))
    return makespan, widest


def graph_of(after: Iterable[tuple[str, Sequence[str]]]) -> Graph:
    return Graph.from_after(dict(after))
