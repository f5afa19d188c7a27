"""The step runtime's one extension point.

A hook sees each step call before it runs and after it ends. Later features (limits,
dead letters, metrics) plug in as one hook each instead of as branches in the runtime.
A hook that raises in ``after_*`` is logged and ignored: it must not fail a step that
already ran. ``before_run`` may raise to stop the call (that is how a limit defers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("treadle.step")


@dataclass(frozen=True)
class StepCall:
    workflow_id: str
    step_id: str
    task: str
    attempt: int
    pool: str
    worker: str


class StepHook:
    """No-op base: override the moments you care about."""

    def before_run(self, call: StepCall) -> None:
        return None

    def after_success(self, call: StepCall, result: Any, elapsed_s: float) -> None:
        return None

    def after_failure(
        self, call: StepCall, error: BaseException, elapsed_s: float, will_retry: bool
    ) -> None:
        return None


class LogHook(StepHook):
    """One log line per attempt, in the user's words."""

    def before_run(self, call: StepCall) -> None:
        log.info(
            "workflow %s step %s (%s) attempt %d started on %s [%s pool]",
            call.workflow_id,
            call.step_id,
            call.task,
            call.attempt,
            call.worker,
            call.pool,
        )

    def after_success(self, call: StepCall, result: Any, elapsed_s: float) -> None:
        log.info(
            "workflow %s step %s (%s) attempt %d succeeded in %.3f s",
            call.workflow_id,
            call.step_id,
            call.task,
            call.attempt,
            elapsed_s,
        )

    def after_failure(
        self, call: StepCall, error: BaseException, elapsed_s: float, will_retry: bool
    ) -> None:
        log.warning(
            "workflow %s step %s (%s) attempt %d failed after %.3f s (%s): %s: %s",
            call.workflow_id,
            call.step_id,
            call.task,
            call.attempt,
            elapsed_s,
            "will retry" if will_retry else "no more attempts",
            type(error).__name__,
            error,
        )
