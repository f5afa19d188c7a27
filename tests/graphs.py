"""Graph shapes the makespan corpus and end-to-end tests share (step id -> its `after`)."""

from __future__ import annotations

import random

Dag = dict[str, list[str]]


def n_shape() -> Dag:
    return {"a": [], "b": [], "c": ["a", "b"], "d": ["b"]}


def w_shape() -> Dag:
    return {"a": [], "b": [], "c": [], "x": ["a", "b"], "y": ["b", "c"], "z": ["c"]}


def diamond_of_diamonds() -> Dag:
    return {
        "a": [],
        "b1": ["a"],
        "b2": ["a"],
        "b3": ["b1", "b2"],
        "c1": ["a"],
        "c2": ["a"],
        "c3": ["c1", "c2"],
        "d": ["b3", "c3"],
    }


def layered_dag(rng: random.Random, nodes: int = 50, layers: int = 6) -> Dag:
    """Steps in layers; each takes 1-3 dependencies from the layer before: rarely
    series-parallel, so it exercises the counters."""
    sizes = [nodes // layers + (1 if i < nodes % layers else 0) for i in range(layers)]
    after: Dag = {}
    previous: list[str] = []
    for layer, size in enumerate(sizes):
        current = [f"l{layer}-{i}" for i in range(size)]
        for sid in current:
            after[sid] = sorted(rng.sample(previous, min(len(previous), rng.randint(1, 3))))
        previous = current
    return after


CORPUS: dict[str, Dag] = {
    "n-shape": n_shape(),
    "w-shape": w_shape(),
    "diamond-of-diamonds": diamond_of_diamonds(),
}
