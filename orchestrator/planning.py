"""``treadle plan``: what a workflow compiles to, and what its shape means for its run
time — the long walk, the short path, and what the configured pools will actually do.

Pure: durations and pool sizes are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from config.topology import Topology
from orchestrator.compiler import Compiled, compile_workflow, plan_timeline, to_json
from orchestrator.dag import Graph, critical_path, simulate
from orchestrator.errors import InvalidInput, Problem
from orchestrator.model import Workflow

UNIT_S = 1.0  # what a step counts for when no durations are given


@dataclass(frozen=True)
class Estimates:
    sequential_s: float  # every step one after another, one worker
    parallel_s: float  # every step as soon as its dependencies allow, unlimited workers
    configured_s: float  # the pools' concurrency, each step in its own class's pool
    slots: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "sequential_s": self.sequential_s,
            "parallel_s": self.parallel_s,
            "configured_s": self.configured_s,
            "configured_slots": dict(self.slots),
        }


@dataclass(frozen=True)
class Plan:
    workflow: Workflow
    compiled: Compiled
    critical_path: list[str]
    critical_length_s: float
    width: int
    estimates: Estimates
    durations_given: bool

    def to_json(self) -> dict[str, Any]:
        canvas = self.compiled.canvas
        return {
            "name": self.workflow.name,
            "steps": len(self.workflow.steps),
            "canvas": to_json(canvas) if canvas is not None else None,
            "counters": sorted(self.compiled.counters),
            "critical_path": self.critical_path,
            "critical_path_s": self.critical_length_s,
            "width": self.width,
            "estimates": self.estimates.to_json(),
            "durations": "given" if self.durations_given else f"each step {UNIT_S:g} s",
        }


def check_durations(raw: Any, workflow: Workflow, source: str) -> dict[str, float]:
    """A ``--durations`` file: step id -> seconds, for steps of this workflow."""
    if not isinstance(raw, Mapping):
        raise InvalidInput(Problem("", "expected a mapping of step id to seconds"), source)
    known = workflow.by_id
    problems, durations = [], {}
    for step_id, seconds in raw.items():
        if step_id not in known:
            problems.append(Problem(str(step_id), "no such step in the workflow"))
        elif isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            problems.append(Problem(str(step_id), f"{seconds!r} is not a number of seconds"))
        else:
            durations[str(step_id)] = float(seconds)
    if problems:
        raise InvalidInput(problems, source)
    return durations


def make_plan(
    workflow: Workflow,
    topology: Topology,
    durations: Mapping[str, float] | None = None,
) -> Plan:
    graph = Graph.from_after({s.id: s.after for s in workflow.steps})
    order = graph.topological_order()
    lengths = {s.id: UNIT_S for s in workflow.steps}
    lengths.update(durations or {})
    compiled = compile_workflow(workflow)
    length, path = critical_path(graph, lengths, order)
    timeline = plan_timeline(compiled, graph, lengths)
    _, width = simulate(graph, lengths, None, order)
    classes = {s.id: workflow.step_priority(s).value for s in workflow.steps}
    slots = {
        k: topology.pool(workflow.step_priority(s)).concurrency
        for s in workflow.steps
        for k in [classes[s.id]]
    }
    configured, _ = simulate(graph, lengths, slots, order, classes)
    return Plan(
        workflow=workflow,
        compiled=compiled,
        critical_path=path,
        critical_length_s=length,
        width=width,
        estimates=Estimates(
            sequential_s=sum(lengths.values()),
            parallel_s=max(end for _, end in timeline.values()),
            configured_s=configured,
            slots=slots,
        ),
        durations_given=bool(durations),
    )
