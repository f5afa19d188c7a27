"""The audit trail: chained records, and the checks `treadle audit` makes of them. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.audit import GENESIS, chain_problems, ends_digest, seal
from orchestrator.audit_report import audit, order_problems

AFTER = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def chained(records: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """Each step's records chained together, the workflow's own together, as the store
    does; a start names where its dependencies' chains (by ``AFTER``) end."""
    entries: list[str] = []
    ends: dict[str, str] = {}
    for record in records:
        chain = record.get("step_id") or ""
        if record.get("to") == "running" and AFTER.get(chain):
            record = {**record, "after": {d: ends.get(d, GENESIS) for d in AFTER[chain]}}
        text, ends[chain] = seal(record, ends.get(chain, GENESIS))
        entries.append(text)
    return entries, ends


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


def test_the_digest_of_the_chains_ends_checks_the_trail_as_the_ends_do() -> None:
    entries, tails = chained(FAITHFUL)
    digest = ends_digest(tails)
    assert chain_problems(entries, digest) == []
    assert chain_problems(entries[:-1], digest)
    assert audit("w", entries, digest, AFTER).ok


def test_a_cut_chain_is_named_by_its_step() -> None:
    entries, tails = chained(FAITHFUL)
    without_c_end = [e for e in entries if '"step_id":"c","to":"succeeded"' not in e]
    assert len(without_c_end) == len(entries) - 1
    assert chain_problems(without_c_end, tails) == [
        "the last record of step c is not the one it points to (cut or edited)"
    ]


def test_records_moved_across_chains_are_caught_by_the_start_naming_its_dependencies() -> None:
    entries, tails = chained(FAITHFUL)
    # b's start moved before a's end: every chain is still intact on its own...
    b_start = next(i for i, e in enumerate(entries) if '"step_id":"b","to":"running"' in e)
    a_end = next(i for i, e in enumerate(entries) if '"step_id":"a","to":"succeeded"' in e)
    moved = list(entries)
    moved.insert(a_end, moved.pop(b_start))
    assert chain_problems(moved, tails) == []
    # ...but b's start names a's end, which is now after it.
    problems = order_problems(moved, AFTER)
    assert (
        f"record {a_end}: step b names a record of a that does not come before it (reordered)"
        in problems
    )
    assert "step b started before its dependency a ended" in problems
