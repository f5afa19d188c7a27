"""``treadle audit``: check a run against its graph from the recorded transitions alone,
and say how long each step waited for its dependencies and ran. Pure.

Clock-free where it matters: the audit list is totally ordered by the Lua script that
appends to it, so "b started after a succeeded" is a comparison of positions, not of
worker clocks. Waits and run times do use the recorded times.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.audit import chain_problems


@dataclass(frozen=True)
class StepTiming:
    step_id: str
    ready_at: float | None  # when its last dependency ended (submission for first steps)
    started_at: float | None  # first attempt
    finished_at: float | None
    attempts: int

    @property
    def wait_s(self) -> float | None:
        if self.ready_at is None or self.started_at is None:
            return None
        return max(self.started_at - self.ready_at, 0.0)

    @property
    def run_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclass(frozen=True)
class AuditReport:
    workflow_id: str
    records: int
    problems: list[str] = field(default_factory=list)
    timings: list[StepTiming] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.workflow_id,
            "ok": self.ok,
            "records": self.records,
            "problems": self.problems,
            "steps": [
                {
                    "id": t.step_id,
                    "attempts": t.attempts,
                    "ready_at": t.ready_at,
                    "started_at": t.started_at,
                    "finished_at": t.finished_at,
                    "wait_s": t.wait_s,
                    "run_s": t.run_s,
                }
                for t in self.timings
            ],
        }


def order_problems(entries: Sequence[str], after: Mapping[str, Sequence[str]]) -> list[str]:
    """Every edge violated (a step started before a dependency succeeded) and every step
    that succeeded twice; empty when the run was faithful to the graph."""
    started: dict[str, list[int]] = {}
    succeeded: dict[str, list[int]] = {}
    for position, record in enumerate(_records(entries)):
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


def audit(
    workflow_id: str,
    entries: Sequence[str],
    tail: str,
    after: Mapping[str, Sequence[str]],
) -> AuditReport:
    problems = chain_problems(entries, tail)
    if problems:
        # A broken chain makes every other conclusion drawn from it worthless.
        return AuditReport(workflow_id, len(entries), problems)
    records = _records(entries)
    submitted = next((r.get("at") for r in records if r.get("step_id") is None), None)
    ended: dict[str, float] = {}
    started: dict[str, float] = {}
    attempts: dict[str, int] = {}
    for record in records:
        step, to = record.get("step_id"), record.get("to")
        if step is None:
            continue
        if to == "running":
            started.setdefault(step, record["at"])
            attempts[step] = attempts.get(step, 0) + 1
        elif to in ("succeeded", "failed", "skipped", "cancelled", "dead-lettered"):
            ended[step] = record["at"]
    timings = []
    for step, deps in after.items():
        dep_ends = [ended.get(d) for d in deps]
        ready = (
            submitted
            if not deps
            else max(d for d in dep_ends if d is not None)
            if all(dep_ends)
            else None
        )
        timings.append(
            StepTiming(step, ready, started.get(step), ended.get(step), attempts.get(step, 0))
        )
    return AuditReport(workflow_id, len(entries), order_problems(entries, after), timings)


def _records(entries: Sequence[str]) -> list[dict[str, Any]]:
    return [json.loads(e) for e in entries]
