"""The embedded stack: a private Redis (unless TREADLE_REDIS_URL is set), one worker
process per pool, the orchestrator (serving the HTTP API when given a port) and Flower,
as child processes of one command.

``treadle up``, ``treadle demo`` and the test suite all start treadle through this.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import redis

from config.celery_app import make_app
from config.redact import redact_url
from config.redis_client import answers
from config.redis_endpoint import connection_environment
from config.redis_server import EmbeddedRedis
from config.settings import Settings
from config.topology import PRIORITY_ORDER, PriorityClass, load_topology
from orchestrator.errors import Unreachable

_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class WorkerSpec:
    pool: PriorityClass
    index: int = 1
    concurrency: int | None = None

    def node_name(self, host: str) -> str:
        return f"{self.pool.value}-{self.index}@{host}"


@dataclass
class ChildProcess:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)


def host_name() -> str:
    return os.uname().nodename


class Stack:
    """Start with ``with Stack(settings) as stack:``; everything stops on exit."""

    def __init__(
        self,
        settings: Settings,
        *,
        workers: Sequence[WorkerSpec] | None = None,
        orchestrator: bool = True,
        flower_port: int | None = None,
        flower_auth: str | None = None,
        api_port: int | None = None,
        api_token: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ):
        self.settings = settings
        self.home = settings.home.resolve()
        topology = load_topology(settings.topology)
        self.worker_specs = (
            list(workers)
            if workers is not None
            else [WorkerSpec(k, 1, topology.pool(k).concurrency) for k in PRIORITY_ORDER]
        )
        self.with_orchestrator = orchestrator
        self.flower_port = flower_port
        self.flower_auth = flower_auth
        self.api_port = api_port
        self.api_token = api_token
        self.extra_env = dict(extra_env or {})
        self.embedded: EmbeddedRedis | None = None
        self.redis_url = settings.redis_url or ""
        self.children: list[ChildProcess] = []
        self.log_dir = self.home / "logs"

    # -- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not self.redis_url:
            self.embedded = EmbeddedRedis(
                self.home, appendfsync=self.settings.redis_appendfsync
            ).start()
            self.redis_url = self.embedded.url
        self._check_redis()
        for spec in self.worker_specs:
            self.start_worker(spec)
        if self.with_orchestrator:
            self.start_orchestrator("orchestrator", self.api_port)
        if self.flower_port is not None:
            self._spawn("flower", ["flower", "--port", str(self.flower_port)])
            self.wait_http(self.flower_port)
        if self.with_orchestrator and self.api_port is not None:
            self.wait_http(self.api_port)
        self.wait_ready([s.node_name(host_name()) for s in self.worker_specs])

    def start_worker(self, spec: WorkerSpec) -> ChildProcess:
        argv = ["worker", "--pool", spec.pool.value, "--index", str(spec.index)]
        if spec.concurrency is not None:
            argv += ["--concurrency", str(spec.concurrency)]
        return self._spawn(spec.node_name(host_name()).split("@")[0], argv)

    def start_orchestrator(self, name: str, api_port: int | None = None) -> ChildProcess:
        """An orchestrator process (another replica, if one runs), serving the HTTP API on
        ``api_port`` when given; the caller waits for the port (``wait_http``)."""
        port = [] if api_port is None else ["--port", str(api_port)]
        return self._spawn(name, ["orchestrator", *port])

    def stop(self) -> None:
        """TERM every child (workers finish or requeue their steps), then KILL laggards.

        TERM goes to each main process only, as `docker stop` does: sent to the whole
        process group it would also kill a worker's pool children mid-step.
        """
        for child in self.children:
            if child.alive():
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for child in self.children:
            remaining = max(deadline - time.monotonic(), 0.1)
            try:
                child.process.wait(remaining)
            except subprocess.TimeoutExpired:
                child.signal(signal.SIGKILL)
                child.process.wait()
            child.log_file.close()
        self.children.clear()
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None

    # -- helpers ----------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["TREADLE_REDIS_URL"] = self.redis_url
        for name, value in connection_environment(self.settings).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        env["TREADLE_HOME"] = str(self.home)
        env["TREADLE_TOPOLOGY"] = str(self.settings.topology)
        env["TREADLE_TASK_MODULES"] = self.settings.task_modules
        if self.flower_auth:
            env["TREADLE_FLOWER_BASIC_AUTH"] = self.flower_auth
        if self.flower_port is not None:
            # Flower watches: workers send task events from their first step, not from
            # when Flower's periodic enable_events reaches them.
            env.setdefault("TREADLE_TASK_EVENTS", "1")
        if self.api_token:
            env["TREADLE_API_TOKEN"] = self.api_token
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, name: str, argv: list[str]) -> ChildProcess:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("ab")
        full = [sys.executable, "-m", "orchestrator.cli", *argv]
        process = subprocess.Popen(
            full,
            env=self.env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child = ChildProcess(name, full, process, log_path, log_file)
        self.children.append(child)
        return child

    def restart(self, name: str) -> ChildProcess:
        """Start the named child again with the same command (after it died or was killed)."""
        old = self.child(name)
        if old.alive():
            old.signal(signal.SIGKILL)
        old.process.wait()
        old.log_file.close()
        self.children.remove(old)
        return self._spawn(name, old.argv[3:])

    def restart_redis(self, crash: bool = True) -> None:
        """Restart the embedded Redis on its port and data (``crash``: SIGKILL it first)."""
        if self.embedded is None:
            raise RuntimeError("this stack runs on an external Redis (TREADLE_REDIS_URL)")
        self.embedded.restart(crash=crash)

    def child(self, name: str) -> ChildProcess:
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)

    def _check_redis(self) -> None:
        try:
            answers(self.redis_url, self.settings)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise Unreachable(
                f"Redis at {redact_url(self.redis_url)} cannot be reached: {exc}"
            ) from exc

    def wait_http(self, port: int, timeout_s: float = _READY_TIMEOUT_S) -> None:
        """Until something accepts connections on the loopback ``port`` (or a child died:
        an orchestrator refused to serve without a token, a port was taken)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                self._raise_if_one_died()
                if time.monotonic() > deadline:
                    raise Unreachable(
                        f"nothing answers on port {port} after {timeout_s} s"
                    ) from None
                time.sleep(0.05)

    def flower_url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.flower_port}{path}"

    def api_url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.api_port}{path}"

    def flower_api(self, path: str) -> Any:
        """GET a Flower API path (with this stack's basic auth) and decode its JSON."""
        request = urllib.request.Request(self.flower_url(path))
        if self.flower_auth:
            token = base64.b64encode(self.flower_auth.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def _raise_if_one_died(self) -> None:
        dead = [c for c in self.children if not c.alive()]
        if dead:
            raise Unreachable(
                f"{dead[0].name} exited with code {dead[0].process.returncode}; "
                f"see {dead[0].log_path}"
            )

    def wait_ready(self, node_names: Sequence[str], timeout_s: float = _READY_TIMEOUT_S) -> None:
        """Until every named worker answers a ping (or one of them died)."""
        if not node_names:
            return
        app = make_app(self.settings, self.redis_url)
        try:
            deadline = time.monotonic() + timeout_s
            waiting = set(node_names)
            while waiting:
                self._raise_if_one_died()
                if time.monotonic() > deadline:
                    raise Unreachable(f"workers not ready after {timeout_s} s: {sorted(waiting)}")
                replies = app.control.ping(destination=sorted(waiting), timeout=0.5) or []
                for reply in replies:
                    waiting.difference_update(reply)
        finally:
            app.close()
