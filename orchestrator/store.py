"""The state store: workflows, steps, results and the audit trail in Redis.

Every write of a state goes through one Lua script (``lua/transition.lua``) that changes
the state and appends its audit record together, so the trail can never disagree with the
states it explains.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import redis

from orchestrator import audit
from orchestrator.compiler import Compiled, Task, to_json
from orchestrator.dag import graph_of
from orchestrator.definitions import DefinitionCache
from orchestrator.errors import NotFound, Unreachable
from orchestrator.keys import Keys
from orchestrator.limits import ORDER_STRIDE
from orchestrator.model import Workflow
from orchestrator.states import StepState, WorkflowState

# Retries of a compare-and-set that lost to a concurrent writer of the same chain.
_MAX_STALE_RETRIES = 64

# A change's expected and new state for "whatever it is": a record that moves no state.
ANY = "*"


def lua_script(name: str) -> str:
    """A Lua script from ``orchestrator/lua``; each file starts with its KEYS/ARGV contract."""
    return files("orchestrator").joinpath("lua", name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Change:
    """One transition: ``target`` is a step id, or None for the workflow itself."""

    target: str | None
    expected: str
    new: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    # Its audit record; None for none (a batch record of the workflow says what it did).
    record: Mapping[str, Any] | None = field(default_factory=dict)
    result_json: str | None = None
    release: Sequence[str] = ()  # counter dependents whose count this change lowers
    definition: Mapping[str, Any] | None = None  # for a step this change creates
    delayed: Delayed | None = None  # a message to publish once it is due (a retry)
    dead_letter: Mapping[str, Any] | None = None  # filed with a final failure (has "id", "at")


@dataclass(frozen=True)
class Delayed:
    id: str  # no spaces: "<workflow>/<step>/<attempt>"
    due: float
    message: Mapping[str, Any]  # a Celery signature as a dict

    def encode(self) -> str:
        return f"{self.id} {self.due!r} {json.dumps(self.message)}"


@dataclass(frozen=True)
class Reservation:
    """A step's place in the queue of its concurrency key (see ``orchestrator.flow``)."""

    step_id: str
    base: str  # the key's limit base (Keys.limit)
    rank: int  # the step's topological rank in its workflow
    limit_json: str  # the limit as lua/flow.lua reads it


@dataclass(frozen=True)
class Applied:
    steps_done: int
    steps_total: int
    workflow_state: str
    ready: tuple[str, ...] = ()  # counter steps whose last dependency this change ended
    # Where the chains this batch appended to end now (step id, or "" for the workflow).
    tails: Mapping[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.steps_done >= self.steps_total


@dataclass(frozen=True)
class Guard:
    """What a worker presumed of a workflow it did not read (see ``presume_step``)."""

    seq: str  # its submission number
    rev: int  # how often its definitions were rewritten
    states: tuple[str, ...] = (WorkflowState.pending.value, WorkflowState.running.value)

    def encode(self) -> str:
        return json.dumps({"seq": self.seq, "rev": self.rev, "states": list(self.states)})


class Conflict(Exception):
    """A target was not in the state the caller expected; nothing was written."""

    def __init__(self, target: str | None, current: str):
        self.target = target
        self.current = current
        super().__init__(f"{target or 'workflow'} is {current or 'missing'}")


@dataclass(frozen=True)
class StepView:
    """What the step runtime needs to run one step, read in one round trip."""

    workflow_id: str
    step_id: str
    definition: dict[str, Any]
    record: dict[str, Any]
    workflow_state: str
    priority: str
    on_failure: str
    params: dict[str, Any]
    results: dict[str, Any]
    dependency_states: dict[str, str]
    dependency_tails: dict[str, str] = field(default_factory=dict)  # their chains' ends
    tenant: str = ""
    sequence: int = 0  # the workflow's submission number (orders concurrency-key waiters)
    # Set when nothing was read: the record is presumed (a step never started, queued),
    # and a claim applies only if what it presumed of the workflow holds.
    presumed: Guard | None = None

    @property
    def tail(self) -> str:
        """The end of the step's own audit chain, as read."""
        return str(self.record.get("tail") or "")

    @property
    def tails(self) -> dict[str, str]:
        return {self.step_id: self.tail}

    @property
    def pool(self) -> str:
        """The class (and pool) the step runs in: its own, else its workflow's."""
        return str(self.definition.get("priority") or self.priority)


def step_definitions(workflow: Workflow, compiled: Compiled) -> dict[str, dict[str, Any]]:
    """What is stored of each step: its spec; for steps published on counters whom they
    release; for a chord's gate what it publishes (``then``), and for the other first steps
    of that part, the gate they go with (``gate``)."""
    defs = {s.id: s.to_json() for s in workflow.steps}
    split = compiled.split()
    counted = compiled.counters | frozenset(split.held)
    for step in workflow.steps:
        for dep in step.after:
            if step.id in counted:
                defs[dep].setdefault("release", []).append(step.id)
    for gate, node in split.held.items():
        if node != Task(gate):  # a gate published alone is a plain step's message
            defs[gate]["then"] = to_json(node)
    for step_id, gate in split.gated().items():
        defs[step_id]["gate"] = gate
    keyed = [s.id for s in workflow.steps if s.concurrency_key]
    if keyed:
        # Steps of one workflow that share a concurrency key take it in dependency order.
        ranks = {
            sid: i
            for i, sid in enumerate(
                graph_of((s.id, s.after) for s in workflow.steps).topological_order()
            )
        }
        for sid in keyed:
            defs[sid]["rank"] = ranks[sid]
    for sid in counted:
        defs[sid]["counter"] = True
        # The dependencies whose end it counts down; all of `after` on a first run, only
        # those that run again when a workflow resumes.
        defs[sid]["waits_for"] = list(defs[sid]["after"])
    return defs


def waiting_counts(defs: Mapping[str, Mapping[str, Any]], compiled: Compiled) -> dict[str, int]:
    """How many dependency ends each counter step waits for before it is published."""
    return {s: len(defs[s]["waits_for"]) for s in compiled.counted if defs[s].get("waits_for")}


class StateStore:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        state_ttl_s: int = 30 * 86400,
        definitions: DefinitionCache | None = None,
    ):
        self.redis = client
        self.keys = keys
        self.state_ttl_s = state_ttl_s
        self.definitions = definitions  # kept between steps (a worker's store), or None
        self._create = client.register_script(lua_script("create_workflow.lua"))
        self._transition = client.register_script(lua_script("transition.lua"))
        self._park = client.register_script(lua_script("park_message.lua"))

    # -- writing -------------------------------------------------------------------------

    def create(
        self,
        workflow_id: str,
        workflow: Workflow,
        compiled: Compiled,
        now: float | None = None,
        reservations: Sequence[Reservation] = (),
    ) -> tuple[str, bool]:
        """Store a new workflow; returns (id, True), or (first id, False) when its
        idempotency key was used before. ``reservations`` are places in the queues of
        concurrency keys, taken in the same step, so submission order is their order."""
        now = time.time() if now is None else now
        fields = {
            "id": workflow_id,
            "name": workflow.name,
            "state": WorkflowState.pending.value,
            "priority": workflow.priority.value,
            "tenant": workflow.tenant or "",
            "on_failure": workflow.on_failure,
            "idempotency_key": workflow.idempotency_key or "",
            "params": json.dumps(workflow.params),
            "submitted_at": repr(now),
            "steps_total": len(workflow.steps),
            "steps_done": 0,
            "steps_failed": 0,
            "order": json.dumps([s.id for s in workflow.steps]),
            "canvas": json.dumps(to_json(compiled.canvas) if compiled.canvas is not None else None),
        }
        defs = step_definitions(workflow, compiled)
        waiting = waiting_counts(defs, compiled)
        records = {s.id: {"state": StepState.pending.value, "attempts": 0} for s in workflow.steps}
        first, tail = audit.seal(
            {
                "at": now,
                "workflow_id": workflow_id,
                "step_id": None,
                "from": None,
                "to": WorkflowState.pending.value,
                "name": workflow.name,
                "spec_sha256": audit.sha256_of([s.to_json() for s in workflow.steps]),
                "params_sha256": audit.sha256_of(workflow.params),
            },
            audit.GENESIS,
        )
        idem = self.keys.idempotency(workflow.idempotency_key) if workflow.idempotency_key else ""
        outcome, wid = self.run_script(
            self._create,
            keys=[
                self.keys.workflow(workflow_id),
                self.keys.defs(workflow_id),
                self.keys.steps(workflow_id),
                self.keys.audit(workflow_id),
                self.keys.index,
                idem,
                self.keys.waiting(workflow_id),
                self.keys.metrics,
            ],
            args=[
                workflow_id,
                json.dumps(fields),
                json.dumps({sid: json.dumps(d) for sid, d in defs.items()}),
                json.dumps({sid: json.dumps(r) for sid, r in records.items()}),
                first,
                tail,
                repr(now),
                self.state_ttl_s,
                self.keys.workflow(""),
                json.dumps(waiting),
                self.keys.sequence,
                ORDER_STRIDE,
                json.dumps(
                    [
                        [r.base, r.rank, f"{workflow_id}/{r.step_id}", r.limit_json]
                        for r in reservations
                    ]
                ),
                self.keys.limits_active,
            ],
        )
        return text(wid), text(outcome) == "created"

    def apply(
        self,
        workflow_id: str,
        changes: Sequence[Change],
        tails: Mapping[str, str] | None = None,
        measured: bool = False,
        guard: Guard | None = None,
    ) -> Applied:
        """Apply ``changes`` atomically; raises Conflict if a target moved on meanwhile.

        ``tails``: where the caller last saw the audit chains of the targets end (step id,
        or "" for the workflow's own); those it does not give are read first. A stale end
        costs one more round trip, never a wrong chain, unless the batch is guarded
        (``guard``: what a worker presumed without reading), which then conflicts.
        ``measured``: the caller observes the run and wait times of the first change's
        step itself (``workers.observations``).
        """
        keys = [
            self.keys.workflow(workflow_id),
            self.keys.steps(workflow_id),
            self.keys.audit(workflow_id),
            self.keys.results(workflow_id),
            self.keys.waiting(workflow_id),
            self.keys.defs(workflow_id),
            self.keys.delayed,
            self.keys.delayed_entries,
            self.keys.dead_letters,
            self.keys.dead_letters_by_time,
            self.keys.outstanding,
            self.keys.metrics,
        ]
        ends = dict(tails or {})
        unknown = {c.target or "" for c in changes if c.record is not None} - set(ends)
        if unknown:
            ends.update(self._chain_ends(workflow_id, unknown))
        # The same token on every try of this batch, so the script can tell a repeat.
        token = uuid.uuid4().hex
        for _ in range(_MAX_STALE_RETRIES):
            args: list[Any] = []
            sealed_ends = dict(ends)
            for change in changes:
                chain = change.target or ""
                sealed, prev, new_end = "", "", ""
                if change.record is not None:
                    prev = sealed_ends.get(chain, audit.GENESIS)
                    record: dict[str, Any] = {"workflow_id": workflow_id, "step_id": change.target}
                    if (change.expected, change.new) != (ANY, ANY):  # else a note, no move
                        record.update({"from": change.expected, "to": change.new})
                    sealed, new_end = audit.seal({**record, **change.record}, prev)
                    sealed_ends[chain] = new_end
                args += [
                    change.target or "",
                    change.expected,
                    change.new,
                    json.dumps(change.fields),
                    sealed,
                    prev,
                    new_end,
                    change.result_json or "",
                    json.dumps(list(change.release)) if change.release else "",
                    json.dumps(change.definition) if change.definition is not None else "",
                    change.delayed.encode() if change.delayed is not None else "",
                    _encode_letter(change.dead_letter),
                ]
            head = [
                guard.encode() if guard is not None else "",
                len(changes),
                token,
                "1" if measured else "",
            ]
            reply = self.run_script(self._transition, keys=keys, args=[*head, *args])
            status = text(reply[0])
            if status == "ok":
                return Applied(
                    int(reply[1] or 0),
                    int(reply[2] or 0),
                    text(reply[3]),
                    tuple(text(r) for r in reply[4:]),
                    tails=sealed_ends,
                )
            if status == "stale":
                target, end = text(reply[1]), text(reply[2])
                if guard is not None:
                    raise Conflict(target or None, "moved on")
                ends[target] = end
                continue
            raise Conflict(text(reply[1]) or None, text(reply[2]))
        raise Unreachable(f"workflow {workflow_id}: audit chain too contended to append to")

    def _chain_ends(self, workflow_id: str, chains: Iterable[str]) -> dict[str, str]:
        """Where the given audit chains end now ("" for the workflow's own records)."""
        steps = sorted(c for c in chains if c)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.workflow(workflow_id), "audit_tail")
            if steps:
                pipe.hmget(self.keys.steps(workflow_id), steps)
            replies = self.execute(pipe)
        ends = {"": text(replies[0] or b"")}
        if steps:
            for step, raw in zip(steps, replies[1], strict=True):
                ends[step] = str(json.loads(raw).get("tail") or "") if raw else ""
        return ends

    # -- reading -------------------------------------------------------------------------

    def load_step(self, workflow_id: str, step_id: str) -> StepView:
        """The step's definition and record, its workflow, and its dependencies' results."""
        k = self.keys
        cache = self.definitions
        kept = cache.get(workflow_id, None, step_id) if cache is not None else None
        read_all = kept is None and cache is not None and cache.wants_all(workflow_id)
        with self.redis.pipeline(transaction=False) as pipe:
            if read_all:
                pipe.hgetall(k.defs(workflow_id))
            elif kept is None:
                pipe.hget(k.defs(workflow_id), step_id)
            pipe.hget(k.steps(workflow_id), step_id)
            pipe.hmget(k.workflow(workflow_id), *_KEPT_FIELDS)
            replies = self.execute(pipe)
        raw_record, wf = replies[-2:]
        fields = dict(zip(_KEPT_FIELDS, (None if v is None else text(v) for v in wf), strict=True))
        raw_def = self._definition(workflow_id, step_id, fields, kept, replies[0], read_all)
        if raw_def is None or raw_record is None or fields["state"] is None:
            raise NotFound(f"workflow {workflow_id} has no step {step_id!r}")
        definition = json.loads(raw_def)
        deps = definition.get("after") or []
        results: dict[str, Any] = {}
        dep_records: dict[str, dict[str, Any]] = {}
        if deps:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(k.results(workflow_id), deps)
                pipe.hmget(k.steps(workflow_id), deps)
                values, records = self.execute(pipe)
            results = {d: json.loads(v) for d, v in zip(deps, values, strict=True) if v is not None}
            dep_records = {d: json.loads(r) for d, r in zip(deps, records, strict=True) if r}
        return StepView(
            workflow_id=workflow_id,
            step_id=step_id,
            definition=definition,
            record=json.loads(raw_record),
            workflow_state=str(fields["state"]),
            priority=fields["priority"] or "",
            on_failure=fields["on_failure"] or "",
            params=json.loads(fields["params"] or "{}"),
            results=results,
            dependency_states={d: r["state"] for d, r in dep_records.items()},
            dependency_tails={d: str(r.get("tail") or "") for d, r in dep_records.items()},
            tenant=fields["tenant"] or "",
            sequence=int(fields["seq"] or 0),
        )

    def presume_step(self, workflow_id: str, step_id: str) -> StepView | None:
        """The view of a step with no dependencies that this process can tell without
        reading: its definition and its workflow's fields as kept, presuming it queued and
        never started (the common case of a step's first message). A claim from it is
        guarded (``Guard``), so a wrong presumption costs a conflict and then a read,
        never a wrong claim. None if the step has dependencies (their results are its
        input), is an item of a fan-out (created pending) or has a condition, or nothing is
        kept."""
        cache = self.definitions
        fields = cache.fields_of(workflow_id) if cache is not None else None
        raw = cache.get(workflow_id, None, step_id) if cache is not None else None
        if fields is None or raw is None:
            return None
        definition = json.loads(raw)
        if definition.get("after") or "item_of" in definition or definition.get("when"):
            return None  # (a condition may skip it: that is decided from what was read)
        return StepView(
            workflow_id=workflow_id,
            step_id=step_id,
            definition=definition,
            record={"state": StepState.queued.value, "attempts": 0},
            workflow_state=WorkflowState.running.value,
            priority=fields["priority"] or "",
            on_failure=fields["on_failure"] or "",
            # Parsed anew for every step: user code may change the params it is given.
            params=json.loads(fields["params"] or "{}"),
            results={},
            dependency_states={},
            tenant=fields["tenant"] or "",
            sequence=int(fields["seq"] or 0),
            presumed=Guard(str(fields["seq"] or ""), int(fields["defs_rev"] or 0)),
        )

    def _definition(
        self,
        workflow_id: str,
        step_id: str,
        fields: Mapping[str, str | None],
        kept: bytes | None,
        read: Any,
        read_all: bool,
    ) -> bytes | None:
        """The step's definition from what load_step read or kept, keeping what it read."""
        cache = self.definitions
        if cache is None:
            return read  # type: ignore[no-any-return]
        generation = (fields["seq"], fields["defs_rev"])
        if kept is not None:
            if cache.generation_of(workflow_id) == generation:
                return kept
            # Forgotten and submitted again under the same id, or resumed with rewritten
            # definitions: not these definitions.
            cache.forget(workflow_id)
            raw = self._guard(lambda: self.redis.hget(self.keys.defs(workflow_id), step_id))
            return raw  # type: ignore[no-any-return]
        if read_all:
            if read:  # (none: the workflow is gone)
                cache.keep_all(workflow_id, generation, read, fields)
            return read.get(step_id.encode())  # type: ignore[no-any-return]
        if read is not None:
            cache.keep_one(workflow_id, generation, step_id, read)
        return read  # type: ignore[no-any-return]

    def workflow_for_key(self, idempotency_key: str) -> str | None:
        """The workflow first submitted under this idempotency key, if it still exists."""
        first = self._guard(lambda: self.redis.get(self.keys.idempotency(idempotency_key)))
        if first is None:
            return None
        workflow_id = text(first)
        exists = self._guard(lambda: self.redis.exists(self.keys.workflow(workflow_id)))
        return workflow_id if exists else None

    def workflow_fields(self, workflow_id: str) -> dict[str, str]:
        raw = self._guard(lambda: self.redis.hgetall(self.keys.workflow(workflow_id)))
        if not raw:
            raise NotFound(f"no workflow {workflow_id!r}")
        return {text(k): text(v) for k, v in raw.items()}

    def step_records(self, workflow_id: str) -> dict[str, dict[str, Any]]:
        raw = self._guard(lambda: self.redis.hgetall(self.keys.steps(workflow_id)))
        return {text(k): json.loads(v) for k, v in raw.items()}

    def step_records_of(self, workflow_id: str, step_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not step_ids:
            return {}
        raw = self._guard(lambda: self.redis.hmget(self.keys.steps(workflow_id), step_ids))
        return {sid: json.loads(v) for sid, v in zip(step_ids, raw, strict=True) if v is not None}

    def step_defs(self, workflow_id: str) -> dict[str, dict[str, Any]]:
        raw = self._guard(lambda: self.redis.hgetall(self.keys.defs(workflow_id)))
        return {text(k): json.loads(v) for k, v in raw.items()}

    def step_defs_of(self, workflow_id: str, step_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not step_ids:
            return {}
        raw = self._guard(lambda: self.redis.hmget(self.keys.defs(workflow_id), step_ids))
        return {sid: json.loads(v) for sid, v in zip(step_ids, raw, strict=True) if v is not None}

    def set_waiting(self, workflow_id: str, counts: Mapping[str, int]) -> None:
        """Dependency counts of counter steps (a resumed workflow's are new)."""
        key = self.keys.waiting(workflow_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if counts:
                mapping: dict[Any, Any] = dict(counts)
                pipe.hset(key, mapping=mapping)
            self.execute(pipe)

    def waiting_counts(self, workflow_id: str) -> dict[str, int]:
        """Counter steps and how many of their dependencies have not ended yet."""
        raw = self._guard(lambda: self.redis.hgetall(self.keys.waiting(workflow_id)))
        return {text(k): int(v) for k, v in raw.items()}

    def results_of(self, workflow_id: str, step_ids: list[str]) -> dict[str, Any]:
        if not step_ids:
            return {}
        raw = self._guard(lambda: self.redis.hmget(self.keys.results(workflow_id), step_ids))
        return {sid: json.loads(v) for sid, v in zip(step_ids, raw, strict=True) if v is not None}

    def results(self, workflow_id: str) -> dict[str, Any]:
        raw = self._guard(lambda: self.redis.hgetall(self.keys.results(workflow_id)))
        return {text(k): json.loads(v) for k, v in raw.items()}

    def status(self, workflow_id: str) -> dict[str, Any]:
        """The ``treadle status --json`` object."""
        wf = self.workflow_fields(workflow_id)
        records = self.step_records(workflow_id)
        defs = self.step_defs(workflow_id)
        steps = []
        for step_id in _with_items(json.loads(wf["order"]), defs):
            record, definition = records.get(step_id, {}), defs.get(step_id, {})
            steps.append(
                {
                    "id": step_id,
                    "task": definition.get("task"),
                    "state": record.get("state"),
                    "attempts": record.get("attempts", 0),
                    "queued_at": record.get("queued_at"),
                    "started_at": record.get("started_at"),
                    "finished_at": record.get("finished_at"),
                    "worker": record.get("worker"),
                    "after": definition.get("after", []),
                    "priority": definition.get("priority") or wf["priority"],
                    "error": record.get("error"),
                    **({"item_of": definition["item_of"]} if "item_of" in definition else {}),
                    **({"skip_reason": record["skip_reason"]} if "skip_reason" in record else {}),
                    # A queued step held back by a shared limit (orchestrator.flow).
                    **({"waiting_for": record["waiting_for"]} if record.get("waiting_for") else {}),
                    # Moved up a class by aging (orchestrator.queue_watch): it ran there.
                    **({"promoted_to": record["promoted_to"]} if record.get("promoted_to") else {}),
                }
            )
        return {
            "id": wf["id"],
            "name": wf["name"],
            "state": wf["state"],
            "priority": wf["priority"],
            "tenant": wf.get("tenant") or None,
            "submitted_at": _float(wf.get("submitted_at")),
            "started_at": _float(wf.get("started_at")),
            "finished_at": _float(wf.get("finished_at")),
            "steps_total": int(wf.get("steps_total", 0)),
            "steps_done": int(wf.get("steps_done", 0)),
            "error": wf.get("error") or None,
            "steps": steps,
        }

    def summaries(
        self,
        state: str | None = None,
        limit: int = 1000,
        *,
        priority: str | None = None,
        tenant: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first: id, name, state, priority, tenant, times, progress; only the rows
        that match every filter given."""
        ids = self._guard(lambda: self.redis.zrevrange(self.keys.index, 0, -1))
        fields = ("id", "name", "state", "priority", "tenant", "submitted_at", "finished_at")
        counts = ("steps_done", "steps_total")
        wanted = {"state": state, "priority": priority, "tenant": tenant}
        wanted = {k: v for k, v in wanted.items() if v is not None}
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            with self.redis.pipeline(transaction=False) as pipe:
                for wid in batch:
                    pipe.hmget(self.keys.workflow(text(wid)), *fields, *counts)
                rows = self.execute(pipe)
            for row in rows:
                if row[0] is None:
                    continue
                item: dict[str, Any] = {f: text(v) for f, v in zip(fields, row, strict=False)}
                if any(item[k] != v for k, v in wanted.items()):
                    continue
                item["tenant"] = item["tenant"] or None  # stored as "" when there is none
                item["submitted_at"] = _float(item["submitted_at"])
                item["finished_at"] = _float(item["finished_at"])
                item["steps_done"], item["steps_total"] = int(row[7] or 0), int(row[8] or 0)
                out.append(item)
                if len(out) >= limit:
                    return out
        return out

    def audit_entries(self, workflow_id: str) -> tuple[list[str], dict[str, str]]:
        """The stored audit texts in order, and where the workflow and its steps say their
        chains end (step id, or "" for the workflow's own records; see ``audit``)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(self.keys.audit(workflow_id), 0, -1)
            pipe.hget(self.keys.workflow(workflow_id), "audit_tail")
            pipe.hgetall(self.keys.steps(workflow_id))
            entries, tail, records = self.execute(pipe)
        if tail is None:
            raise NotFound(f"no workflow {workflow_id!r}")
        tails = {"": text(tail)}
        for step, raw in records.items():
            end = json.loads(raw).get("tail")
            if end:
                tails[text(step)] = str(end)
        return [text(e) for e in entries], tails

    def set_fields(self, workflow_id: str, fields: Mapping[Any, str | int | float]) -> None:
        """Bookkeeping fields that are not states (no audit record needed)."""
        self._guard(lambda: self.redis.hset(self.keys.workflow(workflow_id), mapping=fields))

    def expire(self, workflow_id: str) -> None:
        """Finished workflows stay readable for ``state_ttl_s``, then Redis drops them;
        their tickets are needed no more."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in self.keys.of_workflow(workflow_id):
                pipe.expire(key, self.state_ttl_s)
            pipe.delete(self.keys.tickets(workflow_id))
            self.execute(pipe)

    def park_message(self, workflow_id: str, step_id: str, message_json: str) -> bool:
        """Keep a step's message with its parked workflow; False if it is not parked."""
        keys = [self.keys.workflow(workflow_id), self.keys.parked_messages(workflow_id)]
        return bool(self.run_script(self._park, keys=keys, args=[step_id, message_json]))

    def keep_ticket(self, workflow_id: str, step_id: str, ticket_json: str) -> None:
        self._guard(lambda: self.redis.hset(self.keys.tickets(workflow_id), step_id, ticket_json))

    def keep_tickets(self, tickets: Mapping[str, Mapping[str, str]]) -> None:
        """Tickets of several steps (by workflow id, then step id) in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for workflow_id, by_step in tickets.items():
                mapping: dict[Any, Any] = dict(by_step)
                pipe.hset(self.keys.tickets(workflow_id), mapping=mapping)
            self.execute(pipe)

    def tickets_of(self, workflow_id: str, step_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The kept messages of these steps (see ``orchestrator.tickets``)."""
        if not step_ids:
            return {}
        raw = self._guard(lambda: self.redis.hmget(self.keys.tickets(workflow_id), step_ids))
        return {sid: json.loads(v) for sid, v in zip(step_ids, raw, strict=True) if v is not None}

    def mark_disrupted(self, at: float) -> None:
        """A worker lost its broker connection or died at ``at`` (see orchestrator.orphans)."""
        self._guard(lambda: self.redis.set(self.keys.disrupted, repr(at)))

    def disruption(self) -> tuple[float, float]:
        """(last disruption, last one repaired); 0 for never."""
        raw = self._guard(lambda: self.redis.mget(self.keys.disrupted, self.keys.repaired))
        return float(raw[0] or 0), float(raw[1] or 0)

    def mark_repaired(self, at: float) -> None:
        self._guard(lambda: self.redis.set(self.keys.repaired, repr(at)))

    def worker_alive(self, incarnation: str) -> bool:
        """Whether the worker process ``incarnation`` still sends its heartbeat."""
        return bool(incarnation) and bool(
            self._guard(lambda: self.redis.exists(self.keys.alive(incarnation)))
        )

    def ids(self) -> Iterable[str]:
        return [text(i) for i in self._guard(lambda: self.redis.zrange(self.keys.index, 0, -1))]

    # -- plumbing --------------------------------------------------------------------------

    def run_script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return self._guard(lambda: script(keys=keys, args=args))

    def execute(self, pipe: Any) -> list[Any]:
        return self._guard(pipe.execute)  # type: ignore[no-any-return]

    @staticmethod
    def _guard(call: Any) -> Any:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise Unreachable(f"Redis cannot be reached: {exc}") from exc


# The workflow's fields a step's view needs: all but ``state`` never change after
# submission but for ``defs_rev`` (a resume), so a worker keeps them with the definitions.
_KEPT_FIELDS = ("state", "priority", "on_failure", "params", "tenant", "seq", "defs_rev")


def _encode_letter(letter: Mapping[str, Any] | None) -> str:
    if letter is None:
        return ""
    return f"{letter['id']} {letter['at']!r} {json.dumps(letter)}"


def _with_items(order: list[str], defs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Declared steps in order, each fan-out followed by its items in index order."""
    items: dict[str, list[tuple[int, str]]] = {}
    for sid, definition in defs.items():
        if "item_of" in definition:
            items.setdefault(definition["item_of"], []).append((definition["index"], sid))
    out: list[str] = []
    for sid in order:
        out.append(sid)
        out.extend(item for _, item in sorted(items.get(sid, [])))
    # Steps made at run time that are not items (compensations) come last.
    listed = set(out)
    out.extend(sid for sid, d in defs.items() if sid not in listed and "item_of" not in d)
    return out


def text(value: Any) -> str:
    """A Redis reply as text (bytes decoded; None as "")."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(value: Any) -> float | None:
    return float(value) if value not in (None, "", b"") else None
