"""The orchestrator's work: validate, store and dispatch submissions; cancel; recover.

Used in-process by the Python client and the CLI, and by the orchestrator process.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from config.celery_app import make_app, resolve_redis_url
from config.redact import redact_url
from config.redis_client import answers, connect
from config.settings import Settings
from config.topology import Topology, load_topology
from orchestrator.admission import Admission
from orchestrator.audit_report import AuditReport, audit
from orchestrator.compiler import compile_workflow
from orchestrator.dead_letters import DeadLetters
from orchestrator.dispatch import dispatch
from orchestrator.errors import InvalidInput, Problem, Unreachable, WrongState
from orchestrator.flow import FlowControl, reservations
from orchestrator.keys import Keys
from orchestrator.model import Workflow
from orchestrator.resume import Resumed, resume
from orchestrator.shedding import PARKABLE
from orchestrator.states import STEP_NOT_STARTED, WORKFLOW_FINAL, StepState, WorkflowState
from orchestrator.store import Change, Conflict, StateStore, step_definitions
from orchestrator.validate import Limits, validate
from workers.registry import Registry, load_task_modules


@dataclass(frozen=True)
class Submission:
    id: str
    created: bool  # False: the idempotency key was used before; ``id`` is the first one


def with_overrides(
    raw: Any, params: Mapping[str, Any] | None = None, priority: str | None = None
) -> Any:
    """The spec with ``--param`` values merged into its params and ``--priority`` set."""
    if not isinstance(raw, Mapping):
        return raw
    merged = dict(raw)
    if params:
        base = merged.get("params") or {}
        if not isinstance(base, Mapping):
            raise InvalidInput(Problem("params", "must be a mapping to take --param values"))
        merged["params"] = {**base, **params}
    if priority is not None:
        merged["priority"] = priority
    return merged


def parse_param(text: str, where: str = "--param") -> tuple[str, Any]:
    """One ``KEY=VALUE`` override (the CLI's ``--param``, the API's ``param=``); the value
    is parsed as JSON if it is JSON, else kept as a string."""
    if "=" not in text:
        raise InvalidInput(Problem(where, f"{text!r}: expected KEY=VALUE"))
    key, value = text.split("=", 1)
    if not key:
        raise InvalidInput(Problem(where, f"{text!r}: empty key"))
    try:
        return key, json.loads(value, parse_constant=_not_json)
    except ValueError:  # not JSON (NaN and Infinity are not either): the text itself
        return key, value


def _not_json(name: str) -> Any:
    raise ValueError(name)


class SpecChecker:
    """Validation with the task catalog, limits and resources of these settings; needs
    no Redis, so ``treadle validate`` and ``treadle plan`` work offline."""

    def __init__(self, settings: Settings):
        self.task_modules = settings.task_module_list()
        self.default_timeout_s = settings.default_step_timeout_s
        self.registry: Registry = load_task_modules(self.task_modules)
        self.topology: Topology = load_topology(settings.topology)
        self.limits = Limits(
            max_steps=settings.max_steps,
            max_params_bytes=settings.max_params_bytes,
            max_args_bytes=settings.max_args_bytes,
            max_step_timeout_s=settings.max_step_timeout_s,
        )

    def check(self, raw: Any, source: str | None = None) -> Workflow:
        """The validated workflow, each step completed with its task's defaults."""
        try:
            workflow = validate(
                raw,
                self.registry,
                limits=self.limits,
                resources=self.topology.resources,
                source=source,
            )
        except InvalidInput as exc:
            unknown_task = any(p.what.startswith("unknown task") for p in exc.problems)
            if unknown_task and not self.task_modules:
                exc.problems.append(
                    Problem(
                        "TREADLE_TASK_MODULES",
                        "is empty, so only the treadle.* built-ins are known: set it to the "
                        "modules that define your tasks (comma separated)",
                    )
                )
                raise InvalidInput(exc.problems, source) from None
            raise
        return self._with_task_defaults(workflow, source)

    def _with_task_defaults(self, workflow: Workflow, source: str | None) -> Workflow:
        steps, problems = [], []
        for step in workflow.steps:
            definition = self.registry.get(step.task)
            assert definition is not None  # validate() checked every task name
            timeout_s = step.timeout_s or definition.timeout_s or self.default_timeout_s
            if timeout_s is not None and timeout_s > self.limits.max_step_timeout_s:
                problems.append(
                    Problem(
                        f"{step.where}.task",
                        f"{step.task} defaults to timeout_s {timeout_s}, longer than the "
                        f"longest allowed ({self.limits.max_step_timeout_s} s)",
                    )
                )
            retry = step.retry or definition.retry
            steps.append(
                dataclasses.replace(
                    step,
                    timeout_s=timeout_s,
                    retry=retry,
                    resources=step.resources or definition.resources,
                )
            )
        if problems:
            raise InvalidInput(problems, source)
        return dataclasses.replace(workflow, steps=tuple(steps))


class Orchestrator:
    def __init__(
        self,
        settings: Settings,
        app: Celery,
        store: StateStore,
        checker: SpecChecker,
        redis_url: str | None = None,
    ):
        self.settings = settings
        self.app = app
        self.store = store
        self.checker = checker
        self.redis_url = redis_url  # for probes that must not wait out the retry window
        self.admission = Admission(store, checker.topology)
        self.flow = FlowControl(store, checker.topology)

    @classmethod
    def from_settings(cls, settings: Settings, redis_url: str | None = None) -> Orchestrator:
        url = redis_url or resolve_redis_url(settings)
        try:
            answers(url, settings)  # at once: a CLI command must not wait out the retry window
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise Unreachable(f"Redis at {redact_url(url)} cannot be reached: {exc}") from exc
        client = connect(url, settings)
        return cls(
            settings,
            make_app(settings, url),
            StateStore(client, Keys(settings.key_prefix), state_ttl_s=settings.state_ttl_s),
            SpecChecker(settings),
            url,
        )

    def close(self) -> None:
        self.store.redis.close()
        self.app.close()

    # -- submissions -----------------------------------------------------------------

    def submit(self, raw: Any, source: str | None = None) -> Submission:
        """Validate, store and dispatch; nothing is written unless all of it is valid."""
        workflow = self.checker.check(raw, source)
        compiled = compile_workflow(workflow)
        if workflow.idempotency_key:
            # A repeat of an admitted submission is answered, not refused.
            first = self.store.workflow_for_key(workflow.idempotency_key)
            if first is not None:
                return Submission(first, False)
        self.admission.admit(workflow.priority.value)
        workflow_id = uuid.uuid4().hex
        defs = step_definitions(workflow, compiled)
        stored_id, created = self.store.create(
            workflow_id,
            workflow,
            compiled,
            reservations=reservations(self.store.keys, workflow, defs),
        )
        if created:
            if workflow.priority == PARKABLE:
                # Load shedding may park it until its first step starts.
                self.store.redis.zadd(self.store.keys.unstarted, {stored_id: time.time()})
            dispatch(self.app, self.store, stored_id, compiled, defs, workflow.priority.value)
        return Submission(stored_id, created)

    # -- control ---------------------------------------------------------------------

    def cancel(self, workflow_id: str, terminate: bool = False) -> str:
        """Cancel a workflow: steps not started never start; running steps finish, or with
        ``terminate`` are killed (Celery's revoke with terminate) and recorded cancelled.

        Returns the workflow's state afterwards (unchanged if it had already ended).
        """
        for _ in range(16):
            fields = self.store.workflow_fields(workflow_id)
            if fields["state"] in WORKFLOW_FINAL:
                return fields["state"]
            now = time.time()
            changes = [
                Change(
                    None,
                    fields["state"],
                    WorkflowState.cancelled.value,
                    {"finished_at": repr(now)},
                    {"at": now, "reason": "cancel requested"},
                )
            ]
            stopping = set(STEP_NOT_STARTED) | ({StepState.running} if terminate else set())
            running: dict[str, str] = {}
            for step_id, record in self.store.step_records(workflow_id).items():
                if record["state"] == StepState.running and terminate and record.get("task_id"):
                    running[step_id] = record["task_id"]
                if record["state"] in stopping:
                    changes.append(
                        Change(
                            step_id,
                            record["state"],
                            StepState.cancelled.value,
                            {"finished_at": now},
                            {"at": now, "reason": "workflow cancelled"},
                        )
                    )
            try:
                self.store.apply(workflow_id, changes, tails={"": fields.get("audit_tail") or ""})
            except Conflict:
                continue
            if running:
                # Recorded first: a step that still ends now finds itself cancelled and its
                # result is dropped; then its process is stopped.
                self.app.control.revoke(list(running.values()), terminate=True, signal="SIGTERM")
                for step_id in running:
                    # A killed step gives nothing back itself; its limits would otherwise
                    # stay taken until their lease ran out.
                    view = self.store.load_step(workflow_id, step_id)
                    self.flow.release(view, self.flow.held_by(view))
            self.store.expire(workflow_id)
            return WorkflowState.cancelled.value
        raise Unreachable(f"workflow {workflow_id}: too busy to cancel, try again")

    def resume(self, workflow_id: str) -> Resumed:
        """Re-run failed, dead-lettered, skipped and cancelled steps and their dependents."""
        return resume(self.app, self.store, workflow_id)

    def replay(self, letter_id: str) -> Resumed:
        """Re-queue a dead-lettered step; its workflow goes on (a resume of it)."""
        letter = DeadLetters(self.store).get(letter_id)
        if letter.get("kind") != "step":
            raise WrongState(
                f"dead letter {letter_id} is a message that could not be read "
                f"({letter.get('error')}); it cannot be replayed, only purged"
            )
        return self.resume(letter["workflow_id"])

    def replay_all(self) -> list[str]:
        """Resume every workflow with a step in the dead-letter queue; their ids."""
        letters = DeadLetters(self.store).entries()
        workflows = sorted({e["workflow_id"] for e in letters if e.get("kind") == "step"})
        for workflow_id in workflows:
            self.resume(workflow_id)
        return workflows

    def audit(self, workflow_id: str) -> AuditReport:
        """Check the recorded run against its graph (``treadle audit``)."""
        entries, tails = self.store.audit_entries(workflow_id)
        defs = self.store.step_defs(workflow_id)
        after = {s: d.get("after", []) for s, d in defs.items()}
        all_done = [s for s, d in defs.items() if d.get("trigger") == "all_done"]
        return audit(workflow_id, entries, tails, after, all_done)

    def ready(self) -> bool:
        """Redis answers now (one ping, no retrying)."""
        if self.redis_url is None:
            return bool(self.store.redis.ping())
        try:
            answers(self.redis_url, self.settings, timeout_s=2.0)
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        return True
