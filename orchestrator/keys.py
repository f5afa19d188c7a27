"""The one place that knows treadle's Redis key layout.

{p}:wf:{id}            hash   the workflow: name, state, priority, params, counters, seq,
                              defs_rev (definitions rewritten: a resume), canvas,
                              audit_tail (hash of the workflow's own last audit record)
{p}:wf:{id}:defs       hash   step id -> the step's definition (JSON; rewritten only by
                              a resume, which bumps defs_rev)
{p}:wf:{id}:steps      hash   step id -> the step's record (JSON: state, attempts, times,
                              tail: hash of the step's last audit record)
{p}:wf:{id}:results    hash   step id -> the step's result (JSON, stored once)
{p}:wf:{id}:audit      list   transition records in the order they were made, each
                              carrying the hash of the one before it in its own chain
                              (its step's, or the workflow's; see orchestrator.audit)
{p}:workflows          zset   workflow id by submission time
{p}:idem:{key}         string workflow id submitted under an idempotency key
{p}:seq                string submission counter (orders steps that share a concurrency key)
{p}:outstanding        hash   class -> steps queued, running or retrying (admission control);
                              parked:<class> -> steps of parked workflows;
                              sample:<class> -> two samples of its finished count (the rate)
{p}:<kind>:<name>:*    a shared limit (see orchestrator.flow): kind is res (a topology
                       resource), key (a concurrency key value) or tenant (<class>:<tenant>)
{p}:limits:active      set    base keys of limits with holders, waiters or an open circuit
{p}:metrics            hash   counters and histogram buckets, fields JSON arrays such as
                              ["moved", class, from, to] or ["run", task, bucket] (see
                              orchestrator.metrics; written by the Lua scripts and,
                              for run and wait times, workers.observations)
{p}:lent               hash   worker node -> its loan (JSON: home class, the class it helps,
                              since): workers told to also consume a busy queue
{p}:queue_watch:lock   string held by the one orchestrator deciding loans this round
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "treadle"

    def workflow(self, workflow_id: str) -> str:
        return f"{self.prefix}:wf:{workflow_id}"

    def defs(self, workflow_id: str) -> str:
        return f"{self.prefix}:wf:{workflow_id}:defs"

    def steps(self, workflow_id: str) -> str:
        return f"{self.prefix}:wf:{workflow_id}:steps"

    def results(self, workflow_id: str) -> str:
        return f"{self.prefix}:wf:{workflow_id}:results"

    def audit(self, workflow_id: str) -> str:
        return f"{self.prefix}:wf:{workflow_id}:audit"

    def waiting(self, workflow_id: str) -> str:
        return f"{self.prefix}:wf:{workflow_id}:waiting"

    def parked_messages(self, workflow_id: str) -> str:
        """Messages of a parked workflow's steps, kept here until it is resumed."""
        return f"{self.prefix}:wf:{workflow_id}:parked"

    @property
    def unstarted(self) -> str:
        """Workflows of the class that load shedding may park, by submission time."""
        return f"{self.prefix}:unstarted"

    @property
    def parked(self) -> str:
        """Parked workflows, by when they were parked (the oldest resume first)."""
        return f"{self.prefix}:parked"

    def tickets(self, workflow_id: str) -> str:
        """The message that runs each published step, kept while the workflow runs."""
        return f"{self.prefix}:wf:{workflow_id}:tickets"

    def of_workflow(self, workflow_id: str) -> list[str]:
        """Every key that belongs to one workflow."""
        return [
            self.workflow(workflow_id),
            self.defs(workflow_id),
            self.steps(workflow_id),
            self.results(workflow_id),
            self.audit(workflow_id),
            self.waiting(workflow_id),
            self.tickets(workflow_id),
            self.parked_messages(workflow_id),
        ]

    @property
    def index(self) -> str:
        return f"{self.prefix}:workflows"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    def alive(self, incarnation: str) -> str:
        """Exists while the worker process ``incarnation`` (one life of a worker) runs;
        holds its last heartbeat (``orchestrator.heartbeats``)."""
        return f"{self.prefix}:alive:{incarnation}"

    @property
    def incarnations(self) -> str:
        """Every worker process that has started and not yet been seen to stop."""
        return f"{self.prefix}:incarnations"

    @property
    def disrupted(self) -> str:
        """When a worker last lost its broker connection or died: messages in flight then
        may be gone (see ``orchestrator.orphans``)."""
        return f"{self.prefix}:disrupted"

    @property
    def repaired(self) -> str:
        """The last disruption whose orphans the recovery sweep has looked for."""
        return f"{self.prefix}:disrupted:repaired"

    @property
    def sequence(self) -> str:
        return f"{self.prefix}:seq"

    @property
    def outstanding(self) -> str:
        return f"{self.prefix}:outstanding"

    def limit(self, kind: str, name: str) -> str:
        """The base of one shared limit's keys; ``lua/flow.lua`` appends ``:state``
        (bucket and circuit), ``:holders``, ``:owners``, ``:queue`` and ``:parked``."""
        short = {"resource": "res"}.get(kind, kind)
        return f"{self.prefix}:{short}:{name}"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}:metrics"

    @property
    def limits_active(self) -> str:
        return f"{self.prefix}:limits:active"

    @property
    def limits_reaper(self) -> str:
        """Held for a moment by the one process that reaps expired permits this round."""
        return f"{self.prefix}:limits:reaper"

    @property
    def delayed(self) -> str:
        return f"{self.prefix}:delayed"

    @property
    def delayed_entries(self) -> str:
        return f"{self.prefix}:delayed:entries"

    @property
    def delayed_inflight(self) -> str:
        return f"{self.prefix}:delayed:inflight"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}:dead_letter"

    @property
    def dead_letters_by_time(self) -> str:
        return f"{self.prefix}:dead_letter:time"

    @property
    def lent_workers(self) -> str:
        """Workers lent to a busy queue of a higher class, kept so that any orchestrator
        (a restarted one, another replica) can give them back."""
        return f"{self.prefix}:lent"

    @property
    def queue_watch_lock(self) -> str:
        return f"{self.prefix}:queue_watch:lock"
