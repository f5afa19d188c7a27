"""Fixtures that start real parts: a private Redis and real worker processes.

One stack per test session (Redis, a worker per pool, the orchestrator); each test makes
its own workflows, so tests do not see each other's state.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from celery import Celery

from config.celery_app import make_app
from config.settings import Settings
from config.topology import PriorityClass
from orchestrator.client import Client
from orchestrator.stack import Stack, WorkerSpec
from tests.faults import CuttingProxy

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_MODULES = (
    "workers.samples.shop,workers.samples.ml,workers.samples.compliance,workers.samples.images"
)
TEST_MODULES = f"{SAMPLE_MODULES},tests.tasks"


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("treadle-home")
    # The suite always runs on its own Redis, never on one named in the environment.
    return Settings(
        redis_url=None,
        home=home,
        task_modules=TEST_MODULES,
        sweep_interval_s=0.5,
        recovery_after_s=2.0,
    )


def private_stack(home: Path, workers: list[WorkerSpec], **chosen: float | str) -> Stack:
    """A stack of a test module's own: the session's quick recovery plus ``chosen``
    settings, which its workers are given too."""
    quick: dict[str, float | str] = {"sweep_interval_s": 0.5, "recovery_after_s": 2.0}
    values = {**quick, **chosen}
    settings = Settings(redis_url=None, home=home, task_modules=TEST_MODULES, **values)  # type: ignore[arg-type]
    env = {f"TREADLE_{name.upper()}": str(value) for name, value in values.items()}
    return Stack(settings, workers=workers, extra_env=env)


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Stack]:
    workers = [
        WorkerSpec(PriorityClass.critical, 1, 2),
        WorkerSpec(PriorityClass.default, 1, 2),
        WorkerSpec(PriorityClass.bulk, 1, 2),
    ]
    extra_env = {
        "TREADLE_SWEEP_INTERVAL_S": str(settings.sweep_interval_s),
        "TREADLE_RECOVERY_AFTER_S": str(settings.recovery_after_s),
    }
    with Stack(settings, workers=workers, extra_env=extra_env) as running:
        yield running


@pytest.fixture(scope="session")
def client(stack: Stack, settings: Settings) -> Iterator[Client]:
    with Client.connect(settings, stack.redis_url) as connected:
        yield connected


@pytest.fixture
def proxy(stack: Stack) -> Iterator[CuttingProxy]:
    """A proxy in front of the session's Redis that can lose a reply (tests.faults)."""
    with CuttingProxy(stack.redis_url) as running:
        yield running


def database_url(url: str, db: int) -> str:
    """``url`` (credentials and all) with database ``db``."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def spare_database(stack: Stack, db: int) -> Iterator[redis.Redis]:
    """A database of the session's Redis that no worker consumes, empty before and after."""
    connection = redis.Redis.from_url(database_url(stack.redis_url, db))
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


def spare_app(stack: Stack, settings: Settings, db: int) -> Iterator[Celery]:
    """A treadle Celery app on database ``db`` of the session's Redis (see spare_database)."""
    celery = make_app(settings, database_url(stack.redis_url, db))
    yield celery
    celery.close()


@pytest.fixture
def redis_client(stack: Stack) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(stack.redis_url)
    yield connection
    connection.close()


def wait_until(
    check: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any TREADLE_* name, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    env.update({f"TREADLE_{name.upper()}": value for name, value in settings.items()})
    return env


def treadle(
    *args: str, env: dict[str, str], cwd: Path = REPO, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real `treadle` command and collect what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def run_cli(stack: Stack, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """The real `treadle` command against the test stack."""
    env = stack.env()
    env.pop("TREADLE_SWEEP_INTERVAL_S", None)
    env.pop("TREADLE_RECOVERY_AFTER_S", None)
    return treadle(*args, env=env, timeout_s=timeout_s)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.pop("TREADLE_REDIS_URL", None)
