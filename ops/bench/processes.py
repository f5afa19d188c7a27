"""The baselines' worker processes: a plain ``celery worker`` and a ``dramatiq`` worker,
each a process group of its own, and the memory of a worker's whole process tree."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil
from celery import Celery

from ops.bench import celery_tasks

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
BASELINE_NODE = "bench-celery@%h"
DRAMATIQ_THREADS = 1  # one task at a time per process, as a prefork child runs them
# Named, not imported: importing it makes its broker, which must know its URL first.
DRAMATIQ_MODULE = "ops.bench.dramatiq_tasks"
DRAMATIQ_URL_ENV = "BENCH_DRAMATIQ_URL"


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with code {self.process.returncode}; see {self.log_path}"
            )

    def stop(self) -> None:
        """TERM the main process (a warm shutdown), then KILL the group if it lingers."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT_S)
        # Pool children outlive a main process that was killed: take the whole group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log_file.close()


def spawn(name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> WorkerProcess:
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("ab")
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p
    )
    process = subprocess.Popen(
        argv,
        env=full_env,
        cwd=REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return WorkerProcess(name, process, log_path, log_file)


def start_celery_baseline(url: str, processes: int, log_dir: Path) -> WorkerProcess:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        celery_tasks.__name__,
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(processes),
        "--queues",
        celery_tasks.QUEUE,
        "--hostname",
        BASELINE_NODE,
        "--prefetch-multiplier",
        "1",
        # As treadle's workers run (orchestrator.cli worker): no gossip, no mingle.
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "WARNING",
    ]
    return spawn("celery-baseline", argv, {celery_tasks.URL_ENV: url}, log_dir)


def wait_celery_ready(app: Celery, worker: WorkerProcess) -> None:
    node = BASELINE_NODE.replace("%h", os.uname().nodename)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not app.control.ping(destination=[node], timeout=0.5):
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node} did not answer a ping in {READY_TIMEOUT_S} s")


def start_dramatiq(url: str, queue: str, processes: int, log_dir: Path) -> WorkerProcess:
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        DRAMATIQ_MODULE,
        "--processes",
        str(processes),
        "--threads",
        str(DRAMATIQ_THREADS),
        "--queues",
        queue,
    ]
    # Dramatiq reads its prefetch from the environment; one, as Celery's and treadle's.
    env = {DRAMATIQ_URL_ENV: url, "dramatiq_queue_prefetch": "1"}
    return spawn("dramatiq", argv, env, log_dir)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (a worker and its pool)."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total
