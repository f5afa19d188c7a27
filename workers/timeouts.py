"""When the process running a step dies, the step runtime inside it records nothing; the
worker's main process does it instead, here.

- Hard time limit: the attempt counts as failed, and the step is retried or dead-lettered
  like any other failure. Celery's own handling would mark the task failed in the result
  backend, which fails the chord the step belongs to even when a retry is coming; so for
  step tasks it is replaced.
- Any other death of the pool process (SIGKILL, out of memory): Celery puts the message
  back (``reject_on_worker_lost``); the attempt is first recorded as lost, so the copy
  runs the step again instead of waiting for an attempt that will never end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import WorkerLostError
from celery.worker import state
from celery.worker.request import Request

from workers.runtime import StepRuntime

log = logging.getLogger("treadle.timeouts")


def step_request_class(runtime: Callable[[], StepRuntime]) -> type[Request]:
    class StepRequest(Request):  # type: ignore[misc]
        def on_timeout(self, soft: bool, timeout: float) -> None:
            if soft or state.should_terminate:
                # Soft: the task gets SoftTimeLimitExceeded and the runtime records it.
                # Cold shutdown: the message goes back to the queue as Celery does it.
                super().on_timeout(soft, timeout)
                return
            state.task_ready(self)
            log.error("hard time limit (%ss) exceeded for %s[%s]", timeout, self.name, self.id)
            args: Any = self.args
            try:
                if isinstance(args, (list, tuple)) and len(args) == 2:
                    runtime().fail_killed(
                        self.task,
                        self._context,
                        str(args[0]),
                        str(args[1]),
                        f"timed out: killed at the hard time limit of {timeout} s",
                    )
            except Exception:  # the recovery sweep still sees a step stuck running
                log.exception("could not record the hard time limit of %s", self.id)
            finally:
                self.acknowledge()

        def on_failure(
            self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
        ) -> Any:
            args: Any = self.args
            exc = exc_info.exception
            if isinstance(exc, ExceptionWithTraceback):
                exc = exc.exc
            lost = isinstance(exc, WorkerLostError) or (
                # Celery also treats a child that exited on its own as lost.
                isinstance(exc, SystemExit)
                and not (self._already_cancelled or self._already_revoked)
            )
            if lost and isinstance(args, (list, tuple)) and len(args) == 2:
                try:
                    runtime().mark_lost(str(args[0]), str(args[1]), self.id, str(exc))
                except Exception:  # the copy still runs once the hard time limit has passed
                    log.exception("could not record the lost attempt of %s", self.id)
            return super().on_failure(exc_info, send_failed_event, return_ok)

    return StepRequest
