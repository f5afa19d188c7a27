"""Tasks that only the test suite's workers load (TREADLE_TASK_MODULES in conftest)."""

from __future__ import annotations

import os
import signal
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded

from orchestrator.errors import Permanent
from workers import StepContext, task


def _redis(url: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(url or os.environ["TREADLE_REDIS_URL"])


def fix(name: str, redis_url: str) -> None:
    """What deploying a fixed version of ``tests.broken_until_fixed`` stands for."""
    with _redis(redis_url) as client:
        client.set(f"tests:fixed:{name}", 1)


@task(name="tests.broken_until_fixed")
def broken_until_fixed(ctx: StepContext, name: str) -> str:
    with _redis() as client:
        if not client.exists(f"tests:fixed:{name}"):
            raise RuntimeError(f"{name} is broken (attempt {ctx.attempt})")
    return f"{name} works"


@task(name="tests.always_permanent")
def always_permanent() -> None:
    raise Permanent("this can never work")


@task(name="tests.kill_my_worker")
def kill_my_worker() -> None:
    """Dies the way a segfaulting extension or the OOM killer kills a worker child."""
    os.kill(os.getpid(), signal.SIGKILL)


@task(name="tests.ignore_soft_limit")
def ignore_soft_limit(seconds: float) -> None:
    """A step that will not stop when asked: only the hard time limit ends it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(max(0.0, min(0.05, deadline - time.monotonic())))
        except SoftTimeLimitExceeded:
            continue


def open_gate(name: str, redis_url: str) -> None:
    """Lets every ``tests.hold`` step waiting on ``name`` (and any later one) finish."""
    with _redis(redis_url) as client:
        client.set(f"tests:gate:{name}", 1)


@task(name="tests.hold")
def hold(name: str, timeout_s: float = 60.0) -> str:
    """Runs until the test opens the gate ``name``: load that lasts exactly as long as
    the test needs it, however slow the machine. Fails if the gate never opens."""
    deadline = time.monotonic() + timeout_s
    with _redis() as client:
        while not client.exists(f"tests:gate:{name}"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {name} was not opened within {timeout_s} s")
            time.sleep(0.02)
    return name


@task(name="tests.member")
def member(ctx: StepContext, kill: bool = False, fail_times: int = 0, sleep_s: float = 0.0) -> str:
    """A short step whose arguments make it misbehave: it kills its worker's process on
    its first attempt (``kill``), fails its first ``fail_times`` attempts, or takes
    ``sleep_s`` (longer than its task usually takes)."""
    if kill and ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if ctx.attempt <= fail_times:
        raise RuntimeError(f"{ctx.step_id} fails attempt {ctx.attempt}")
    time.sleep(sleep_s)
    return ctx.step_id
