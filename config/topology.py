"""The topology file: worker pools per priority class, named resources, admission."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


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
        if value is not None and not _RATE.match(value):
            raise ValueError(f"rate {value!r} is not of the form N/s, N/m or N/h")
        return value

    def rate_per_s(self) -> float | None:
        if self.rate is None:
            return None
        match = _RATE.match(self.rate)
        assert match is not None  # checked by the validator
        return float(match.group(1)) / _PER_SECONDS[match.group(2)]


class Admission(_Strict):
    high: Annotated[int, Field(ge=1)]


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

    def pool(self, klass: PriorityClass) -> Pool:
        return self.pools.get(klass, Pool())


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
