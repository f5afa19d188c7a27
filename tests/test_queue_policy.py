"""The queue watcher's decisions (aging, lending, giving back) and their topology
settings. Pure: no Redis, no workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.queues import queue_for
from config.topology import (
    PRIORITY_ORDER,
    PriorityClass,
    Rebalance,
    Topology,
    TopologyError,
    load_topology,
)
from orchestrator.queue_policy import (
    GiveBack,
    Lend,
    Loan,
    Queued,
    WorkerSeen,
    class_above,
    forgotten_loans,
    needs_inspection,
    overdue,
    rank,
    to_give_back,
    to_lend,
    waiting_since,
    workers_seen,
)
from tests.strategies import FAST

CRITICAL, DEFAULT, BULK = PRIORITY_ORDER
RULE = Rebalance(busy_depth=200, drain_depth=10)


# -- topology ---------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_max_wait_defaults_per_class_and_null_turns_aging_off(tmp_path: Path) -> None:
    topology = load_topology(
        write(tmp_path, "pools:\n  default: {concurrency: 3, max_wait_s: null}\n  bulk: {}\n")
    )
    assert topology.max_wait_s(CRITICAL) is None
    assert topology.max_wait_s(DEFAULT) is None  # written as null: never moves up
    assert topology.max_wait_s(BULK) == 300.0  # left out: the class default
    assert Topology().max_wait_s(DEFAULT) == 120.0
    assert Topology().rebalance == Rebalance()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pools: {bulk: {max_wait_s: 0}}", "pools.bulk.max_wait_s: Input should be greater than 0"),
        ("pools: {critical: {max_wait_s: 5}}", "critical is the highest class"),
        (
            "rebalance: {busy_depth: 20, drain_depth: 50}",
            "drain_depth (50) must not exceed busy_depth (20)",
        ),
        ("rebalance: {busy_depth: 0}", "rebalance.busy_depth: Input should be greater than"),
        ("rebalance: {check_every: 2}", "rebalance.check_every: Extra inputs are not permitted"),
    ],
)
def test_bad_aging_and_rebalance_settings_are_named(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(TopologyError) as caught:
        load_topology(write(tmp_path, text))
    assert message in str(caught.value)


def test_the_shipped_topology_documents_the_defaults() -> None:
    shipped = load_topology(Path(__file__).parent.parent / "config" / "topology.yaml")
    assert [shipped.max_wait_s(k) for k in PRIORITY_ORDER] == [None, 120.0, 300.0]
    assert [shipped.nice(k) for k in PRIORITY_ORDER] == [0, 0, 10]
    assert shipped.rebalance == Rebalance()


def test_bulk_pools_yield_the_cpu_by_default_and_nice_can_be_set(tmp_path: Path) -> None:
    assert [Topology().nice(k) for k in PRIORITY_ORDER] == [0, 0, 10]
    topology = load_topology(write(tmp_path, "pools:\n  bulk: {nice: 19}\n  default: {nice: 5}\n"))
    assert [topology.nice(k) for k in PRIORITY_ORDER] == [0, 5, 19]
    with pytest.raises(TopologyError, match=r"pools\.bulk\.nice"):
        load_topology(write(tmp_path, "pools: {bulk: {nice: 20}}"))


# -- aging ------------------------------------------------------------------------------


def test_a_step_moves_up_one_class_and_critical_nowhere() -> None:
    assert class_above(BULK) == DEFAULT
    assert class_above(DEFAULT) == CRITICAL
    assert class_above(CRITICAL) is None


def test_waiting_counts_from_the_latest_of_queuing_retry_and_promotion() -> None:
    assert waiting_since({"state": "queued", "queued_at": 100.0}, None) == 100.0
    assert waiting_since({"state": "queued", "queued_at": 100.0}, 150.0) == 150.0
    retry = {"state": "retrying", "queued_at": 100.0, "next_attempt_at": 170.0}
    assert waiting_since(retry, None) == 170.0
    for state in ("running", "succeeded", "pending", "cancelled"):
        assert waiting_since({"state": state, "queued_at": 100.0}, None) is None
    assert waiting_since(None, 150.0) is None  # no record: not a step we know


def queued(since: float | None, step: str = "s") -> Queued:
    return Queued(b"{}", "wf", step, "treadle.noop", since)


@FAST
@given(
    st.lists(st.one_of(st.none(), st.floats(0, 1000)), max_size=30),
    st.one_of(st.none(), st.floats(0.001, 500)),
    st.floats(0, 2000),
)
def test_overdue_is_exactly_what_waited_longer_than_max_wait(
    sinces: list[float | None], max_wait_s: float | None, now: float
) -> None:
    messages = [queued(s, f"s{i}") for i, s in enumerate(sinces)]
    due = overdue(messages, max_wait_s, now)
    expected = [
        m
        for m in messages
        if max_wait_s is not None
        and m.waiting_since is not None
        and now - m.waiting_since > max_wait_s
    ]
    assert due == expected  # and in the order seen (oldest first is kept)


# -- rebalancing: examples ----------------------------------------------------------------


def worker(node: str, home: PriorityClass, running: int = 0, *extra: PriorityClass) -> WorkerSeen:
    return WorkerSeen(node, home, frozenset(queue_for(k) for k in (home, *extra)), running)


def test_an_idle_bulk_worker_is_lent_to_a_busy_critical_queue() -> None:
    depths = {CRITICAL: 450, DEFAULT: 0, BULK: 0}
    workers = [worker("bulk-1@h", BULK), worker("critical-1@h", CRITICAL, 2)]
    assert to_lend(depths, [], workers, RULE) == [
        Lend("bulk-1@h", BULK, CRITICAL, "critical queue depth 450 > 200")
    ]


def test_busy_workers_with_work_of_their_own_or_lent_already_stay() -> None:
    depths = {CRITICAL: 450, DEFAULT: 3, BULK: 0}
    workers = [
        worker("default-1@h", DEFAULT),  # its own queue is not empty
        worker("bulk-1@h", BULK, 1),  # running a step
        worker("bulk-2@h", BULK, 0, CRITICAL),  # lent already
    ]
    loans = [Loan("bulk-2@h", BULK, CRITICAL, 1.0)]
    assert to_lend(depths, loans, workers, RULE) == []


def test_only_lower_classes_are_lent_and_the_highest_busy_class_comes_first() -> None:
    depths = {CRITICAL: 300, DEFAULT: 300, BULK: 300}
    workers = [worker("critical-1@h", CRITICAL), worker("bulk-1@h", BULK)]
    # bulk's own queue is busy: nobody is idle
    assert to_lend(depths, [], workers, RULE) == []
    depths[BULK] = 0
    lent = to_lend(depths, [], workers, RULE)
    assert [(m.node, m.helps) for m in lent] == [("bulk-1@h", CRITICAL)]


def test_a_loan_ends_when_the_queue_drains_or_its_own_queue_fills() -> None:
    loans = [Loan("bulk-1@h", BULK, CRITICAL, 1.0), Loan("bulk-2@h", BULK, DEFAULT, 1.0)]
    between = {CRITICAL: 50, DEFAULT: 50, BULK: 0}
    assert to_give_back(between, loans, RULE) == []  # hysteresis: neither busy nor drained
    drained = {CRITICAL: 9, DEFAULT: 50, BULK: 0}
    assert to_give_back(drained, loans, RULE) == [GiveBack(loans[0], "critical queue depth 9 < 10")]
    own_full = {CRITICAL: 500, DEFAULT: 500, BULK: 201}
    assert [g.reason for g in to_give_back(own_full, loans, RULE)] == [
        "its own bulk queue depth 201 > 200"
    ] * 2


def test_inspection_only_when_a_busy_class_has_classes_below() -> None:
    assert not needs_inspection({CRITICAL: 5, DEFAULT: 5, BULK: 5000}, RULE)
    assert needs_inspection({CRITICAL: 0, DEFAULT: 201, BULK: 0}, RULE)


def test_workers_are_told_apart_by_queues_loans_and_names() -> None:
    queues = {
        "orchestrator@h": [{"name": "orchestrator"}],
        "bulk-1@h": [{"name": "bulk"}, {"name": "critical"}],
        "bulk-2@h": [{"name": "bulk"}],
        "default-7@h": [{"name": "default"}, {"name": "critical"}],
        "odd@h": [{"name": "default"}, {"name": "bulk"}],
        "silent@h": [{"name": "bulk"}],
    }
    active: dict[str, list[Any]] = {node: [] for node in queues if node != "silent@h"}
    active["bulk-2@h"] = [{"id": "t"}]
    loans = [Loan("bulk-1@h", BULK, CRITICAL, 1.0)]
    seen = {w.node: w for w in workers_seen(queues, active, loans)}
    assert sorted(seen) == ["bulk-1@h", "bulk-2@h", "default-7@h"]
    assert seen["bulk-1@h"].home == BULK  # from its loan
    assert seen["bulk-2@h"].running == 1
    assert seen["default-7@h"].home == DEFAULT  # from its name


def test_a_restarted_worker_forgets_its_loan() -> None:
    loans = [Loan("bulk-1@h", BULK, CRITICAL, 1.0), Loan("bulk-2@h", BULK, CRITICAL, 1.0)]
    workers = [worker("bulk-1@h", BULK), worker("bulk-2@h", BULK, 0, CRITICAL)]
    assert forgotten_loans(loans, workers) == [loans[0]]
    assert forgotten_loans(loans, []) == []  # not answering is not forgetting


# -- rebalancing: properties --------------------------------------------------------------

classes = st.sampled_from(PRIORITY_ORDER)


@st.composite
def situations(
    draw: st.DrawFn,
) -> tuple[dict[PriorityClass, int], Rebalance, list[WorkerSeen], list[Loan]]:
    busy = draw(st.integers(1, 30))
    rule = Rebalance(busy_depth=busy, drain_depth=draw(st.integers(0, busy)))
    depths = {k: draw(st.integers(0, 60)) for k in PRIORITY_ORDER}
    count = draw(st.integers(0, 8))
    workers, loans = [], []
    for i in range(count):
        home = draw(classes)
        node = f"{home}-{i}@h"
        higher = [k for k in PRIORITY_ORDER if rank(k) < rank(home)]
        helps = draw(st.one_of(st.none(), st.sampled_from(higher))) if higher else None
        extra = (helps,) if helps is not None else ()
        workers.append(worker(node, home, draw(st.integers(0, 2)), *extra))
        if helps is not None:
            loans.append(Loan(node, home, helps, 1.0))
    return depths, rule, workers, loans


def decide(
    depths: dict[PriorityClass, int], rule: Rebalance, workers: list[WorkerSeen], loans: list[Loan]
) -> tuple[list[GiveBack], list[Lend]]:
    """One round as the watcher runs it: give back first, then lend from the rest."""
    ending = to_give_back(depths, loans, rule)
    kept = [loan for loan in loans if loan not in {g.loan for g in ending}]
    return ending, to_lend(depths, kept, workers, rule)


@FAST
@given(situations())
def test_lending_takes_only_idle_lower_workers_to_busy_queues(
    situation: tuple[dict[PriorityClass, int], Rebalance, list[WorkerSeen], list[Loan]],
) -> None:
    depths, rule, workers, loans = situation
    by_node = {w.node: w for w in workers}
    lent = to_lend(depths, loans, workers, rule)
    assert len({m.node for m in lent}) == len(lent)  # a worker is lent once
    for move in lent:
        chosen = by_node[move.node]
        assert move.node not in {loan.node for loan in loans}
        assert chosen.running == 0 and depths[chosen.home] == 0
        assert rank(move.helps) < rank(chosen.home)
        assert depths[move.helps] > rule.busy_depth
        assert queue_for(move.helps) not in chosen.queues
    # ...and every such worker is lent somewhere
    lent_nodes = {m.node for m in lent} | {loan.node for loan in loans}
    for w in workers:
        if w.node in lent_nodes or w.running or depths[w.home]:
            continue
        assert not any(
            depths[k] > rule.busy_depth and rank(k) < rank(w.home) and queue_for(k) not in w.queues
            for k in PRIORITY_ORDER
        )


@FAST
@given(situations())
def test_giving_back_is_exactly_drained_or_own_queue_full(
    situation: tuple[dict[PriorityClass, int], Rebalance, list[WorkerSeen], list[Loan]],
) -> None:
    depths, rule, _workers, loans = situation
    ending = {g.loan for g in to_give_back(depths, loans, rule)}
    for loan in loans:
        should = depths[loan.helps] < rule.drain_depth or depths[loan.home] > rule.busy_depth
        assert (loan in ending) == should


@FAST
@given(situations())
def test_a_decision_is_stable_while_the_depths_stay(
    situation: tuple[dict[PriorityClass, int], Rebalance, list[WorkerSeen], list[Loan]],
) -> None:
    """Hysteresis: nobody is lent and given back (or the reverse) on the next look."""
    depths, rule, workers, loans = situation
    ending, lent = decide(depths, rule, workers, loans)
    gone = {g.loan.node for g in ending}
    after_loans = [loan for loan in loans if loan.node not in gone] + [
        Loan(m.node, m.home, m.helps, 2.0) for m in lent
    ]
    helps = {loan.node: loan.helps for loan in after_loans}
    after_workers = [
        WorkerSeen(
            w.node,
            w.home,
            frozenset(
                {queue_for(w.home)} | ({queue_for(helps[w.node])} if w.node in helps else set())
            ),
            w.running,
        )
        for w in workers
    ]
    assert decide(depths, rule, after_workers, after_loans) == ([], [])
