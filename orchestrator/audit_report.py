"""``treadle audit``: check a run against its graph from the recorded transitions alone,
and say how long each step waited for its dependencies and ran. Pure.

Clock-free where it matters: the audit list is totally ordered by the Lua script that
appends to it, so "b started after a succeeded" is a comparison of positions, not of
worker clocks; and the record of b's start names the last record of each dependency's
chain as it read it (``after``), which seals that order against the list being
reordered. Waits and run times do use the recorded times.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.audit import GENESIS, chain_of, chain_problems


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

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditReport:
        """The report ``to_json`` described (as the HTTP API sends it)."""
        timings = [
            StepTiming(
                s["id"],
                s.get("ready_at"),
                s.get("started_at"),
                s.get("finished_at"),
                int(s.get("attempts", 0)),
            )
            for s in data.get("steps", [])
        ]
        return cls(data["id"], int(data["records"]), list(data.get("problems", [])), timings)


_FINAL = ("succeeded", "failed", "skipped", "cancelled", "dead-lettered", "compensated")


def order_problems(
    entries: Sequence[str],
    after: Mapping[str, Sequence[str]],
    all_done: Iterable[str] = (),
) -> list[str]:
    """Every edge violated and every step that succeeded twice; empty when the run was
    faithful to the graph.

    A step may start once each dependency has ended: succeeded, or with ``trigger:
    all_done`` (the steps named in ``all_done``) ended in any way.
    """
    started: dict[str, list[int]] = {}
    ended: dict[str, list[tuple[int, str]]] = {}
    succeeded: dict[str, int] = {}
    problems = _unsealed_order(entries)
    for position, record in enumerate(_records(entries)):
        step, to = record.get("step_id"), record.get("to")
        if step is None:
            continue
        if _starts(record):
            started.setdefault(step, []).append(position)
        elif to in _FINAL:
            ended.setdefault(step, []).append((position, to))
            if to == "succeeded":
                succeeded[step] = succeeded.get(step, 0) + 1
    problems += [f"step {s} succeeded {n} times" for s, n in succeeded.items() if n > 1]
    lenient = set(all_done)
    for step, deps in after.items():
        for start in started.get(step, []):
            for dep in deps:
                # What counts is how the dependency had last ended when the step started
                # (a resume runs a failed dependency again).
                before = [end for end in ended.get(dep, []) if end[0] < start]
                if not before:
                    problems.append(f"step {step} started before its dependency {dep} ended")
                elif before[-1][1] != "succeeded" and step not in lenient:
                    problems.append(
                        f"step {step} started although its dependency {dep} {before[-1][1]}"
                    )
    return problems


def _unsealed_order(entries: Sequence[str]) -> list[str]:
    """Starts whose ``after`` names a record of a dependency that does not come before
    them: the list was reordered across chains (each chain's own order is checked by its
    hashes). Any earlier record of the dependency will do, not only its last: one may be
    added after the start read it (a compensation racing a failing workflow)."""
    problems = []
    seen: dict[str, set[str]] = {}  # each chain's hashes so far, record by record
    for position, (text, record) in enumerate(zip(entries, _records(entries), strict=True)):
        for dep, end in (record.get("after") or {}).items():
            if end != GENESIS and end not in seen.get(dep, ()):
                problems.append(
                    f"record {position}: step {record.get('step_id')} names a record of {dep} "
                    "that does not come before it (reordered)"
                )
        seen.setdefault(chain_of(record), set()).add(hashlib.sha256(text.encode()).hexdigest())
    return problems


def audit(
    workflow_id: str,
    entries: Sequence[str],
    tails: Mapping[str, str] | str,
    after: Mapping[str, Sequence[str]],
    all_done: Iterable[str] = (),
) -> AuditReport:
    """``tails``: where the store says each chain ends, or their digest (see
    ``orchestrator.audit.chain_problems``)."""
    problems = chain_problems(entries, tails)
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
        if _starts(record):
            started[step] = record["at"]  # the last run is the one that counts
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
    problems = order_problems(entries, after, all_done)
    return AuditReport(workflow_id, len(entries), problems, timings)


def _starts(record: Mapping[str, Any]) -> bool:
    # A record that an attempt was lost keeps the step running but starts nothing.
    return record.get("to") == "running" and not record.get("lost")


def _records(entries: Sequence[str]) -> list[dict[str, Any]]:
    return [json.loads(e) for e in entries]
