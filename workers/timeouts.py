"""Hard time limits: the child running the step is killed, so the step runtime inside it
records nothing. The worker's main process does it instead, here: the attempt counts as
failed, and the step is retried or dead-lettered like any other failure.

Celery's own handling would mark the task failed in the result backend, which fails the
chord the step belongs to even when a retry is coming; so for step tasks it is replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

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

    return StepRequest
