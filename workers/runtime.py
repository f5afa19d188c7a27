"""The step runtime: what happens around every call of a task function.

claim (record ``running``) -> call the function with params, args and the results of its
dependencies -> record the outcome (``succeeded``, ``retrying`` or ``failed``) -> finish
the workflow when its last step ends -> run the next steps of its chain in line when
they can be (``workers.inline``). Every record is written through the state store, so a
duplicate or stale message can never run a step twice or undo a final state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from pydantic import ValidationError

from config.broker_transport import in_line
from config.queues import queue_for
from config.settings import Settings
from orchestrator import audit, bundles
from orchestrator.conditions import ConditionError
from orchestrator.delays import DelayedMessages
from orchestrator.dispatch import publish_steps
from orchestrator.errors import Permanent, StepError
from orchestrator.finish import finish_workflow
from orchestrator.flow import FAILURE, HELD, NO_VERDICT, SUCCESS, FlowControl, Waiting
from orchestrator.limits import KeyTemplateError, Limit
from orchestrator.model import RetryPolicy
from orchestrator.states import (
    STEP_FINAL,
    STEP_NOT_STARTED,
    WORKFLOW_FINAL,
    StepState,
    WorkflowState,
)
from orchestrator.store import Applied, Change, Conflict, Delayed, StateStore, StepView
from orchestrator.tickets import KEEP_GOING_HEADER
from workers import inline
from workers.context import StepContext
from workers.fan_out import fan_out, join
from workers.gates import skip_reason
from workers.hooks import StepCall, StepHook
from workers.observations import Observations
from workers.registry import Registry, TaskDefinition

log = logging.getLogger("treadle.runtime")

_CLAIM_ATTEMPTS = 8
_GOES_ON = (StepState.succeeded, StepState.skipped)  # a chain continues after these
_GOES_ON_VALUES = frozenset(s.value for s in _GOES_ON)
_ERROR_CHARS = 2000


class StepFailed(StepError):
    """Raised to Celery when a step has failed for good, so that its chain stops."""


@dataclass
class _Attempt:
    view: StepView
    definition: TaskDefinition
    call: StepCall
    refusal: str | None = None  # the step cannot run (a broken condition): fail it
    limits: list[Limit] = field(default_factory=list)  # taken for this attempt
    started_at: float = 0.0  # as recorded (wall clock), for its run time
    released: bool = False
    claim: str = ""  # names this attempt's hold on its limits ("": whoever holds them)
    tail: str = ""  # where the step's audit chain ends after this attempt's last record


class _AlreadyEnded(Exception):
    """A re-issued message (``orchestrator.orphans``) for a step that already ended: its
    chain or chord goes on from here, without running the step again."""

    def __init__(self, state: StepState):
        self.state = state


class _Skipped(Exception):
    """The step was recorded as skipped instead of being claimed."""

    def __init__(self, view: StepView, applied: Applied):
        self.view, self.applied = view, applied


class StepRuntime:
    def __init__(
        self,
        store: StateStore,
        registry: Registry,
        hooks: Sequence[StepHook] = (),
        incarnation: str = "",
        recheck_s: float = 5.0,
        flow: FlowControl | None = None,
        inline_chain_s: float = 0.0,
        observations: Observations | None = None,
        bundle_target_s: float = 0.0,
    ):
        self.store = store
        self.registry = registry
        self.hooks = list(hooks)
        self.incarnation = incarnation  # whose heartbeat says this worker still lives
        self.recheck_s = recheck_s  # how soon a copy of a running step looks again
        self.flow = flow  # shared limits (resources, concurrency keys, tenant caps)
        self.inline_chain_s = inline_chain_s  # how long a delivery may run its chain in line
        self.observations = observations  # run and wait times, if this runtime measures them
        self.bundle_target_s = bundle_target_s  # how long a bundle is expected to run

    def execute(self, task: Task, workflow_id: str, step_id: str) -> dict[str, Any]:
        """Run one step for the Celery task ``task``, then the next steps of its chain that
        can run in line; returns what Celery stores as its result."""
        began = time.monotonic()
        outcome = self._execute_one(task, workflow_id, step_id)
        if self.inline_chain_s > 0 and outcome["state"] in _GOES_ON_VALUES:
            self._run_in_line(task, workflow_id, began)
        return outcome

    def execute_bundle(self, task: Task, workflow_id: str, step_ids: list[str]) -> dict[str, Any]:
        """Run the steps of a bundle (``orchestrator.bundles``) one by one, each as if its
        own message had brought it; once the delivery has used its in-line budget, the
        rest leave as messages of their own."""
        carrier = task.request
        began = time.monotonic()
        allowed = inline.allowance(carrier, self.inline_chain_s)
        if self.bundle_target_s > 0:
            allowed = min(allowed, bundles.OUTRUN * self.bundle_target_s)
        states: dict[str, str] = {}
        for index, step_id in enumerate(step_ids):
            if index and time.monotonic() - began >= allowed:
                self._send_again(task.app, workflow_id, step_ids[index:])
                break
            task.request_stack.push(inline.member_request(carrier, workflow_id, step_id, index))
            try:
                outcome = self._execute_one(
                    task, workflow_id, step_id, carrier=carrier if index else None
                )
                states[step_id] = outcome["state"]
            except (Ignore, Retry, StepFailed):
                continue  # recorded (a retry, a wait, a failure): the next step is its own
            except BaseException:
                # Not recorded (Redis went away, say): the steps not yet run must not wait
                # for this delivery's message, which Celery acknowledges as failed.
                with contextlib.suppress(Exception):
                    self._send_again(task.app, workflow_id, step_ids[index + 1 :])
                raise
            finally:
                task.request_stack.pop()
        return {"workflow_id": workflow_id, "steps": states}

    def _send_again(self, app: Any, workflow_id: str, step_ids: list[str]) -> None:
        """Publish the steps of a bundle that are still queued (never started here), each
        in a message of its own: one of them may be slow, which bundled again they would
        wait for one after the other."""
        if not step_ids:
            return
        records = self.store.step_records_of(workflow_id, step_ids)
        waiting = [s for s in step_ids if (records.get(s) or {}).get("state") == "queued"]
        if waiting:
            priority = self.store.workflow_fields(workflow_id)["priority"]
            publish_steps(app, self.store, workflow_id, waiting, priority, share=False)

    def _run_in_line(self, task: Task, workflow_id: str, began: float) -> None:
        """Claim and run the chain's next steps here (see ``workers.inline``), taking each
        off the chain Celery publishes the rest of when this task returns."""
        carrier = task.request
        chain = carrier.chain
        while True:
            elapsed = time.monotonic() - began
            step_id = inline.next_in_line(carrier, workflow_id, elapsed, self.inline_chain_s)
            if step_id is None:
                return
            link = chain[-1]
            next_task = task.app.tasks.get(link["task"])
            if next_task is None or self.registry.get(link["task"]) is None:
                return
            chain.pop()
            next_task.request_stack.push(inline.request_of(link, list(chain), carrier))
            try:
                outcome = self._execute_one(next_task, workflow_id, step_id, carrier=carrier)
            except (Ignore, Retry, StepFailed):
                # The step took the rest of its chain with it (a retry, a wait for a limit,
                # a fan-out) or ended the chain (a failure): nothing goes on from here.
                chain.clear()
                return
            except BaseException:
                chain.clear()
                raise
            finally:
                next_task.request_stack.pop()
            if outcome["state"] not in _GOES_ON_VALUES:
                chain.clear()
                return

    def _execute_one(
        self, task: Task, workflow_id: str, step_id: str, carrier: Any = None
    ) -> dict[str, Any]:
        """One step; ``carrier`` is the request of the delivery running it in line."""
        try:
            attempt = self._claim(task, workflow_id, step_id, carrier)
        except _AlreadyEnded as ended:
            return {"workflow_id": workflow_id, "step_id": step_id, "state": ended.state.value}
        except _Skipped as skipped:
            # Returning (not raising) lets a chain or chord go on: its next steps see this
            # one skipped and apply their own trigger rule.
            self._continue(task, skipped.view, skipped.applied)
            return {"workflow_id": workflow_id, "step_id": step_id, "state": "skipped"}
        try:
            return self._run(task, attempt)
        finally:
            self._release(attempt, NO_VERDICT)  # if no outcome gave its limits back yet

    def _run(self, task: Task, attempt: _Attempt) -> dict[str, Any]:
        for hook in self.hooks:
            hook.before_run(attempt.call)
        started = time.monotonic()
        try:
            if attempt.refusal is not None:
                raise Permanent(attempt.refusal)
            if attempt.view.definition.get("for_each"):
                fan_out(self.store, task, attempt.view)  # replaces the task
            result_json = self._call_function(attempt)
        except (Ignore, Retry):
            raise  # Celery's own control flow (a replaced or retried task), not a failure
        except Exception as exc:  # any failure of user code is the step's failure
            self._fail(task, attempt, exc, time.monotonic() - started)
            raise  # _fail raises Retry or StepFailed; this keeps type checkers honest
        elapsed = time.monotonic() - started
        compensated = attempt.view.definition.get("compensates")
        now = time.time()
        try:
            applied = self._succeed(attempt, result_json, now, compensated)
        except Conflict:
            # Cancelled (with --terminate) while it ran: the result is not recorded.
            raise Ignore() from None
        self._release(attempt, SUCCESS)
        self._after(lambda h: h.after_success(attempt.call, result_json, elapsed))
        self._continue(task, attempt.view, applied)
        call = attempt.call
        return {"workflow_id": call.workflow_id, "step_id": call.step_id, "state": "succeeded"}

    def _succeed(
        self, attempt: _Attempt, result_json: str, now: float, compensated: str | None
    ) -> Applied:
        return self._record(
            attempt,
            StepState.succeeded,
            {"finished_at": now, "output_sha256": _sha256_text(result_json), "error": None},
            result_json=result_json,
            release=attempt.view.definition.get("release") or (),
            extra=[
                Change(
                    compensated,
                    StepState.succeeded.value,
                    StepState.compensated.value,
                    {"compensated_at": now},
                    {"at": now, "by": attempt.call.step_id},
                )
            ]
            if compensated
            else (),
        )

    def join(self, task: Task, workflow_id: str, parent: str, count: int) -> dict[str, Any]:
        """The end of a fan-out: the items have all succeeded."""
        joined = join(self.store, workflow_id, parent, count)
        if joined is None:
            raise Ignore()
        self._continue(task, *joined)
        return {"workflow_id": workflow_id, "step_id": parent, "state": "succeeded"}

    def _continue(self, task: Task, view: StepView, applied: Applied) -> None:
        """After a step ended: start the counter steps it was the last dependency of, or
        finish the workflow if it was the last step."""
        if applied.ready:
            publish_steps(task.app, self.store, view.workflow_id, applied.ready, view.priority)
        if applied.complete:
            finish_workflow(task.app, self.store, view.workflow_id)

    # -- claiming ----------------------------------------------------------------------

    def _claim(self, task: Task, workflow_id: str, step_id: str, carrier: Any = None) -> _Attempt:
        # A step's first message usually finds it queued and never started: claimed from
        # what this process keeps of its workflow, without reading first (one round trip
        # fewer), unless it waits for limits (their permits are taken before the claim).
        presumed = self.store.presume_step(workflow_id, step_id)
        if presumed is not None and self._has_limits(presumed):
            presumed = None
        for _ in range(_CLAIM_ATTEMPTS):
            view, presumed = presumed or self.store.load_step(workflow_id, step_id), None
            state = StepState(view.record["state"])
            if view.workflow_state == WorkflowState.parked:
                if self._park(task, view):
                    raise Ignore()
                continue  # resumed just now: look again
            self._refuse_unrunnable(task, view, state)
            try:
                refusal = self._gate(view, state)
            except Conflict:
                continue
            definition = self.registry.get(task.name)
            if definition is None:
                raise RuntimeError(f"task {task.name} runs steps but is not in the registry")
            attempt_no = int(view.record.get("attempts", 0)) + 1
            if state == StepState.running and attempt_no > self._policy_of(view).max_attempts:
                # Its worker died during every attempt it had (a task that kills its own
                # worker, say): dead-letter it instead of trying forever.
                attempt_no -= 1
                refusal = f"the worker was lost during attempt {attempt_no}; no attempts left"
            limits: list[Limit] = []
            # Two copies of a step's message can be claimed at once: the one that loses
            # must neither share the winner's permits nor give them back.
            claim = uuid.uuid4().hex[:16]
            if refusal is None:
                limits, refusal = self._take_limits(task, view, state, claim)
            worker = task.request.hostname or ""
            start = self._start(task, view, state, attempt_no, worker, carrier, claim)
            try:
                applied = self.store.apply(
                    workflow_id,
                    [start],
                    tails=view.tails,
                    # How long it waited needs the time it was queued, which a presumed
                    # view does not know: the script measures that one.
                    measured=self.observations is not None and view.presumed is None,
                    guard=view.presumed,
                )
            except Conflict:
                if limits and self.flow is not None:
                    self.flow.release(view, limits, claim=claim)
                continue  # it moved on between our read and our write: look again
            started_at = float(start.fields["started_at"])
            if (
                self.observations is not None
                and view.presumed is None
                and state in (StepState.queued, StepState.pending)
            ):
                # From queued (its dependencies done) to started; a retry's wait is its
                # backoff, not counted.
                queued_at = float(view.record.get("queued_at") or started_at)
                self.observations.wait(task.name, started_at - queued_at)
            call = StepCall(
                workflow_id=workflow_id,
                step_id=step_id,
                task=task.name,
                attempt=attempt_no,
                pool=view.pool,
                worker=worker,
            )
            return _Attempt(
                view,
                definition,
                call,
                refusal,
                limits,
                started_at=started_at,
                tail=applied.tails[step_id],
                claim=claim,
            )
        raise Ignore()

    def _has_limits(self, view: StepView) -> bool:
        if self.flow is None:
            return False
        try:
            return bool(self.flow.limits_of(view))
        except KeyTemplateError:
            return True  # the read path fails the step, saying why

    def _park(self, task: Task, view: StepView) -> bool:
        """Keep this message with its parked workflow (load shedding) until it resumes."""
        parked = self.store.park_message(
            view.workflow_id, view.step_id, json.dumps(_again(task, view))
        )
        if parked:
            log.info(
                "workflow %s is parked: step %s (%s) waits for it to resume",
                view.workflow_id,
                view.step_id,
                view.definition.get("task"),
            )
        return parked

    def _refuse_unrunnable(self, task: Task, view: StepView, state: StepState) -> None:
        """Raise (Ignore, or _AlreadyEnded) if this message must not run the step."""
        if state in STEP_FINAL:
            if state in _GOES_ON and (
                getattr(task.request, KEEP_GOING_HEADER, False) or self._chain_stalled(task, view)
            ):
                raise _AlreadyEnded(state)
            # Already decided (a duplicate, or stopped by cancel or policy): acknowledge
            # without running and without continuing the chain.
            raise Ignore()
        if state == StepState.running and not self._attempt_lost(view):
            self._recheck_later(task, view)
            raise Ignore()
        if view.workflow_state in WORKFLOW_FINAL:
            self._stop_unstarted(view)
            raise Ignore()

    def _chain_stalled(self, task: Task, view: StepView) -> bool:
        """Whether the chain after this ended step stopped for good: its first step not yet
        ended was never started (the next link was lost before it was published) or its
        attempt was lost (run in line by a worker that died). A copy of this message then
        carries the chain on; otherwise it is a duplicate, to be dropped."""
        ids: list[str] = []
        for link in inline.links_in_order(task.request):
            step_id = inline.step_of_link(link, view.workflow_id)
            if step_id is None:
                break
            ids.append(step_id)
        if not ids:
            return False
        records = self.store.step_records_of(view.workflow_id, ids)
        for step_id in ids:
            record = records.get(step_id) or {}
            state = record.get("state")
            if state in _GOES_ON_VALUES:
                continue
            if state == StepState.pending.value:
                return True
            return state == StepState.running.value and self._lost(record, None)
        return False

    def _start(
        self,
        task: Task,
        view: StepView,
        state: StepState,
        attempt_no: int,
        worker: str,
        carrier: Any = None,
        claim: str = "",
    ) -> Change:
        """The transition that starts attempt ``attempt_no`` on this worker."""
        input_sha = audit.sha256_of(
            {
                "params": view.params,
                "args": view.definition.get("args", {}),
                "results": view.results,
            }
        )
        now = time.time()
        fields: dict[str, Any] = {
            "attempts": attempt_no,
            "started_at": now,
            "worker": worker,
            "incarnation": self.incarnation,
            "task_id": task.request.id,
            "input_sha256": input_sha,
            "finished_at": None,
            "waiting_for": None,
            # The next attempt may take over the permits this one leaves (it ended or
            # was lost); a copy claimed beside this one may not (see FlowControl.acquire).
            "claim": claim,
        }
        if not view.record.get("queued_at") and view.presumed is None:
            fields["queued_at"] = now
        record: dict[str, Any] = {
            "at": now,
            "task": task.name,
            "attempt": attempt_no,
            "worker": worker,
            "input_sha256": input_sha,
        }
        if view.dependency_tails:
            # Seals the order between chains: this start follows each dependency's last
            # record (its end), which ``treadle audit`` checks.
            record["after"] = view.dependency_tails
        if state == StepState.running:
            record["note"] = "previous attempt lost"
        if carrier is not None:
            # Run in line: no message of its own; the one that carried it is unacked.
            fields["inline_of"] = record["inline_of"] = str(carrier.args[1])
            fields["inline_task_id"] = str(carrier.id)
        elif view.record.get("inline_of"):
            fields["inline_of"] = fields["inline_task_id"] = None
        return Change(view.step_id, state.value, StepState.running.value, fields, record)

    # -- limits --------------------------------------------------------------------------

    def _take_limits(
        self, task: Task, view: StepView, state: StepState, claim: str
    ) -> tuple[list[Limit], str | None]:
        """Take the step's shared limits, or park its message until they are free (raising
        Ignore: the step holds no worker slot and spends no attempt while it waits).
        Returns the limits taken and, if they cannot be known, why the step must fail."""
        if self.flow is None:
            return [], None
        try:
            limits = self.flow.limits_of(view)
        except KeyTemplateError as exc:
            return [], f"concurrency_key cannot be filled in: {exc}"
        if not limits:
            return [], None
        timeout_s = float(view.definition.get("timeout_s") or 0)
        # Past the hard time limit the attempt is dead for sure; the heartbeat of its
        # worker usually tells sooner (see FlowControl.reap).
        lease_s = Settings.hard_limit_s(timeout_s) + self.recheck_s if timeout_s else 3600.0
        waiting = self.flow.acquire(
            view,
            limits,
            self.incarnation,
            lease_s,
            _again(task, view),
            claim=claim,
            replaces=str(view.record.get("claim") or ""),
        )
        if waiting is None:
            return limits, None
        if waiting.reason == HELD:
            # Another copy of this step's message, claimed at the same moment, holds its
            # permits and is about to run it: this one looks again later, as a copy of a
            # running step does.
            self._recheck_later(task, view, f"another copy holds its {waiting.limit.label}")
            raise Ignore()
        self._note_waiting(view, state, waiting)
        raise Ignore()

    def _note_waiting(self, view: StepView, state: StepState, waiting: Waiting) -> None:
        """Log every wait; record the first one for each limit (``treadle status`` shows
        it) without an audit record per look."""
        log.info(
            "workflow %s step %s (%s) is %s",
            view.workflow_id,
            view.step_id,
            view.definition.get("task"),
            waiting.describe(),
        )
        label = waiting.limit.label
        if state == StepState.running or view.record.get("waiting_for") == label:
            return
        now = time.time()
        fields = {
            "waiting_for": label,
            "waiting_since": view.record.get("waiting_since") or now,
        }
        record = {"at": now, "waiting_for": label, "reason": waiting.reason}
        with contextlib.suppress(Conflict):
            self.store.apply(
                view.workflow_id,
                [Change(view.step_id, state.value, state.value, fields, record)],
                tails=view.tails,
            )

    def _release(self, attempt: _Attempt, verdict: str, wait_again: bool = False) -> None:
        """Give back the attempt's limits, once, with the circuit breakers' verdict."""
        if attempt.released or not attempt.limits or self.flow is None:
            return
        attempt.released = True
        try:
            self.flow.release(
                attempt.view, attempt.limits, verdict, wait_again, claim=attempt.claim
            )
        except Exception:  # the reaper takes them back when their lease ends
            log.exception(
                "workflow %s step %s: could not give back its limits",
                attempt.call.workflow_id,
                attempt.call.step_id,
            )

    def _attempt_lost(self, view: StepView) -> bool:
        """Whether the recorded attempt of a running step will never end by itself."""
        return self._lost(view.record, float(view.definition.get("timeout_s") or 0))

    def _lost(self, record: dict[str, Any], timeout_s: float | None) -> bool:
        attempts = int(record.get("attempts", 0))
        if int(record.get("lost_attempt", 0)) >= attempts:
            return True  # its process died (see mark_lost)
        if not self.store.worker_alive(record.get("incarnation") or ""):
            return True  # its whole worker died
        if not timeout_s:
            return False
        # A last resort if the loss went unrecorded: past its hard time limit, the attempt
        # has been killed for sure.
        started = float(record.get("started_at") or 0)
        deadline = started + Settings.hard_limit_s(timeout_s) + self.recheck_s
        return bool(timeout_s) and time.time() > deadline

    def _recheck_later(self, task: Task, view: StepView, why: str = "") -> None:
        """A second copy of the message of a running step: a broker reconnect or the
        recovery sweep put one back while its attempt still runs. Acknowledging it could
        lose the step (if the running attempt's own message was the one put back and its
        worker dies next), so it waits in the delayed set, holding no worker slot, and
        looks again until that attempt has ended (then it is ignored) or is lost (then it
        runs the step)."""
        DelayedMessages(self.store).add(
            f"{view.workflow_id}/{view.step_id}/recheck-{uuid.uuid4().hex[:12]}",
            time.time() + self.recheck_s,
            _again(task, view),
        )
        if not why:
            attempt, worker = view.record.get("attempts"), view.record.get("worker")
            why = f"attempt {attempt} still runs on {worker}"
        log.info(
            "workflow %s step %s: %s; this copy looks again in %ss",
            view.workflow_id,
            view.step_id,
            why,
            self.recheck_s,
        )

    def mark_lost(self, workflow_id: str, step_id: str, task_id: str, error: str) -> None:
        """The pool process running a step died; Celery puts its message back. Record the
        attempt as lost, so that the copy runs the step again at once, and give back its
        limits. Runs in the worker's main process."""
        lost = record_lost_attempt(
            self.store, workflow_id, step_id, error, incarnation=self.incarnation, task_id=task_id
        )
        if not lost:
            carried = self._carried_by(workflow_id, task_id)
            if carried is not None:
                step_id = carried
                lost = record_lost_attempt(
                    self.store, workflow_id, step_id, error, incarnation=self.incarnation
                )
        if lost and self.flow is not None:
            view = self.store.load_step(workflow_id, step_id)
            self.flow.release(view, self.flow.held_by(view))

    def _gate(self, view: StepView, state: StepState) -> str | None:
        """Skip the step (raising _Skipped) if its trigger rule or condition says so;
        returns why it must fail instead of running, or None."""
        try:
            reason = skip_reason(view.definition, view.dependency_states, view.params, view.results)
        except ConditionError as exc:
            return f"condition cannot be evaluated: {exc}"
        if reason is None:
            return None
        raise _Skipped(view, self._skip(view, state, reason))

    def _skip(self, view: StepView, state: StepState, reason: str) -> Applied:
        now = time.time()
        fields = {"finished_at": now, "skip_reason": reason}
        if not view.record.get("queued_at"):
            fields["queued_at"] = now
        return self.store.apply(
            view.workflow_id,
            [
                Change(
                    view.step_id,
                    state.value,
                    StepState.skipped.value,
                    fields,
                    {"at": now, "reason": reason},
                    release=view.definition.get("release") or (),
                )
            ],
            tails=view.tails,
        )

    def _stop_unstarted(self, view: StepView) -> None:
        """The workflow already ended (cancelled or failed): this step will never run."""
        new = StepState.cancelled if view.workflow_state == "cancelled" else StepState.skipped
        record = {"at": time.time(), "reason": f"workflow is {view.workflow_state}"}
        with contextlib.suppress(Conflict):  # someone else settled it
            self.store.apply(
                view.workflow_id,
                [
                    Change(
                        view.step_id,
                        view.record["state"],
                        new.value,
                        {"finished_at": time.time()},
                        record,
                    )
                ],
            )

    # -- running -----------------------------------------------------------------------

    def _call_function(self, attempt: _Attempt) -> str:
        view, definition = attempt.view, attempt.definition
        args = dict(view.definition.get("args") or {})
        if "item_of" in view.definition and definition.takes_item:
            args.setdefault("item", view.definition.get("item"))
        try:
            kwargs = definition.bind(args)
        except ValidationError as exc:
            raise Permanent(f"arguments do not fit {definition.name}: {exc}") from exc
        if definition.wants_context:
            kwargs["ctx"] = StepContext(
                workflow_id=view.workflow_id,
                step_id=view.step_id,
                task=definition.name,
                attempt=attempt.call.attempt,
                params=view.params,
                results=view.results,
                priority=attempt.call.pool,
                worker=attempt.call.worker,
                item=view.definition.get("item"),
                index=view.definition.get("index"),
            )
        result = definition.func(**kwargs)
        try:
            return json.dumps(result)
        except (TypeError, ValueError) as exc:
            raise Permanent(f"{definition.name} returned a value that is not JSON: {exc}") from exc

    # -- recording ---------------------------------------------------------------------

    def _record(
        self,
        attempt: _Attempt,
        new: StepState,
        fields: dict[str, Any],
        result_json: str | None = None,
        extra: Sequence[Change] = (),
        release: Sequence[str] = (),
        delayed: Delayed | None = None,
        dead_letter: dict[str, Any] | None = None,
    ) -> Applied:
        call = attempt.call
        record = {
            "at": time.time(),
            "task": call.task,
            "attempt": call.attempt,
            "worker": call.worker,
            **{k: fields[k] for k in ("output_sha256", "error") if fields.get(k) is not None},
        }
        change = Change(
            call.step_id,
            StepState.running.value,
            new.value,
            fields,
            record,
            result_json,
            release,
            delayed=delayed,
            dead_letter=dead_letter,
        )
        measured = self.observations is not None and attempt.started_at > 0
        applied = self.store.apply(
            call.workflow_id,
            [change, *extra],
            tails={call.step_id: attempt.tail},
            measured=measured,
        )
        attempt.tail = applied.tails[call.step_id]
        if measured and self.observations is not None:
            ended = float(fields.get("finished_at") or time.time())
            self.observations.run(call.task, ended - attempt.started_at)
        return applied

    def fail_killed(
        self, task: Task, request: Any, workflow_id: str, step_id: str, error: str
    ) -> None:
        """An attempt whose process was killed (hard time limit): record it as failed and
        retry or dead-letter the step. Runs in the worker's main process."""
        view = self.store.load_step(workflow_id, step_id)
        bundled = self._bundle_of(request)
        if bundled:
            # The bundle's message is acknowledged with this: the steps it had not started
            # yet go on in messages of their own.
            self._send_again(task.app, workflow_id, bundled)
        if view.record.get("state") != StepState.running.value:
            # It ended; the step its delivery ran in line after it may be the one killed.
            found = self._in_line_request(task.app, workflow_id, request)
            if found is None:
                return
            task, request, view = found
        elif bundled:
            request = inline.member_request(request, workflow_id, step_id, 0)
        definition = self.registry.get(task.name)
        if view.record.get("state") != StepState.running.value or definition is None:
            return
        call = StepCall(
            workflow_id=workflow_id,
            step_id=view.step_id,
            task=task.name,
            attempt=int(view.record.get("attempts", 1)),
            pool=view.pool,
            worker=view.record.get("worker") or "",
        )
        started = float(view.record.get("started_at") or time.time())
        with contextlib.suppress(Ignore, StepFailed):
            self._fail(
                task,
                _Attempt(
                    view,
                    definition,
                    call,
                    limits=self.flow.held_by(view) if self.flow else [],
                    started_at=float(view.record.get("started_at") or 0),
                ),
                TimeLimitExceeded(error),
                time.time() - started,
                request=request,
            )

    def _carried_by(self, workflow_id: str, task_id: str) -> str | None:
        """The step running in line under the delivery ``task_id``, if any (a rare look,
        after a loss: it reads every step record of the workflow)."""
        for step_id, record in self.store.step_records(workflow_id).items():
            if (
                record.get("state") == StepState.running.value
                and record.get("inline_task_id") == task_id
            ):
                return step_id
        return None

    def _in_line_request(
        self, app: Any, workflow_id: str, carrier: Any
    ) -> tuple[Task, Any, StepView] | None:
        """For a delivery that ran steps in line: the task, request and view of the one it
        was running (the request its own message would have had)."""
        step_id = self._carried_by(workflow_id, str(carrier.id))
        if step_id is None:
            return None
        bundled = self._bundle_of(carrier)
        if step_id in bundled:
            task = app.tasks[carrier.task]
            index = bundled.index(step_id)
            request = inline.member_request(carrier, workflow_id, step_id, index)
            return task, request, self.store.load_step(workflow_id, step_id)
        chain = list(getattr(carrier, "chain", None) or [])
        for index, link in enumerate(chain):
            task = app.tasks.get(link.get("task"))
            if task is not None and inline.step_of_link(link, workflow_id) == step_id:
                request = inline.request_of(link, chain[:index], carrier)
                return task, request, self.store.load_step(workflow_id, step_id)
        return None

    @staticmethod
    def _bundle_of(request: Any) -> list[str]:
        """The steps of the bundle ``request`` delivers, or [] for a step's own message."""
        kwargs = getattr(request, "kwargs", None)
        if not bundles.others_in(kwargs):
            return []
        return bundles.members(getattr(request, "args", None), kwargs)

    def _fail(
        self,
        task: Task,
        attempt: _Attempt,
        exc: BaseException,
        elapsed: float,
        request: Any = None,
    ) -> None:
        policy = self._policy_of(attempt.view)
        permanent = isinstance(exc, Permanent) or not policy.retries(exc)
        retry = not permanent and attempt.call.attempt < policy.max_attempts
        error = _describe(exc)
        self._after(lambda h: h.after_failure(attempt.call, exc, elapsed, retry))
        if retry:
            delay = policy.delay_s(attempt.call.attempt, random.random())
            due = time.time() + delay
            # The same message again (same task id, same place in its chain or chord),
            # kept in Redis until due rather than as an ETA message a worker holds.
            again = in_line(
                task.signature_from_request(request, queue=queue_for(attempt.call.pool))
            )
            self._record(
                attempt,
                StepState.retrying,
                {"error": error, "next_attempt_at": due},
                delayed=Delayed(
                    f"{attempt.call.workflow_id}/{attempt.call.step_id}/{attempt.call.attempt}",
                    due,
                    again,
                ),
            )
            self._release(attempt, FAILURE, wait_again=True)
            raise Ignore()  # this delivery is done; the retry is the delayed message
        applied = self._fail_for_good(attempt, error, exc)
        self._release(attempt, FAILURE)
        if applied.complete:
            finish_workflow(task.app, self.store, attempt.call.workflow_id)
        raise StepFailed(
            f"workflow {attempt.call.workflow_id} step {attempt.call.step_id} "
            f"({attempt.call.task}) failed after {attempt.call.attempt} attempt(s): {error}"
        ) from exc

    def _fail_for_good(self, attempt: _Attempt, error: str, exc: BaseException) -> Applied:
        """File the step in the dead-letter queue and, under ``on_failure: stop``, skip
        every step not yet started (running branches finish; nothing new starts)."""
        call, now = attempt.call, time.time()
        trace = "".join(traceback.format_exception(exc))[-_ERROR_CHARS * 2 :]
        fields = {"error": error, "traceback": trace, "finished_at": now}
        letter = {
            "id": f"{call.workflow_id}/{call.step_id}/{call.attempt}",
            "at": now,
            "kind": "step",
            "workflow_id": call.workflow_id,
            "step_id": call.step_id,
            "task": call.task,
            "args": attempt.view.definition.get("args") or {},
            "error": error,
            "traceback": trace,
            "attempts": call.attempt,
            "pool": call.pool,
            "worker": call.worker,
        }
        for _ in range(_CLAIM_ATTEMPTS):
            records = self.store.step_records(call.workflow_id)
            skips = [
                Change(
                    sid,
                    rec["state"],
                    StepState.skipped.value,
                    {"finished_at": now},
                    {"at": now, "reason": f"step {call.step_id} failed"},
                )
                for sid, rec in records.items()
                if sid != call.step_id and rec["state"] in STEP_NOT_STARTED
            ]
            parent = attempt.view.definition.get("item_of")
            if parent is not None and records.get(parent, {}).get("state") == "running":
                # A fan-out whose item failed for good has failed: its join will not come.
                why = f"item {call.step_id} failed"
                skips.append(
                    Change(
                        parent,
                        StepState.running.value,
                        StepState.failed.value,
                        {"finished_at": now, "error": why},
                        {"at": now, "reason": why},
                    )
                )
            try:
                return self._record(
                    attempt, StepState.dead_lettered, fields, extra=skips, dead_letter=letter
                )
            except Conflict as conflict:
                if conflict.target == call.step_id:
                    raise
        return self._record(attempt, StepState.dead_lettered, fields, dead_letter=letter)

    def _policy_of(self, view: StepView) -> RetryPolicy:
        # Resolved at submission (the step's own policy, else its task's default), so every
        # worker applies the policy the stored definition shows. A compensation, created
        # at run time, is retried under its own task's policy.
        own = view.definition.get("retry")
        if own:
            return RetryPolicy.model_validate(own)
        task = (
            self.registry.get(view.definition["task"]) if "compensates" in view.definition else None
        )
        return (task.retry if task else None) or RetryPolicy(max_attempts=1)

    def _after(self, hook_call: Any) -> None:
        for hook in reversed(self.hooks):
            try:
                hook_call(hook)
            except Exception:  # a broken hook must not fail a step that already ran
                log.exception("step hook %s failed", type(hook).__name__)


def _again(task: Task, view: StepView) -> dict[str, Any]:
    """This delivery's message once more (same task id, same place in its chain or
    chord), to publish later: a step that must wait keeps it in Redis meanwhile."""
    return in_line(task.signature_from_request(task.request, queue=queue_for(view.pool)))


def record_lost_attempt(
    store: StateStore,
    workflow_id: str,
    step_id: str,
    error: str,
    *,
    incarnation: str,
    task_id: str | None = None,
) -> bool:
    """Record that the running attempt of a step, started by the worker ``incarnation``
    (and Celery task ``task_id``), was lost; False if the step has moved on."""
    record = store.step_records_of(workflow_id, [step_id]).get(step_id) or {}
    if (
        record.get("state") != StepState.running.value
        or record.get("incarnation") != incarnation
        or (task_id is not None and record.get("task_id") != task_id)
    ):
        return False
    attempt, now = int(record.get("attempts", 0)), time.time()
    try:
        store.apply(
            workflow_id,
            [
                Change(
                    step_id,
                    StepState.running.value,
                    StepState.running.value,
                    {"lost_attempt": attempt},
                    {"at": now, "lost": True, "attempt": attempt, "error": error},
                )
            ],
            tails={step_id: str(record.get("tail") or "")},
        )
    except Conflict:
        return False
    return True


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SoftTimeLimitExceeded):
        return "timed out (soft time limit)"
    if isinstance(exc, TimeLimitExceeded):
        return str(exc.args[0]) if exc.args else "timed out (hard time limit)"
    return f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]


def _sha256_text(text: str) -> str:
    return audit.sha256_of(json.loads(text))
