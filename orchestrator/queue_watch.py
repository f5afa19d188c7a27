"""The queue watcher: aging of waiting steps, and lending idle workers to busy queues.

The orchestrator process runs it on a thread of its own every ``rebalance.check_every_s``
(see ``install_queue_watch``). Each look:

1. **Ages** the oldest messages of every class's queue (kombu LPUSHes and workers BRPOP,
   so the oldest are at the right end; at most ``AGING_SCAN`` per queue and look): a step
   that has waited longer than its class's ``max_wait_s`` moves, by one Lua script
   (``lua/promote.lua``), to the consuming end of the next higher class's queue, so it
   runs next there. Its message carries the time of the move, from which it waits anew.
2. **Rebalances** under a short Redis lock, so that several orchestrators do not fight:
   loans whose busy queue drained, or whose worker's own queue filled up, end with
   ``cancel_consumer``; if a queue is busy, the workers are inspected (a broadcast that
   takes ``inspect_timeout_s``, which is why this runs on its own thread) and idle
   workers of lower classes are told to ``add_consumer`` it. Loans are kept in Redis
   (``Keys.lent_workers``), so any orchestrator, a restarted one too, gives them back.

The decisions themselves are pure functions in ``orchestrator.queue_policy``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery, bootsteps
from redis.exceptions import LockError

from config.celery_app import make_app
from config.queues import queue_for
from config.redis_client import connect
from config.settings import Settings
from config.topology import PRIORITY_ORDER, PriorityClass, Topology
from orchestrator import tickets
from orchestrator.errors import NotFound
from orchestrator.keys import Keys
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
    to_give_back,
    to_lend,
    waiting_since,
    workers_seen,
)
from orchestrator.store import Change, Conflict, StateStore, lua_script, text

log = logging.getLogger("treadle.queue_watch")

# Oldest messages of a queue looked at per look: enough to keep up with any backlog
# (each look moves them all if they are overdue) without reading a long queue whole.
AGING_SCAN = 100

# When a message was last moved up a class: it waits anew from then.
PROMOTED_AT_HEADER = "treadle_promoted_at"

# How long to wait for a worker to confirm a loan or its end. Addressed to one node, the
# call returns as soon as it answers; only a stopped worker costs the whole wait.
REPLY_TIMEOUT_S = 3.0

# Every remote-control call here runs on a broker connection of its own. On Redis, a call
# that ends by its timeout leaves kombu's BRPOP on the reply queue waiting, and on a
# shared connection that BRPOP swallows the replies to the next call (seen here: about
# one inspection in three came back empty). Calls addressed to known workers also pass
# ``limit`` so they end when the last one has answered, not by the timeout.


@dataclass(frozen=True)
class Promotion:
    workflow_id: str
    step_id: str
    task: str
    source: PriorityClass
    target: PriorityClass
    waited_s: float
    others: tuple[str, ...] = ()  # the other steps of its bundle, moved with it


@dataclass
class Look:
    """What one look at the queues did."""

    depths: dict[PriorityClass, int] = field(default_factory=dict)
    promoted: list[Promotion] = field(default_factory=list)
    lent: list[Lend] = field(default_factory=list)
    given_back: list[GiveBack] = field(default_factory=list)


class QueueWatch:
    def __init__(self, client: redis.Redis, keys: Keys, app: Celery, topology: Topology):
        self.redis = client
        self.keys = keys
        self.app = app
        self.topology = topology
        self.rule = topology.rebalance
        self.store = StateStore(client, keys)
        self._promote = client.register_script(lua_script("promote.lua"))

    @classmethod
    def connect(cls, settings: Settings, redis_url: str, topology: Topology) -> QueueWatch:
        # No retry window: a look that fails is simply made again at the next tick.
        client = connect(redis_url, settings, retry_s=0)
        return cls(client, Keys(settings.key_prefix), make_app(settings, redis_url), topology)

    def close(self) -> None:
        self.redis.close()
        self.app.close()

    def look(self, now: float | None = None) -> Look:
        now = time.time() if now is None else now
        done = Look()
        done.promoted = self.age(now)
        done.depths = self.depths()
        done.given_back, done.lent = self.rebalance(done.depths)
        return done

    def depths(self) -> dict[PriorityClass, int]:
        with self.redis.pipeline(transaction=False) as pipe:
            for klass in PRIORITY_ORDER:
                pipe.llen(queue_for(klass))
            lengths = pipe.execute()
        return {k: int(n) for k, n in zip(PRIORITY_ORDER, lengths, strict=True)}

    # -- aging ----------------------------------------------------------------------

    def age(self, now: float) -> list[Promotion]:
        promoted: list[Promotion] = []
        for klass in PRIORITY_ORDER:
            target, max_wait_s = class_above(klass), self.topology.max_wait_s(klass)
            if target is None or max_wait_s is None:
                continue
            raws = self.redis.lrange(queue_for(klass), -AGING_SCAN, -1)
            due = overdue(self._read(reversed(raws)), max_wait_s, now)
            if due:
                promoted += self._move(due, klass, target, now)
        return promoted

    def _read(self, raws: Any) -> list[Queued]:
        """The step messages among ``raws``, in the order given, with how long each has
        waited according to its step's record."""
        seen: list[tuple[bytes, str, str, str, float | None, tuple[str, ...]]] = []
        for raw in raws:
            try:
                payload = json.loads(raw)
                headers = payload["headers"]
                task = str(headers["task"])
                promoted_at = headers.get(PROMOTED_AT_HEADER)
            except (ValueError, TypeError, KeyError):
                continue  # not a Celery message: not ours to move
            keys = tickets.keys_of_payload(payload)
            # A fan-out's join has no step record to tell its age, and takes milliseconds.
            if not keys or keys[0][1].endswith(tickets.JOIN_SUFFIX):
                continue
            others = tuple(step_id for _wid, step_id in keys[1:])
            seen.append((raw, keys[0][0], keys[0][1], task, _float(promoted_at), others))
        wanted: dict[str, list[str]] = defaultdict(list)
        for _raw, workflow_id, step_id, _task, _at, _others in seen:
            wanted[workflow_id].append(step_id)
        records = {wid: self.store.step_records_of(wid, ids) for wid, ids in wanted.items()}
        # A bundle's steps were queued together: its first step tells its age.
        return [
            Queued(raw, wid, sid, task, waiting_since(records[wid].get(sid), at), others)
            for raw, wid, sid, task, at, others in seen
        ]

    def _move(
        self, due: Sequence[Queued], source: PriorityClass, target: PriorityClass, now: float
    ) -> list[Promotion]:
        # ``due`` is oldest first; the last message pushed is the first taken, so push the
        # youngest first and the oldest runs first.
        order = list(reversed(due))
        planned = [
            Promotion(
                q.workflow_id,
                q.step_id,
                q.task,
                source,
                target,
                now - (q.waiting_since or now),
                q.others,
            )
            for q in order
        ]
        # Recorded before the move: an idle worker of the target class takes a moved
        # message at once, and the step's audit trail must show the move before the run.
        for promotion in planned:
            self._record(promotion, now)
        args: list[bytes | str] = []
        for queued in order:
            args += [queued.raw, _moved_message(queued.raw, target, now)]
        flags = self._promote(keys=[queue_for(source), queue_for(target)], args=args)
        promoted = []
        for promotion, moved in zip(planned, flags, strict=True):
            if not int(moved):
                # A worker took it (or another orchestrator moved it) between the record
                # and the move: the trail says so.
                self._record(promotion, now, moved=False)
                continue
            log.info(
                "workflow %s step %s (%s) waited %.1f s on the %s queue, longer than its "
                "max_wait_s %s: moved up to the front of the %s queue",
                promotion.workflow_id,
                promotion.step_id,
                promotion.task,
                promotion.waited_s,
                source,
                self.topology.max_wait_s(source),
                target,
            )
            promoted.append(promotion)
        return promoted

    def _record(self, promotion: Promotion, now: float, moved: bool = True) -> None:
        """Put the move in the step's audit trail (and its record, for ``treadle status``);
        with ``moved=False``, that the move recorded just before did not happen."""
        for step_id in (promotion.step_id, *promotion.others):
            self._record_step(promotion, step_id, now, moved)

    def _record_step(self, promotion: Promotion, step_id: str, now: float, moved: bool) -> None:
        record = self.store.step_records_of(promotion.workflow_id, [step_id])
        state = record.get(step_id, {}).get("state")
        if state is None:
            return  # its workflow is gone
        move = f"{promotion.source.value} -> {promotion.target.value}"
        if moved:
            fields: dict[str, Any] = {"promoted_to": promotion.target.value, "promoted_at": now}
            audit: dict[str, Any] = {
                "at": now,
                "promoted": move,
                "waited_s": round(promotion.waited_s, 3),
            }
        else:
            fields = {"promoted_to": None, "promoted_at": None}
            audit = {
                "at": time.time(),
                "not_promoted": move,
                "why": "taken from its queue before the move",
            }
        change = Change(step_id, state, state, fields, audit)
        with contextlib.suppress(Conflict, NotFound):  # it moved on meanwhile: it ran
            self.store.apply(promotion.workflow_id, [change])

    # -- rebalancing ----------------------------------------------------------------

    def rebalance(self, depths: dict[PriorityClass, int]) -> tuple[list[GiveBack], list[Lend]]:
        lock = self.redis.lock(
            self.keys.queue_watch_lock,
            # Enough for the inspection or one move; renewed before every move, so a
            # crashed orchestrator holds up the others only this long.
            timeout=2 * self.rule.inspect_timeout_s + REPLY_TIMEOUT_S + 2,
            blocking=False,
        )
        if not lock.acquire():
            return [], []  # another orchestrator decides this round

        def still_mine() -> bool:
            try:
                return bool(lock.reacquire())
            except LockError:
                log.warning("rebalancing took longer than its lock: left to the next look")
                return False

        try:
            return self._rebalance(depths, still_mine)
        finally:
            with contextlib.suppress(LockError):  # it expired: another may decide now
                lock.release()

    def _rebalance(
        self, depths: dict[PriorityClass, int], still_mine: Callable[[], bool]
    ) -> tuple[list[GiveBack], list[Lend]]:
        loans = self.loans()
        if not self.rule.enabled:
            ending = [GiveBack(loan, "rebalancing is turned off in the topology") for loan in loans]
        else:
            ending = to_give_back(depths, loans, self.rule)
        given_back: list[GiveBack] = []
        for give_back in ending:
            if not still_mine():
                return given_back, []
            self._give_back(give_back)
            given_back.append(give_back)
        kept = [loan for loan in loans if loan not in {g.loan for g in ending}]
        if not self.rule.enabled or not needs_inspection(depths, self.rule):
            return given_back, []
        workers = self._inspect(kept)
        if workers is None or not still_mine():
            return given_back, []
        for loan in forgotten_loans(kept, workers):
            log.warning(
                "%s no longer consumes the %s queue it was lent to (it was restarted): "
                "it is back with %s",
                loan.node,
                loan.helps,
                loan.home,
            )
            self.redis.hdel(self.keys.lent_workers, loan.node)
            kept.remove(loan)
        lent: list[Lend] = []
        for lend in to_lend(depths, kept, workers, self.rule):
            if not still_mine():
                break
            self._lend(lend)
            lent.append(lend)
        return given_back, lent

    def loans(self) -> list[Loan]:
        out = []
        for raw_node, raw in self.redis.hgetall(self.keys.lent_workers).items():
            node = text(raw_node)
            try:
                entry = json.loads(raw)
                out.append(
                    Loan(
                        node,
                        PriorityClass(entry["home"]),
                        PriorityClass(entry["helps"]),
                        float(entry["since"]),
                    )
                )
            except (ValueError, TypeError, KeyError):
                log.error("unreadable loan of worker %s in Redis: forgotten (%r)", node, raw)
                self.redis.hdel(self.keys.lent_workers, node)
        return out

    def _inspect(self, loans: list[Loan]) -> list[WorkerSeen] | None:
        timeout, control = self.rule.inspect_timeout_s, self.app.control
        # Which workers there are is known only from who answers before the timeout; the
        # second question goes to them by name and ends as soon as all have answered.
        with self.app.connection_for_write() as connection:
            active_queues = control.inspect(timeout=timeout, connection=connection).active_queues()
        if not active_queues:
            log.warning("no worker answered the inspection: nobody to lend to a busy queue")
            return None
        nodes = sorted(active_queues)
        with self.app.connection_for_write() as connection:
            running = control.inspect(
                timeout=timeout, connection=connection, destination=nodes, limit=len(nodes)
            ).active()
        return workers_seen(active_queues, running or {}, loans)

    def _lend(self, lend: Lend) -> None:
        entry = {"home": lend.home.value, "helps": lend.helps.value, "since": time.time()}
        # Recorded before the worker is told: a crash in between leaves a loan that some
        # orchestrator gives back, never a worker lent without anyone knowing.
        self.redis.hset(self.keys.lent_workers, lend.node, json.dumps(entry))
        if self._tell(self.app.control.add_consumer, lend.helps, lend.node):
            log.info("lent %s to %s: %s", lend.node, lend.helps, lend.reason)
        else:
            log.warning(
                "lent %s to %s (%s), but it did not confirm within %s s; it is given back "
                "with the others",
                lend.node,
                lend.helps,
                lend.reason,
                REPLY_TIMEOUT_S,
            )

    def _tell(self, command: Any, queue: PriorityClass, node: str) -> bool:
        """Send a consumer command to one worker; whether it answered. Each command on a
        connection of its own (see the note below REPLY_TIMEOUT_S)."""
        with self.app.connection_for_write() as connection:
            replies = command(
                queue_for(queue),
                destination=[node],
                reply=True,
                timeout=REPLY_TIMEOUT_S,
                limit=1,
                connection=connection,
            )
        return _answered(replies, node)

    def _give_back(self, give_back: GiveBack) -> None:
        loan = give_back.loan
        answered = self._tell(self.app.control.cancel_consumer, loan.helps, loan.node)
        self.redis.hdel(self.keys.lent_workers, loan.node)
        # A worker that did not answer has stopped or is about to get the message; either
        # way, when it starts again it consumes only its own queue.
        unconfirmed = "" if answered else " (it did not answer)"
        log.info(
            "gave back %s to %s after %.0f s on %s%s: %s",
            loan.node,
            loan.home,
            time.time() - loan.since,
            loan.helps,
            unconfirmed,
            give_back.reason,
        )


def install_queue_watch(
    app: Celery, settings: Settings, redis_url: str, topology: Topology
) -> None:
    """Run the queue watcher on its own thread in this worker (the orchestrator)."""
    every_s = topology.rebalance.check_every_s

    class QueueWatcher(bootsteps.StartStopStep):  # type: ignore[misc]
        def __init__(self, worker: Any, **kwargs: Any):
            super().__init__(worker, **kwargs)
            self.stopping = threading.Event()
            self.thread: threading.Thread | None = None

        def start(self, worker: Any) -> None:
            # A thread, not the worker's timer: an inspection blocks for a second or so,
            # which would hold up the timer's other duties (due retries, heartbeats).
            self.thread = threading.Thread(
                target=self.watch, name="treadle-queue-watch", daemon=True
            )
            self.thread.start()

        def stop(self, worker: Any) -> None:
            self.stopping.set()
            if self.thread is not None:
                self.thread.join(
                    timeout=every_s + 4 * topology.rebalance.inspect_timeout_s + REPLY_TIMEOUT_S
                )

        def watch(self) -> None:
            watcher = QueueWatch.connect(settings, redis_url, topology)
            try:
                while not self.stopping.wait(every_s):
                    try:
                        watcher.look()
                    except Exception:  # Redis away for a moment: the next look tries again
                        log.exception("looking at the queues failed; trying again in %s s", every_s)
            finally:
                watcher.close()

    app.steps["worker"].add(QueueWatcher)


def _moved_message(raw: bytes, target: PriorityClass, now: float) -> str:
    payload = json.loads(raw)
    payload["headers"][PROMOTED_AT_HEADER] = now
    # kombu puts a message back (a worker lost, the visibility timeout) by this routing
    # key: back to the queue it was moved to, not the one it came from.
    payload.setdefault("properties", {}).setdefault("delivery_info", {})["routing_key"] = queue_for(
        target
    )
    return json.dumps(payload)


def _answered(replies: Any, node: str) -> bool:
    return any(isinstance(r, dict) and "ok" in (r.get(node) or {}) for r in replies or [])


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
