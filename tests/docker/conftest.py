"""pytest-celery's Docker-based setup for the tests in this directory only.

The suite runs with ``-p no:celery`` (pyproject.toml): pytest-celery's plugin would replace
Celery's own ``celery_worker`` fixture everywhere with its Docker one. So its fixtures are
imported here instead, which makes them visible to this directory's tests and nowhere else.

The setup (pytest-celery's "Redis Broker and Redis Backend" matrix, with its built-in
worker replaced by treadle's, see ``treadle_worker.py``):

- broker: pytest-celery's Redis broker vendor (``celery_redis_broker``), on the Redis image
  that docker-compose.yml runs;
- result backend: pytest-celery's Redis backend vendor (``celery_redis_backend``) on the
  broker's container, since treadle keeps broker, results and workflow state in one Redis;
- worker: ``celery_setup_worker`` over our ``default_worker_container`` (the image built
  from ops/Dockerfile), with ``default_worker_container_cls`` = ``TreadleWorkerContainer``;
- app: ``celery_setup_app`` is treadle's own Celery app on that Redis (its transport and
  result backend class), for control commands from the test process.

Without a Docker engine every test here is skipped before any fixture runs, with the reason.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from celery import Celery
from pytest_celery import (
    CeleryBackendCluster,
    CeleryBrokerCluster,
    CeleryTestWorker,
    CeleryWorkerCluster,
    RedisContainer,
    RedisTestBackend,
    RedisTestBroker,
    celery_backend_cluster_config,
    celery_broker_cluster_config,
    celery_redis_backend,
    celery_redis_broker,
    celery_setup,
    celery_setup_cls,
    celery_setup_worker,
    celery_worker_cluster_config,
    default_pytest_celery_network,
    default_redis_broker,
    default_redis_broker_cls,
    default_redis_broker_command,
    default_redis_broker_env,
    default_redis_broker_ports,
    default_worker_app,
    default_worker_cls,
    default_worker_command,
    default_worker_env,
    default_worker_ports,
)

from config.celery_app import make_app
from config.settings import Settings
from orchestrator.client import Client
from tests.conftest import REPO
from tests.docker.treadle_worker import (
    TreadleWorkerContainer,
    default_worker_container,
    treadle_image,
)

# Fixtures are found by their names in this module: imported is enough.
__all__ = [
    "celery_backend_cluster_config",
    "celery_broker_cluster_config",
    "celery_redis_backend",
    "celery_redis_broker",
    "celery_setup",
    "celery_setup_cls",
    "celery_setup_worker",
    "celery_worker_cluster_config",
    "default_pytest_celery_network",
    "default_redis_broker",
    "default_redis_broker_cls",
    "default_redis_broker_command",
    "default_redis_broker_env",
    "default_redis_broker_ports",
    "default_worker_app",
    "default_worker_cls",
    "default_worker_command",
    "default_worker_container",
    "default_worker_env",
    "default_worker_ports",
    "treadle_image",
]

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


@functools.cache
def docker_engine_problem() -> str | None:
    """Why these tests cannot run here (None: a Docker engine answers). Asked once."""
    where = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    try:
        client = docker.from_env(timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # the SDK wraps most, not all, connection failures
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        return (
            f"no Docker engine answers at {where} ({kind}: {exc}): "
            "pytest-celery's container tests need one"
        )
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip before any fixture of the item runs (the first would talk to Docker)."""
    problem = docker_engine_problem()
    if problem is not None:
        pytest.skip(problem)


# -- the setup -------------------------------------------------------------------------


@pytest.fixture
def celery_broker_cluster(celery_redis_broker: RedisTestBroker) -> Iterator[CeleryBrokerCluster]:
    cluster = CeleryBrokerCluster(celery_redis_broker)
    yield cluster
    cluster.teardown()


@pytest.fixture
def default_redis_broker_image() -> str:
    """The Redis that docker-compose.yml runs (pytest-celery's default is redis:latest)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return str(compose["services"]["redis"]["image"])


@pytest.fixture
def default_redis_backend(default_redis_broker: RedisContainer) -> RedisContainer:
    """The backend vendor's container is the broker's: one Redis, as treadle runs."""
    return default_redis_broker


@pytest.fixture
def celery_backend_cluster(
    celery_redis_backend: RedisTestBackend,
) -> Iterator[CeleryBackendCluster]:
    cluster = CeleryBackendCluster(celery_redis_backend)
    yield cluster
    cluster.teardown()


@pytest.fixture
def default_worker_container_cls() -> type[TreadleWorkerContainer]:
    return TreadleWorkerContainer


@pytest.fixture
def celery_worker_cluster(celery_setup_worker: CeleryTestWorker) -> Iterator[CeleryWorkerCluster]:
    """Only the treadle worker: pytest-celery's built-in one is replaced, not added to."""
    cluster = CeleryWorkerCluster(celery_setup_worker)
    yield cluster
    cluster.teardown()


@pytest.fixture
def treadle_settings(celery_broker_cluster_config: dict[str, Any], tmp_path: Path) -> Settings:
    """treadle's settings for the test process: the Redis container's published port."""
    return Settings(redis_url=celery_broker_cluster_config["host_urls"][0], home=tmp_path)


@pytest.fixture
def celery_setup_app(treadle_settings: Settings) -> Iterator[Celery]:
    app = make_app(treadle_settings)
    yield app
    app.close()


@pytest.fixture
def treadle_client(treadle_settings: Settings) -> Iterator[Client]:
    """The Python client, in the test process, on the Redis container."""
    with Client.connect(treadle_settings, treadle_settings.redis_url) as client:
        yield client
