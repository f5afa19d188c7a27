"""The topology file: worker pools per priority class, named resources, admission."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class PriorityClass(StrEnum):
    """A priority class: its own queue and its own worker pool."""

    critical = "critical"
    default = "default"
    bulk = "bulk"


PRIORITY_ORDER: tuple[PriorityClass, ...] = (
    PriorityClass.critical,
    PriorityClass.default,
    PriorityClass.bulk,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pool(_Strict):
    concurrency: Annotated[int, Field(ge=1, le=512)] = 2
    prefetch: Annotated[int, Field(ge=1, le=64)] = 1
    # At most this many running steps per tenant in this class (None: no cap), so one
    # tenant's flood leaves room for the others.
    tenant_limit: Annotated[int, Field(ge=1)] | None = None
    # A step that waits longer than this on the class's queue moves up one class. Left
    # out: the class's default (DEFAULT_MAX_WAIT_S); null: its steps never move up. Read
    # it through Topology.max_wait_s, which knows the class.
    max_wait_s: Annotated[float, Field(gt=0)] | None = None
    # The CPU priority of the pool's processes (Unix nice, 0-19: higher yields more).
    # Left out: the class's default (DEFAULT_NICE), so that on a shared host a bulk
    # flood yields the CPU to critical work. Read it through Topology.nice.
    nice: Annotated[int, Field(ge=0, le=19)] | None = None


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_PER_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}


class Circuit(_Strict):
    failures: Annotated[int, Field(ge=1)] = 5
    open_s: Annotated[float, Field(gt=0)] = 30.0


class Resource(_Strict):
    """A named limit that steps take with ``resources:``."""

    rate: str | None = None
    burst: Annotated[int, Field(ge=1)] | None = None
    concurrency: Annotated[int, Field(ge=1)] | None = None
    circuit: Circuit | None = None

    @field_validator("rate")
    @classmethod
    def _rate_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _RATE.match(value)
        if match is None:
            raise ValueError(f"rate {value!r} is not of the form N/s, N/m or N/h")
        if float(match.group(1)) <= 0:
            raise ValueError(f"rate {value!r} must be more than 0")
        return value

    def rate_per_s(self) -> float | None:
        if self.rate is None:
            return None
        match = _RATE.match(self.rate)
        assert match is not None  # checked by the validator
        return float(match.group(1)) / _PER_SECONDS[match.group(2)]


class Admission(_Strict):
    high: Annotated[int, Field(ge=1)]
    # Parked workflows of the class resume once every class is below its low mark.
    low: Annotated[int, Field(ge=0)] | None = None

    @property
    def low_mark(self) -> int:
        return self.low if self.low is not None else self.high // 2

    @model_validator(mode="after")
    def _low_below_high(self) -> Admission:
        if self.low is not None and self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


# Aging: how long a step of each class may wait before it moves up a class. Critical
# steps have no class above them.
DEFAULT_MAX_WAIT_S: dict[PriorityClass, float | None] = {
    PriorityClass.critical: None,
    PriorityClass.default: 120.0,
    PriorityClass.bulk: 300.0,
}


DEFAULT_NICE: dict[PriorityClass, int] = {
    PriorityClass.critical: 0,
    PriorityClass.default: 0,
    PriorityClass.bulk: 10,
}


class Rebalance(_Strict):
    """Lending idle workers of lower classes to a class whose queue backs up.

    A queue longer than ``busy_depth`` gets the idle workers of the classes below it;
    each goes back once that queue is shorter than ``drain_depth`` (the gap keeps a
    worker from being lent and given back on every look), or once its own queue is longer
    than ``busy_depth``. The orchestrator looks every ``check_every_s`` (aging too), and
    asks workers whether they are idle with a broadcast that waits ``inspect_timeout_s``.
    """

    enabled: bool = True
    busy_depth: Annotated[int, Field(ge=1)] = 200
    drain_depth: Annotated[int, Field(ge=0)] = 10
    check_every_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    inspect_timeout_s: Annotated[float, Field(gt=0, le=30)] = 1.0

    @model_validator(mode="after")
    def _drains_below_busy(self) -> Rebalance:
        if self.drain_depth > self.busy_depth:
            raise ValueError(
                f"drain_depth ({self.drain_depth}) must not exceed busy_depth "
                f"({self.busy_depth}): workers are lent above busy_depth and given back "
                "below drain_depth"
            )
        return self


def _default_pools() -> dict[PriorityClass, Pool]:
    return {
        PriorityClass.critical: Pool(concurrency=2, prefetch=1),
        PriorityClass.default: Pool(concurrency=2, prefetch=1),
        PriorityClass.bulk: Pool(concurrency=2, prefetch=4),
    }


def _default_admission() -> dict[PriorityClass, Admission]:
    return {
        PriorityClass.critical: Admission(high=10_000),
        PriorityClass.default: Admission(high=5_000),
        PriorityClass.bulk: Admission(high=1_000),
    }


class Topology(_Strict):
    pools: dict[PriorityClass, Pool] = Field(default_factory=_default_pools)
    resources: dict[str, Resource] = Field(default_factory=dict)
    admission: dict[PriorityClass, Admission] = Field(default_factory=_default_admission)
    rebalance: Rebalance = Field(default_factory=Rebalance)

    @field_validator("pools")
    @classmethod
    def _critical_never_ages(cls, pools: dict[PriorityClass, Pool]) -> dict[PriorityClass, Pool]:
        top = PRIORITY_ORDER[0]
        if top in pools and pools[top].max_wait_s is not None:
            raise ValueError(
                f"{top}.max_wait_s: {top} is the highest class, so its steps have no class "
                "to move up to; leave max_wait_s out"
            )
        return pools

    def pool(self, klass: PriorityClass | str) -> Pool:
        return self.pools.get(PriorityClass(klass), Pool())

    def admission_of(self, klass: PriorityClass | str) -> Admission:
        klass = PriorityClass(klass)
        return self.admission.get(klass) or _default_admission()[klass]

    def nice(self, klass: PriorityClass) -> int:
        """The nice value the class's worker processes run at."""
        pool = self.pools.get(klass)
        if pool is None or pool.nice is None:
            return DEFAULT_NICE[klass]
        return pool.nice

    def max_wait_s(self, klass: PriorityClass) -> float | None:
        """How long a step may wait on this class's queue before it moves up a class
        (None: never)."""
        pool = self.pools.get(klass)
        if pool is None or "max_wait_s" not in pool.model_fields_set:
            return DEFAULT_MAX_WAIT_S[klass]
        return pool.max_wait_s


class TopologyError(ValueError):
    """The topology file is missing or malformed; the message names the file and field."""


def load_topology(path: Path) -> Topology:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read topology: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return Topology.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise TopologyError(f"{path}: {problems}") from exc
