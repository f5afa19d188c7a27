"""``treadle plan``: what a workflow compiles to and how its shape bounds its run time. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.compiler import Compiled, to_json
from orchestrator.dag import Graph, critical_path, simulate
from orchestrator.model import Workflow
from orchestrator.service import compile_workflow


@dataclass(frozen=True)
class Plan:
    workflow: Workflow
    compiled: Compiled
    critical_path: list[str]
    critical_length: float
    width: int
    durations: Mapping[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.workflow.name,
            "steps": len(self.workflow.steps),
            "canvas": to_json(self.compiled.canvas),
            "exact": self.compiled.exact,
            "levelled_steps": sorted(self.compiled.levelled),
            "critical_path": self.critical_path,
            "critical_path_length": self.critical_length,
            "width": self.width,
            "duration_unit": "steps (each step counted as 1)",
        }


def make_plan(workflow: Workflow, durations: Mapping[str, float] | None = None) -> Plan:
    graph = Graph.from_after({s.id: s.after for s in workflow.steps})
    order = graph.topological_order()
    lengths = dict(durations or {})
    length, path = critical_path(graph, lengths, order)
    _, width = simulate(graph, lengths, None, order)
    return Plan(
        workflow=workflow,
        compiled=compile_workflow(workflow),
        critical_path=path,
        critical_length=length,
        width=width,
        durations=lengths,
    )
