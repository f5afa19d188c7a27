"""Workflow specs as users write them (steps form or stages form), and the one DAG both
normalise to. Pure: no Redis, no Celery."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    model_validator,
)

from config.topology import PriorityClass

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$"
TASK_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"

StepId = Annotated[str, Field(pattern=STEP_ID_PATTERN)]
TaskName = Annotated[str, Field(pattern=TASK_NAME_PATTERN, max_length=200)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Spec):
    """How often and how patiently a step is tried again after a failure."""

    max_attempts: Annotated[int, Field(ge=1, le=100)] = 1
    backoff_s: Annotated[float, Field(ge=0, le=86_400)] = 1.0
    backoff_max_s: Annotated[float, Field(ge=0, le=86_400)] = 60.0
    jitter: bool = True
    # Exception class names (``TimeoutError`` or ``package.module.Class``) that may be
    # retried; any other exception fails the step at once. None: every exception except
    # ``Permanent`` is retried.
    retry_on: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None

    @model_validator(mode="after")
    def _max_not_below_base(self) -> RetryPolicy:
        if self.backoff_max_s < self.backoff_s:
            raise ValueError("backoff_max_s must not be smaller than backoff_s")
        return self

    def retries(self, error: BaseException) -> bool:
        """Whether this kind of error may be tried again under this policy."""
        if self.retry_on is None:
            return True
        names = {
            name
            for cls in type(error).__mro__
            for name in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}")
        }
        return bool(names.intersection(self.retry_on))

    def delay_s(self, attempt: int, random_fraction: float) -> float:
        """Delay before attempt ``attempt + 1``: exponential, capped, full jitter."""
        ceiling = min(self.backoff_max_s, self.backoff_s * 2.0 ** max(attempt - 1, 0))
        return ceiling * random_fraction if self.jitter else ceiling


class _StepFields(_Spec):
    id: StepId
    task: TaskName
    args: dict[str, JsonValue] = Field(default_factory=dict)
    compensate: TaskName | None = None
    retry: RetryPolicy | None = None
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    resources: list[str] = Field(default_factory=list)
    priority: PriorityClass | None = None
    when: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    trigger: Literal["all_success", "all_done"] = "all_success"
    for_each: StepId | None = None
    max_parallel: Annotated[int, Field(ge=1, le=10_000)] | None = None
    # Steps whose keys are equal run one at a time, in submission order, across workflows.
    concurrency_key: Annotated[str, Field(min_length=1, max_length=200)] | None = None

    @model_validator(mode="after")
    def _max_parallel_needs_for_each(self) -> _StepFields:
        if self.max_parallel is not None and self.for_each is None:
            raise ValueError("max_parallel limits a for_each fan-out; this step has no for_each")
        return self


class StepSpec(_StepFields):
    """A step in steps form: its dependencies are named in ``after``."""

    after: list[StepId] = Field(default_factory=list)


class StageStep(_StepFields):
    """A step in stages form: its place in the blocks gives its dependencies."""


class SequentialBlock(_Spec):
    sequential: list[StageItem]


class ParallelBlock(_Spec):
    parallel: list[StageItem]


def _stage_kind(value: Any) -> str:
    """Which kind of stage item ``value`` is meant to be, so that a mistake inside it is
    reported against that kind only (not against every member of the union)."""
    if isinstance(value, SequentialBlock | ParallelBlock | StageStep):
        return type(value).__name__
    if isinstance(value, Mapping):
        if "sequential" in value:
            return "SequentialBlock"
        if "parallel" in value:
            return "ParallelBlock"
    return "StageStep"


# The tags are the class names, which validate._shape_problem leaves out of locations.
StageItem = Annotated[
    Union[  # noqa: UP007 - forward refs
        Annotated[SequentialBlock, Tag("SequentialBlock")],
        Annotated[ParallelBlock, Tag("ParallelBlock")],
        Annotated[StageStep, Tag("StageStep")],
    ],
    Discriminator(_stage_kind),
]
SequentialBlock.model_rebuild()
ParallelBlock.model_rebuild()


class WorkflowSpec(_Spec):
    """A workflow exactly as written. Exactly one of ``steps`` and ``stages``."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    priority: PriorityClass = PriorityClass.default
    tenant: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    idempotency_key: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    params: dict[str, JsonValue] = Field(default_factory=dict)
    on_failure: Literal["stop", "compensate"] = "stop"
    steps: list[StepSpec] | None = None
    stages: list[StageItem] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> WorkflowSpec:
        if self.steps is not None and self.stages is not None:
            raise ValueError("give either 'steps' or 'stages', not both")
        if self.steps is None and self.stages is None:
            raise ValueError("a workflow needs 'steps' or 'stages'")
        return self


# ---------------------------------------------------------------------------------------
# The normalised DAG


@dataclass(frozen=True)
class Step:
    """One step of the normalised DAG. ``where`` is its location in the spec."""

    id: str
    task: str
    where: str
    args: Mapping[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    compensate: str | None = None
    retry: RetryPolicy | None = None
    timeout_s: float | None = None
    resources: tuple[str, ...] = ()
    priority: PriorityClass | None = None
    when: str | None = None
    trigger: str = "all_success"
    for_each: str | None = None
    max_parallel: int | None = None
    concurrency_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "args": dict(self.args),
            "after": list(self.after),
            "compensate": self.compensate,
            "retry": self.retry.model_dump() if self.retry else None,
            "timeout_s": self.timeout_s,
            "resources": list(self.resources),
            "priority": self.priority.value if self.priority else None,
            "when": self.when,
            "trigger": self.trigger,
            "for_each": self.for_each,
            "max_parallel": self.max_parallel,
            "concurrency_key": self.concurrency_key,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "") -> Step:
        return cls(
            id=data["id"],
            task=data["task"],
            where=where,
            args=data.get("args") or {},
            after=tuple(data.get("after") or ()),
            compensate=data.get("compensate"),
            retry=RetryPolicy.model_validate(data["retry"]) if data.get("retry") else None,
            timeout_s=data.get("timeout_s"),
            resources=tuple(data.get("resources") or ()),
            priority=PriorityClass(data["priority"]) if data.get("priority") else None,
            when=data.get("when"),
            trigger=data.get("trigger") or "all_success",
            for_each=data.get("for_each"),
            max_parallel=data.get("max_parallel"),
            concurrency_key=data.get("concurrency_key"),
        )


@dataclass(frozen=True)
class Workflow:
    """A workflow normalised to one DAG: steps in declaration order, edges in ``after``."""

    name: str
    steps: tuple[Step, ...]
    priority: PriorityClass = PriorityClass.default
    tenant: str | None = None
    idempotency_key: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    on_failure: str = "stop"

    def step(self, step_id: str) -> Step:
        return self.by_id[step_id]

    @property
    def by_id(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    def edges(self) -> Iterator[tuple[str, str]]:
        for s in self.steps:
            for dep in s.after:
                yield dep, s.id

    def step_priority(self, step: Step) -> PriorityClass:
        return step.priority or self.priority


def normalise(spec: WorkflowSpec) -> Workflow:
    """Turn either spec form into the DAG; ids are not yet checked (see validate)."""
    if spec.steps is not None:
        steps = tuple(_from_step_spec(s, f"steps[{i}]") for i, s in enumerate(spec.steps))
    else:
        collected: list[Step] = []
        _walk_stages(spec.stages or [], "stages", (), collected, sequential=True)
        steps = tuple(collected)
    return Workflow(
        name=spec.name,
        steps=steps,
        priority=spec.priority,
        tenant=spec.tenant,
        idempotency_key=spec.idempotency_key,
        params=spec.params,
        on_failure=spec.on_failure,
    )


def _step_kwargs(s: _StepFields) -> dict[str, Any]:
    return {
        "id": s.id,
        "task": s.task,
        "args": s.args,
        "compensate": s.compensate,
        "retry": s.retry,
        "timeout_s": s.timeout_s,
        "resources": tuple(s.resources),
        "priority": s.priority,
        "when": s.when,
        "trigger": s.trigger,
        "for_each": s.for_each,
        "max_parallel": s.max_parallel,
        "concurrency_key": s.concurrency_key,
    }


def _from_step_spec(s: StepSpec, where: str) -> Step:
    # Keep duplicates in `after` out of the DAG; they mean the same edge. A fan-out runs
    # over its source's result, so it depends on that step whether `after` says so or not.
    after = [*s.after, *([s.for_each] if s.for_each else [])]
    return Step(where=where, after=tuple(dict.fromkeys(after)), **_step_kwargs(s))


def _walk_stages(
    items: list[StageItem],
    where: str,
    before: tuple[str, ...],
    out: list[Step],
    *,
    sequential: bool,
) -> tuple[str, ...]:
    """Append the steps of ``items`` to ``out``; return the ids that end the block.

    ``before`` are the ids every first step of this block waits for. In a sequential
    block each item waits for the ends of the item before it; in a parallel block every
    item waits only for ``before``.
    """
    ends: list[str] = []
    current = before
    for i, item in enumerate(items):
        loc = f"{where}[{i}]"
        if isinstance(item, StageStep):
            after = (*current, *([item.for_each] if item.for_each else []))
            out.append(Step(where=loc, after=tuple(dict.fromkeys(after)), **_step_kwargs(item)))
            item_ends: tuple[str, ...] = (item.id,)
        elif isinstance(item, SequentialBlock):
            item_ends = _walk_stages(
                item.sequential, f"{loc}.sequential", current, out, sequential=True
            )
        else:
            item_ends = _walk_stages(
                item.parallel, f"{loc}.parallel", current, out, sequential=False
            )
        if sequential:
            current = item_ends
        else:
            ends.extend(item_ends)
    return current if sequential else tuple(ends)
