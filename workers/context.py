"""What a step's function can see of the workflow it runs in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StepContext:
    """Passed to a task function that declares a parameter named ``ctx``.

    ``results`` holds the results of the steps this one depends on, by step id.
    ``idempotency_key`` is stable across attempts of the same step: pass it to external
    services so that a retried call is recognised as the same call.
    """

    workflow_id: str
    step_id: str
    task: str
    attempt: int
    params: Mapping[str, Any] = field(default_factory=dict)
    results: Mapping[str, Any] = field(default_factory=dict)
    priority: str = "default"
    worker: str = ""
    item: Any = None  # in a for_each fan-out: this step's element of the source's list
    index: int | None = None  # ... and its position in that list

    @property
    def idempotency_key(self) -> str:
        return f"{self.workflow_id}:{self.step_id}"

    @property
    def result(self) -> Any:
        """The result of the single step this one depends on (None if it has none)."""
        if len(self.results) > 1:
            raise ValueError(
                f"step {self.step_id!r} depends on {sorted(self.results)}; use ctx.results[id]"
            )
        return next(iter(self.results.values()), None)
