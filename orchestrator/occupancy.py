"""What the audit trail says about contention: when each attempt ran, how many ran at
once, how many started in any one-second window. Pure; tests and ``ops/bench`` use it
to check limits from the recorded transitions rather than from the limiter's own word.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Run:
    """One attempt of one step, from its ``running`` record to the record that ended it
    (its outcome, or the record saying it was lost)."""

    workflow_id: str
    step_id: str
    start: float
    end: float | None  # None: still running when the trail was read


def runs(records: Iterable[Mapping[str, Any]]) -> list[Run]:
    """Every attempt in ``records`` (audit records of one or more workflows)."""
    open_runs: dict[tuple[str, str], float] = {}
    out: list[Run] = []
    for record in sorted(records, key=lambda r: float(r.get("at") or 0)):
        step = record.get("step_id")
        if step is None:
            continue
        key = (str(record.get("workflow_id")), str(step))
        at = float(record["at"])
        started = open_runs.pop(key, None)
        if started is not None:
            out.append(Run(key[0], key[1], started, at))
        # A "lost" record ends an attempt without starting one.
        if record.get("to") == "running" and not record.get("lost"):
            open_runs[key] = at
    out.extend(Run(wf, step, start, None) for (wf, step), start in open_runs.items())
    return out


def max_overlap(intervals: Sequence[Run]) -> int:
    """The most attempts running at the same moment (an end before a start at a tie)."""
    events = []
    for run in intervals:
        events.append((run.start, 1))
        events.append((run.end if run.end is not None else float("inf"), -1))
    events.sort(key=lambda e: (e[0], e[1]))
    most = current = 0
    for _, delta in events:
        current += delta
        most = max(most, current)
    return most


def max_starts_per_window(starts: Sequence[float], window_s: float = 1.0) -> int:
    """The most starts within any window of ``window_s`` (half-open: [t, t + window))."""
    ordered = sorted(starts)
    most = 0
    for i, start in enumerate(ordered):
        most = max(most, bisect.bisect_left(ordered, start + window_s) - i)
    return most


def overlapping(a: Run, b: Run) -> bool:
    end_a = a.end if a.end is not None else float("inf")
    end_b = b.end if b.end is not None else float("inf")
    return a.start < end_b and b.start < end_a
