"""Check, from the recorded transitions alone, that a run respected its graph. Pure.

Clock-free: the audit list is totally ordered by the Lua script that appends to it, so
"b started after a succeeded" is a comparison of positions, not of worker clocks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence


def order_problems(entries: Sequence[str], after: Mapping[str, Sequence[str]]) -> list[str]:
    """Every edge violated (a step started before a dependency succeeded) and every step
    that succeeded twice; empty when the run was faithful to the graph."""
    records = [json.loads(e) for e in entries]
    started: dict[str, list[int]] = {}
    succeeded: dict[str, list[int]] = {}
    for position, record in enumerate(records):
        step = record.get("step_id")
        if step is None:
            continue
        if record.get("to") == "running":
            started.setdefault(step, []).append(position)
        elif record.get("to") == "succeeded":
            succeeded.setdefault(step, []).append(position)
    problems: list[str] = []
    for step, positions in succeeded.items():
        if len(positions) > 1:
            problems.append(f"step {step} succeeded {len(positions)} times")
    for step, deps in after.items():
        for start in started.get(step, []):
            for dep in deps:
                done = succeeded.get(dep)
                if not done or done[0] > start:
                    problems.append(f"step {step} started before its dependency {dep} succeeded")
    return problems
