"""The treadle worker as a pytest-celery worker component: the image built from
ops/Dockerfile, run as ``treadle worker --pool default`` on pytest-celery's Docker network.

Built as pytest-celery's "myworker" example injects a custom worker: a container class
(``TreadleWorkerContainer``), an image ``build(...)`` and a ``container(...)`` fixture, here
under the name ``default_worker_container`` so that pytest-celery's own node fixture
(``celery_setup_worker``) wraps it. A treadle worker is a treadle CLI process, not a Celery
app that pytest-celery generates, so three things differ from the built-in worker:

- The command is ``worker --pool default`` for the image's ENTRYPOINT (``treadle``), not
  ``celery -A app worker``.
- No volume on /app: pytest-celery mounts one there to inject a generated app.py and the
  test's task modules into its own worker. treadle's tasks are in the image and named by
  TREADLE_TASK_MODULES, and a volume on /app would hide what the image copied there.
- The environment names the Redis as TREADLE_REDIS_URL and nothing else of Celery's:
  Celery reads CELERY_BROKER_URL and CELERY_RESULT_BACKEND from the environment in
  preference to the app's configuration, and would replace treadle's result backend class.
"""

from __future__ import annotations

from typing import Any

from pytest_celery import DEFAULT_WORKER_CONTAINER_TIMEOUT, CeleryWorkerContainer
from pytest_docker_tools import build, container, fxtr

from config.queues import queue_for
from config.topology import PriorityClass
from tests.conftest import REPO, SAMPLE_MODULES

POOL = PriorityClass.default
IMAGE_TAG = "treadle:pytest-celery"


class TreadleWorkerContainer(CeleryWorkerContainer):  # type: ignore[misc]
    """A ``treadle worker`` of one pool; pytest-celery reads its name, queue and readiness
    from here (the node is ``default-1@<container id>``, as in docker-compose)."""

    @property
    def client(self) -> Any:
        return self

    @classmethod
    def command(cls, *args: str, debugpy: bool = False, **kwargs: Any) -> list[str]:
        if debugpy:
            raise ValueError("the treadle image has no debugpy")
        return ["worker", "--pool", POOL.value, *args]

    @classmethod
    def version(cls) -> str:
        return "treadle image (ops/Dockerfile)"

    @classmethod
    def log_level(cls) -> str:
        return "INFO"  # what `treadle worker` logs at

    @classmethod
    def worker_name(cls) -> str:
        return f"{POOL.value}-1"  # `treadle worker --index 1`: POOL-INDEX@%h

    @classmethod
    def worker_queue(cls) -> str:
        return queue_for(POOL)

    @classmethod
    def buildargs(cls) -> dict[str, str]:
        return {}  # ops/Dockerfile takes none

    @classmethod
    def initial_env(
        cls, celery_worker_cluster_config: dict[str, Any], initial: dict[str, str] | None = None
    ) -> dict[str, str]:
        broker = celery_worker_cluster_config["celery_broker_cluster_config"]
        backend = celery_worker_cluster_config["celery_backend_cluster_config"]
        # One Redis is treadle's broker, result backend and state store (TREADLE_REDIS_URL).
        if backend and backend["urls"] != broker["urls"]:
            raise ValueError(
                f"treadle keeps broker and results in one Redis; the setup has the broker at "
                f"{broker['urls']} and the backend at {backend['urls']}"
            )
        return {
            "PYTHONUNBUFFERED": "1",
            # The Redis container's address on pytest-celery's network, as its own worker
            # gets it (redis://<container>/0).
            "TREADLE_REDIS_URL": broker["urls"][0],
            "TREADLE_TASK_MODULES": SAMPLE_MODULES,
            **(initial or {}),
        }


# Session-scoped (pytest_docker_tools' build): the image is built once per test run.
treadle_image = build(path=str(REPO), dockerfile="ops/Dockerfile", tag=IMAGE_TAG)

# Replaces pytest-celery's built-in worker container; the environment, command and ports
# come from pytest-celery's default_worker_* fixtures, which ask default_worker_container_cls
# (TreadleWorkerContainer, see conftest.py).
default_worker_container = container(
    image="{treadle_image.id}",
    ports=fxtr("default_worker_ports"),
    environment=fxtr("default_worker_env"),
    network="{default_pytest_celery_network.name}",
    wrapper_class=TreadleWorkerContainer,
    timeout=DEFAULT_WORKER_CONTAINER_TIMEOUT,
    command=fxtr("default_worker_command"),
)
