"""Everything one bench run measures against, started together and stopped together.

One embedded Redis serves all three systems, each in its own database so none sees the
others' queues: treadle in 0, raw Celery in 1, Dramatiq in 2. treadle runs without its
orchestrator process (the bench submits in-process, as the Python client does), with a
``default`` pool of ``processes`` worker processes for the side-by-side scenarios, a
``bulk`` pool wide enough for the DAG scenario, and no ``critical`` worker, so that a
workflow of that class is published and left alone (the publishing scenario). Worker
children are never recycled here (``worker_max_tasks_per_child`` 0, Celery's default), so
that memory growth shows in the soak instead of being reset.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery

from config.settings import Settings
from config.topology import PriorityClass
from ops.bench import celery_tasks
from ops.bench.processes import (
    DRAMATIQ_URL_ENV,
    WorkerProcess,
    start_celery_baseline,
    start_dramatiq,
    wait_celery_ready,
)
from ops.bench.sizes import Sizes
from orchestrator.client import Client
from orchestrator.stack import Stack, WorkerSpec

TREADLE_DB = 0
CELERY_DB = 1
DRAMATIQ_DB = 2
READY_TIMEOUT_MS = 60_000

UNLIMITED = 10_000_000


def topology(sizes: Sizes) -> str:
    return f"""
pools:
  critical: {{concurrency: 1, prefetch: 1}}
  default:  {{concurrency: {sizes.processes}, prefetch: 1, max_wait_s: null}}
  bulk:     {{concurrency: {sizes.dag_workers}, prefetch: 1, max_wait_s: null}}
admission:
  critical: {{high: {UNLIMITED}}}
  default:  {{high: {UNLIMITED}}}
  bulk:     {{high: {UNLIMITED}}}
rebalance: {{enabled: false}}
"""


def with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@dataclass
class Environment:
    sizes: Sizes
    stack: Stack
    client: Client  # treadle's Python client, submitting in this process
    treadle_redis: redis.Redis  # treadle's database: INFO, clean-up
    celery_redis: redis.Redis  # the baseline's database
    celery_app: Celery
    celery_worker: WorkerProcess
    dramatiq: ModuleType | None  # ops.bench.dramatiq_tasks, when that scenario runs
    dramatiq_worker: WorkerProcess | None

    @property
    def url(self) -> str:
        return self.stack.redis_url

    def treadle_worker_pid(self) -> int:
        return self.stack.child("default-1").process.pid

    def check_alive(self) -> None:
        for worker in (self.celery_worker, self.dramatiq_worker):
            if worker is not None:
                worker.check_alive()
        dead = [c.name for c in self.stack.children if not c.alive()]
        if dead:
            raise RuntimeError(f"treadle worker {dead[0]} exited; see {self.stack.log_dir}")


@contextmanager
def started(sizes: Sizes, with_dramatiq: bool, home: Path | None = None) -> Iterator[Environment]:
    with ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="treadle-bench-")))
        (home / "topology.yaml").write_text(topology(sizes))
        # Always a private Redis: the bench reads server-wide counters and fills queues.
        settings = Settings(
            redis_url=None,
            home=home,
            topology=home / "topology.yaml",
            worker_max_tasks_per_child=0,
        )
        workers = [
            WorkerSpec(PriorityClass.default, 1, sizes.processes),
            WorkerSpec(PriorityClass.bulk, 1, sizes.dag_workers),
        ]
        treadle = stack.enter_context(
            Stack(
                settings,
                workers=workers,
                orchestrator=False,
                extra_env={"TREADLE_WORKER_MAX_TASKS_PER_CHILD": "0"},
            )
        )
        url = treadle.redis_url
        client = stack.enter_context(Client.connect(settings, url))
        stats = redis.Redis.from_url(url)
        stack.callback(stats.close)
        celery_redis = redis.Redis.from_url(with_db(url, CELERY_DB))
        stack.callback(celery_redis.close)

        celery_app = celery_tasks.configure(with_db(url, CELERY_DB))
        stack.callback(celery_app.close)
        celery_worker = start_celery_baseline(
            with_db(url, CELERY_DB), sizes.processes, treadle.log_dir
        )
        stack.callback(celery_worker.stop)

        dramatiq, dramatiq_worker = None, None
        if with_dramatiq:
            os.environ[DRAMATIQ_URL_ENV] = with_db(url, DRAMATIQ_DB)
            dramatiq = importlib.import_module("ops.bench.dramatiq_tasks")
            dramatiq_worker = start_dramatiq(
                with_db(url, DRAMATIQ_DB), dramatiq.QUEUE, sizes.processes, treadle.log_dir
            )
            stack.callback(dramatiq_worker.stop)

        wait_celery_ready(celery_app, celery_worker)
        if dramatiq is not None:
            # Dramatiq has no ping: a message done is a worker ready.
            dramatiq.noop.send()
            dramatiq.broker.join(dramatiq.QUEUE, timeout=READY_TIMEOUT_MS)
        yield Environment(
            sizes,
            treadle,
            client,
            stats,
            celery_redis,
            celery_app,
            celery_worker,
            dramatiq,
            dramatiq_worker,
        )
