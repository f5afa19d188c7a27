"""Flow control: the shared limits of ``orchestrator.limits`` kept in Redis, for every
worker on every host at once (Celery's ``rate_limit`` is per worker process).

All decisions happen in one Lua script (``lua/flow.lua``): a token bucket, a semaphore
whose permits carry a lease (a permit of a dead worker comes back), a lock per
concurrency key whose waiters keep submission order, a circuit breaker per resource.
A step that cannot take its limits is not run and holds no worker slot: its message is
kept in Redis (the delayed entries) and published again when a release wakes it or its
next token falls due, first in line first. The step spends no attempt while it waits.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from config.broker_transport import to_front
from config.topology import Topology
from orchestrator.keys import Keys
from orchestrator.limits import (
    KeyTemplateError,
    Limit,
    limits_for,
    needs_item,
    order_score,
    render_key,
)
from orchestrator.model import Workflow
from orchestrator.states import STEP_FINAL, WORKFLOW_FINAL
from orchestrator.store import Reservation, StateStore, StepView, lua_script, text

log = logging.getLogger("treadle.flow")

SUCCESS, FAILURE, NO_VERDICT = "success", "failure", ""
# The reason of a refusal that parks nothing: another claim of the same step holds the
# permit (two copies of its message were claimed at once). That copy must not run.
HELD = "held by another copy of the step"


@dataclass(frozen=True)
class Waiting:
    """Why a step did not get its limits, and when it will look again."""

    limit: Limit
    reason: str  # "rate", "concurrency", "circuit open", ...
    due: float | None  # None: until a release wakes it
    first_in_line: str  # "<workflow>/<step>" at the head of the limit's queue
    holder: str  # one "<workflow>/<step>" that holds the limit

    def describe(self) -> str:
        when = f", again at {self.due:.3f}" if self.due is not None else ""
        return f"waiting for {self.limit.label} ({self.reason}{when})"


@dataclass
class Reaped:
    reclaimed: list[str] = field(default_factory=list)  # "<label> <member>"
    dropped: list[str] = field(default_factory=list)


def member_of(workflow_id: str, step_id: str) -> str:
    return f"{workflow_id}/{step_id}"


def split_member(member: str) -> tuple[str, str]:
    workflow_id, _, step_id = member.partition("/")
    return workflow_id, step_id


def reservations(
    keys: Keys, workflow: Workflow, defs: Mapping[str, Mapping[str, Any]]
) -> list[Reservation]:
    """The places a new workflow takes in the queues of its steps' concurrency keys. An
    item of a fan-out takes its place when it first arrives (its key needs the item)."""
    places = []
    for step in workflow.steps:
        template = step.concurrency_key
        if not template or needs_item(template):
            continue
        limit = Limit("key", render_key(template, workflow.params, step.args), 1, ordered=True)
        base = keys.limit(limit.kind, limit.name)
        places.append(
            Reservation(
                step.id, base, int(defs[step.id]["rank"]), json.dumps(limit.to_script(base))
            )
        )
    return places


class FlowControl:
    def __init__(self, store: StateStore, topology: Topology):
        self.store = store
        self.topology = topology
        keys = store.keys
        self._keys = [keys.delayed, keys.delayed_entries, keys.limits_active, keys.metrics]
        self._script = store.redis.register_script(lua_script("flow.lua"))

    # -- what a step takes ---------------------------------------------------------------

    def limits_of(self, view: StepView) -> list[Limit]:
        """Raises ``orchestrator.limits.KeyTemplateError`` if its key cannot be filled."""
        return limits_for(self.topology, view.definition, view.params, view.pool, view.tenant)

    def held_by(self, view: StepView) -> list[Limit]:
        """The limits a running attempt of the step holds (none if its key cannot be
        filled: such a step fails before it takes any)."""
        try:
            return self.limits_of(view)
        except KeyTemplateError:
            return []

    @staticmethod
    def order_of(view: StepView) -> int:
        """The step's place among the waiters of its concurrency key: submission order."""
        return order_score(view.sequence, int(view.definition.get("rank") or 0))

    # -- taking and giving back ----------------------------------------------------------

    def acquire(
        self,
        view: StepView,
        limits: Sequence[Limit],
        incarnation: str,
        lease_s: float,
        message: Mapping[str, Any],
        claim: str = "",
        replaces: str = "",
    ) -> Waiting | None:
        """Take every limit or none. None: taken. Else the step's message is parked, to
        be published when it is woken: at the front of its queue (it was there when it
        was refused), unless it waited for its tenant's cap. Then it goes back in line
        behind the other tenants' steps, or a tenant's woken steps would take every
        slot that its own steps free, and another tenant's would wait behind them.

        ``claim`` names this try to run the step. A permit is kept per step, and a step
        can have two copies of its message (at-least-once delivery, recovery's re-issued
        and put-back messages): a claim may take over the permit of ``replaces`` (the
        step's last attempt, which has ended or was lost) or of a dead worker, but while
        another live claim holds it the answer is ``HELD`` and nothing is parked."""
        member = member_of(view.workflow_id, view.step_id)
        woken = json.dumps(to_front(message))
        in_line = json.dumps(message) if any(lim.kind == "tenant" for lim in limits) else ""
        for _ in range(4):
            reply = self._call(
                "acquire",
                limits,
                member,
                incarnation,
                lease_s,
                self.order_of(view),
                f"{member}/wait-{uuid.uuid4().hex[:12]}",
                woken,
                in_line,
                claim,
                replaces,
            )
            if text(reply[0]) == "ok":
                return None
            limit = limits[int(reply[1]) - 1]
            if text(reply[0]) == "held":
                return Waiting(limit, HELD, None, "", member)
            due = text(reply[3])
            waiting = Waiting(
                limit,
                text(reply[2]),
                float(due) if due else None,
                text(reply[4]),
                text(reply[5]),
            )
            # A waiter ahead that will never come, or a holder whose step has ended,
            # would block this limit until the reaper's next round: clear it now.
            if not self._clear_stale(limit, limits, member, waiting):
                return waiting
        return waiting

    def release(
        self,
        view: StepView,
        limits: Sequence[Limit],
        verdict: str = NO_VERDICT,
        wait_again: bool = False,
        claim: str = "",
    ) -> None:
        """Give back what the step took; with ``wait_again`` (a retry) it keeps its place
        in the queues of its concurrency keys. With ``claim``, a permit goes back only if
        that claim holds it, not one that another copy of the step took (or took over)."""
        if not limits:
            return
        again = self.order_of(view) if wait_again else ""
        member = member_of(view.workflow_id, view.step_id)
        self._call("release", limits, member, verdict, again, claim)

    # -- upkeep --------------------------------------------------------------------------

    def reap(self, mark_lost: Callable[[str, str, str, str], None]) -> Reaped:
        """Take back permits whose lease ran out or whose worker died, drop waiters whose
        steps ended without running, and wake whoever can run. ``mark_lost(workflow,
        step, incarnation, why)`` records a dead holder's attempt as lost first, so the
        audit trail never shows a step running beyond the permit it held."""
        report = Reaped()
        limits = self._active_limits()
        if not limits:
            return report
        found = self._call("expired", limits)
        reclaim = []
        for i in range(0, len(found), 3):
            n, member, owner = int(found[i]), text(found[i + 1]), text(found[i + 2])
            workflow_id, step_id = split_member(member)
            mark_lost(workflow_id, step_id, owner, f"its permit of {limits[n - 1].label} expired")
            reclaim.append([n, member])
            report.reclaimed.append(f"{limits[n - 1].label} {member}")
        if reclaim:
            log.warning("took back permits of dead or overdue steps: %s", report.reclaimed)
            self._call("reclaim", limits, json.dumps(reclaim))
        stale = self._stale_heads(limits)
        if stale:
            report.dropped = [f"{limits[n - 1].label} {m}" for n, m in stale]
            self._call("drop", limits, json.dumps(stale))
        self._call("wake", limits)
        return report

    def _active_limits(self) -> list[Limit]:
        """Limits with holders, waiters or an open circuit (as the script recorded them)."""
        raw = self.store.redis.hvals(self.store.keys.limits_active)
        return [Limit.from_script(json.loads(config)) for config in raw]

    def _stale_heads(self, limits: Sequence[Limit]) -> list[list[Any]]:
        """Waiters at the front of a queue whose steps ended or whose workflow is gone."""
        heads: list[tuple[int, str]] = []
        with self.store.redis.pipeline(transaction=False) as pipe:
            for limit in limits:
                # As far back as can run at once: those are the ones that would block.
                pipe.zrange(self._base(limit) + ":queue", 0, max(limit.concurrency or 1, 1) - 1)
            for n, members in enumerate(pipe.execute(), start=1):
                heads.extend((n, text(m)) for m in members)
        ended = self._ended({m for _, m in heads})
        return [[n, m] for n, m in heads if m in ended]

    def _clear_stale(
        self, limit: Limit, limits: Sequence[Limit], member: str, waiting: Waiting
    ) -> bool:
        suspects = {m for m in (waiting.first_in_line, waiting.holder) if m and m != member}
        ended = self._ended(suspects)
        if not ended:
            return False
        n = limits.index(limit) + 1
        if waiting.first_in_line in ended:
            self._call("drop", limits, json.dumps([[n, waiting.first_in_line]]))
        if waiting.holder in ended:
            log.warning(
                "%s was still held by %s, whose step has ended", limit.label, waiting.holder
            )
            self._call("release", [limit], waiting.holder, NO_VERDICT, "")
        return True

    def _ended(self, members: set[str]) -> set[str]:
        """Those of ``members`` whose step ended or whose workflow ended or is gone."""
        if not members:
            return set()
        ordered = sorted(members)
        keys = self.store.keys
        with self.store.redis.pipeline(transaction=False) as pipe:
            for member in ordered:
                workflow_id, step_id = split_member(member)
                pipe.hget(keys.workflow(workflow_id), "state")
                pipe.hget(keys.steps(workflow_id), step_id)
            replies = pipe.execute()
        ended = set()
        for i, member in enumerate(ordered):
            state, record = replies[2 * i], replies[2 * i + 1]
            gone = state is None or record is None or text(state) in WORKFLOW_FINAL
            if gone or json.loads(record).get("state") in STEP_FINAL:
                ended.add(member)
        return ended

    # -- plumbing ------------------------------------------------------------------------

    def _base(self, limit: Limit) -> str:
        return self.store.keys.limit(limit.kind, limit.name)

    def _call(self, op: str, limits: Sequence[Limit], *args: Any) -> Any:
        scripted = json.dumps([limit.to_script(self._base(limit)) for limit in limits])
        argv = [op, scripted, self.store.keys.alive(""), *args]
        return self.store.run_script(self._script, keys=self._keys, args=argv)
