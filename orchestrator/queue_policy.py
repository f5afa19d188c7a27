"""What the queue watcher decides, without any I/O (``orchestrator.queue_watch`` does that).

Aging: a step that has waited on its class's queue longer than the class's ``max_wait_s``
moves up one class. It counts from when it entered the queue it is on: when it was
queued (or its retry fell due), or when it was last moved up, so a step climbs one class
per ``max_wait_s`` rather than jumping straight to the top.

Rebalancing: a class whose queue is longer than ``busy_depth`` borrows the idle workers
of the classes below it (a worker is idle when its own queue is empty and it runs
nothing); each goes back when that queue is shorter than ``drain_depth``, or when its own
queue grows longer than ``busy_depth``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from config.queues import queue_for
from config.topology import PRIORITY_ORDER, PriorityClass, Rebalance

# A step whose message is on a queue waits to run only in these states; a message of a
# step in any other state is a duplicate its worker will drop, not worth moving.
_WAITING_STATES = frozenset({"queued", "retrying"})


def rank(klass: PriorityClass) -> int:
    """0 for the highest class; larger is lower."""
    return PRIORITY_ORDER.index(klass)


def class_above(klass: PriorityClass) -> PriorityClass | None:
    """The class a step of ``klass`` moves up to; None for the highest."""
    position = rank(klass)
    return PRIORITY_ORDER[position - 1] if position > 0 else None


# -- aging ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    """A step message seen on a class's queue."""

    raw: bytes  # exactly as it is on the list, to remove that very message
    workflow_id: str
    step_id: str
    task: str
    waiting_since: float | None  # None: its step is not waiting to run
    others: tuple[str, ...] = ()  # the other steps of a bundle (orchestrator.bundles)


def waiting_since(record: Mapping[str, Any] | None, promoted_at: float | None) -> float | None:
    """When a step's message entered the queue it is on, from its step record and the time
    it was last moved up (None if never); None if the step is not waiting to run."""
    if record is None or record.get("state") not in _WAITING_STATES:
        return None
    # A retry's message is published when it falls due, long after the first queuing.
    since = max(float(record.get("queued_at") or 0), float(record.get("next_attempt_at") or 0))
    if promoted_at is not None:
        since = max(since, promoted_at)
    return since or None


def overdue(queued: Iterable[Queued], max_wait_s: float | None, now: float) -> list[Queued]:
    """The messages that have waited longer than ``max_wait_s`` (None: none ever has)."""
    if max_wait_s is None:
        return []
    return [q for q in queued if q.waiting_since is not None and now - q.waiting_since > max_wait_s]


# -- rebalancing ------------------------------------------------------------------------


@dataclass(frozen=True)
class Loan:
    """A worker of class ``home`` told to also consume the queue of class ``helps``."""

    node: str
    home: PriorityClass
    helps: PriorityClass
    since: float


@dataclass(frozen=True)
class WorkerSeen:
    """A worker as it answered the last inspection."""

    node: str
    home: PriorityClass
    queues: frozenset[str]  # every queue it consumes now
    running: int  # steps it runs now


@dataclass(frozen=True)
class Lend:
    node: str
    home: PriorityClass
    helps: PriorityClass
    reason: str


@dataclass(frozen=True)
class GiveBack:
    loan: Loan
    reason: str


def busy_classes(depths: Mapping[PriorityClass, int], rule: Rebalance) -> list[PriorityClass]:
    """Classes whose queue is long enough to borrow workers, highest first."""
    return [k for k in PRIORITY_ORDER if depths.get(k, 0) > rule.busy_depth]


def needs_inspection(depths: Mapping[PriorityClass, int], rule: Rebalance) -> bool:
    """Whether some busy class has classes below it to borrow from (the lowest class
    borrows from nobody), which is what the slow worker inspection is for."""
    return any(rank(k) < len(PRIORITY_ORDER) - 1 for k in busy_classes(depths, rule))


def to_give_back(
    depths: Mapping[PriorityClass, int], loans: Iterable[Loan], rule: Rebalance
) -> list[GiveBack]:
    """Loans to end: the queue they help has drained, or their own has filled up."""
    out = []
    for loan in sorted(loans, key=lambda item: item.node):
        helped, own = depths.get(loan.helps, 0), depths.get(loan.home, 0)
        if helped < rule.drain_depth:
            reason = f"{loan.helps} queue depth {helped} < {rule.drain_depth}"
        elif own > rule.busy_depth:
            reason = f"its own {loan.home} queue depth {own} > {rule.busy_depth}"
        else:
            continue
        out.append(GiveBack(loan, reason))
    return out


def to_lend(
    depths: Mapping[PriorityClass, int],
    loans: Iterable[Loan],
    workers: Iterable[WorkerSeen],
    rule: Rebalance,
) -> list[Lend]:
    """Idle workers of lower classes to lend to busy classes, the highest class first;
    a worker already lent, or with work of its own, stays where it is."""
    taken = {loan.node for loan in loans}
    idle = sorted(
        (w for w in workers if w.running == 0 and depths.get(w.home, 0) == 0),
        key=lambda w: w.node,
    )
    out = []
    for busy in busy_classes(depths, rule):
        for worker in idle:
            if worker.node in taken or rank(worker.home) <= rank(busy):
                continue
            if queue_for(busy) in worker.queues:
                continue  # it consumes that queue already, whoever arranged it
            out.append(
                Lend(
                    worker.node,
                    worker.home,
                    busy,
                    f"{busy} queue depth {depths[busy]} > {rule.busy_depth}",
                )
            )
            taken.add(worker.node)
    return out


def forgotten_loans(loans: Iterable[Loan], workers: Iterable[WorkerSeen]) -> list[Loan]:
    """Loans whose worker answered without consuming the queue it was lent to: it was
    restarted (a new worker consumes only its own queue) and owes nothing."""
    seen = {w.node: w for w in workers}
    return [
        loan
        for loan in loans
        if loan.node in seen and queue_for(loan.helps) not in seen[loan.node].queues
    ]


def workers_seen(
    active_queues: Mapping[str, Sequence[Mapping[str, Any]]],
    active: Mapping[str, Sequence[Any]],
    loans: Iterable[Loan],
) -> list[WorkerSeen]:
    """Workers of the priority classes, from the replies of an inspection.

    A worker's class is the one it was lent from, else the one class queue it consumes;
    one consuming several, without a loan to explain it, is told apart by its node name
    (``<class>-<n>@host``). Workers that consume no class queue (the orchestrator), and
    workers that did not say what they run, are left out: nobody lends them.
    """
    homes = {loan.node: loan.home for loan in loans}
    by_queue = {queue_for(k): k for k in PRIORITY_ORDER}
    out = []
    for node, queues in active_queues.items():
        if node not in active:
            continue
        names = frozenset(str(q.get("name")) for q in queues)
        classes = [by_queue[n] for n in names if n in by_queue]
        home = homes.get(node)
        if home is None and len(classes) == 1:
            home = classes[0]
        if home is None:
            prefix = node.split("@", 1)[0].rsplit("-", 1)[0]
            home = next((k for k in classes if k.value == prefix), None)
        if home is None:
            continue
        out.append(WorkerSeen(node, home, names, len(active[node])))
    return out
