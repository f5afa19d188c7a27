"""Tasks every worker has: for tests, benchmarks, simulations and smoke checks."""

from __future__ import annotations

import time
from typing import Any

from orchestrator.errors import Permanent, StepError
from workers.context import StepContext
from workers.registry import task


class InjectedFailure(StepError):
    """What ``treadle.fail`` raises on the attempts it is told to fail."""


@task(name="treadle.noop")
def noop() -> None:
    return None


@task(name="treadle.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


_UNSET: Any = object()


@task(name="treadle.echo")
def echo(ctx: StepContext, value: Any = _UNSET) -> Any:
    """Return ``value``; without one, a fan-out item returns its item (else null)."""
    if value is _UNSET:
        return ctx.item
    return value


@task(name="treadle.fail")
def fail(ctx: StepContext, times: int = 1, permanent: bool = False) -> int:
    """Raise on the first ``times`` attempts, then return the attempt that succeeded."""
    if ctx.attempt <= times:
        error = Permanent if permanent else InjectedFailure
        raise error(f"treadle.fail: attempt {ctx.attempt} of the first {times} fails")
    return ctx.attempt


@task(name="treadle.items")
def items(n: int) -> list[int]:
    return list(range(n))
