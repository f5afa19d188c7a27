"""The audit trail: chained records, and the checks `treadle audit` makes of them. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.audit import GENESIS, chain_problems, seal
from orchestrator.audit_report import audit, order_problems

AFTER = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def chained(records: list[dict[str, Any]]) -> tuple[list[str], str]:
    entries, tail = [], GENESIS
    for record in records:
        text, tail = seal(record, tail)
        entries.append(text)
    return entries, tail


def run(*events: tuple[str | None, str, float]) -> list[dict[str, Any]]:
    records = []
    for step, to, at in events:
        record: dict[str, Any] = {"step_id": step, "to": to, "at": at}
        if to == "running":
            record["attempt"] = 1
        records.append(record)
    return records


FAITHFUL = run(
    (None, "pending", 0.0),
    ("a", "running", 1.0),
    ("a", "succeeded", 2.0),
    ("b", "running", 2.5),
    ("c", "running", 2.1),
    ("c", "succeeded", 3.0),
    ("b", "succeeded", 4.0),
    ("d", "running", 4.2),
    ("d", "succeeded", 5.0),
)


def test_a_faithful_run_passes_with_waits_and_run_times() -> None:
    entries, tail = chained(FAITHFUL)
    report = audit("w", entries, tail, AFTER)
    assert report.ok, report.problems
    timing = {t.step_id: t for t in report.timings}
    assert timing["a"].wait_s == pytest.approx(1.0)  # from submission
    assert timing["b"].wait_s == pytest.approx(0.5)
    assert timing["d"].ready_at == 4.0  # its later dependency, b
    assert timing["d"].wait_s == pytest.approx(0.2)
    assert timing["d"].run_s == pytest.approx(0.8)


def test_a_step_started_before_its_dependency_is_a_violation() -> None:
    doctored = run(
        (None, "pending", 0.0),
        ("a", "running", 1.0),
        ("b", "running", 1.5),
        ("a", "succeeded", 2.0),
        ("b", "succeeded", 3.0),
    )
    entries, tail = chained(doctored)
    report = audit("w", entries, tail, {"a": [], "b": ["a"]})
    assert not report.ok
    assert report.problems == ["step b started before its dependency a ended"]


def test_only_all_done_steps_may_follow_a_dependency_that_did_not_succeed() -> None:
    records = run(
        (None, "pending", 0.0),
        ("a", "running", 1.0),
        ("a", "failed", 2.0),
        ("b", "running", 3.0),
        ("b", "succeeded", 4.0),
    )
    entries, _ = chained(records)
    assert order_problems(entries, {"a": [], "b": ["a"]}) == [
        "step b started although its dependency a failed"
    ]
    assert order_problems(entries, {"a": [], "b": ["a"]}, all_done=["b"]) == []


def test_a_step_that_succeeded_twice_is_a_violation() -> None:
    twice = [*FAITHFUL, *run(("a", "running", 6.0), ("a", "succeeded", 7.0))]
    assert "step a succeeded 2 times" in order_problems(chained(twice)[0], AFTER)


def test_an_edited_removed_or_reordered_record_breaks_the_chain() -> None:
    entries, tail = chained(FAITHFUL)
    edited = list(entries)
    edited[3] = edited[3].replace('"at":2.5', '"at":2.6')
    assert chain_problems(edited, tail)
    assert chain_problems(entries[:4] + entries[5:], tail)
    assert chain_problems([entries[0], entries[2], entries[1], *entries[3:]], tail)
    assert chain_problems(entries[:-1], tail)  # the last one cut off
    report = audit("w", edited, tail, AFTER)
    assert not report.ok and report.timings == []
    assert chain_problems(entries, tail) == []
