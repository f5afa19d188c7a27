"""Redis HA: treadle on a Sentinel-managed primary follows it through a failover.

A real primary, a replica and a sentinel (quorum 1) on loopback, all with passwords; a
real stack (orchestrator and a worker per pool) reaching them only through the sentinel
URL. The primary is SIGKILLed while workflows run; every workflow must still succeed.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from config.redis_client import connect
from config.settings import Settings
from config.topology import PRIORITY_ORDER
from ops.chaos.run import workflow as chaos_workflow
from ops.chaos.tasks import LEDGER
from orchestrator.client import Client
from orchestrator.stack import Stack, WorkerSpec
from orchestrator.states import WORKFLOW_FINAL
from tests.conftest import TEST_MODULES, wait_until
from tests.redis_nodes import LOOPBACK, RedisNode, answers, free_port, plain_binary, server_config

pytestmark = pytest.mark.e2e

MASTER = "treadle-primary"
# Small enough for a quick failover, large enough that a loaded 2-core machine does not
# make the sentinel think a healthy primary is down.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 10_000
QUICK = {
    "sweep_interval_s": 0.5,
    "recovery_after_s": 2.0,
    "worker_lost_after_s": 3.0,
    "stranded_message_after_s": 2.0,
}


@dataclass
class SentinelGroup:
    primary: RedisNode
    replica: RedisNode
    sentinel: RedisNode
    password: str
    sentinel_password: str

    @property
    def url(self) -> str:
        return f"sentinel://:{self.password}@{LOOPBACK}:{self.sentinel.port}/0"

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(LOOPBACK, self.sentinel.port, password=self.sentinel_password)

    def primary_port(self) -> int:
        """The port of the server the sentinel currently names primary."""
        with self.sentinel_client() as client:
            _host, port = client.sentinel_get_master_addr_by_name(MASTER)
            return int(port)

    def role_of(self, node: RedisNode) -> str:
        with redis.Redis(LOOPBACK, node.port, password=self.password) as client:
            return str(client.info("replication")["role"])


def start_group(root: Path) -> SentinelGroup:
    binary = plain_binary()
    password, sentinel_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    # masterauth on both: either may be a replica of the other after a failover.
    auth = (f"requirepass {password}", f"masterauth {password}")
    group_nodes: list[RedisNode] = []
    try:
        primary_port = free_port()
        primary = RedisNode(
            "primary", primary_port, root / "primary", binary,
            server_config(primary_port, root / "primary", *auth),
        )  # fmt: skip
        group_nodes.append(primary.start(lambda: _pings(primary_port, password)))
        replica_port = free_port()
        replica = RedisNode(
            "replica", replica_port, root / "replica", binary,
            server_config(
                replica_port, root / "replica", *auth, f"replicaof {LOOPBACK} {primary_port}"
            ),
        )  # fmt: skip
        group_nodes.append(replica.start(lambda: _in_sync(replica_port, password)))
        sentinel_port = free_port()
        sentinel = RedisNode(
            "sentinel", sentinel_port, root / "sentinel", binary,
            [
                f"port {sentinel_port}",
                f"bind {LOOPBACK}",
                f"dir {root / 'sentinel'}",
                f"requirepass {sentinel_password}",
                f"sentinel monitor {MASTER} {LOOPBACK} {primary_port} 1",
                f"sentinel auth-pass {MASTER} {password}",
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {MASTER} 1",
            ],
            sentinel=True,
        )  # fmt: skip
        group = SentinelGroup(primary, replica, sentinel, password, sentinel_password)
        group_nodes.append(sentinel.start(lambda: _knows_replica(group)))
        return group
    except BaseException:
        for node in reversed(group_nodes):
            node.stop()
        raise


def _pings(port: int, password: str) -> bool:
    with redis.Redis(LOOPBACK, port, password=password, socket_timeout=0.5) as client:
        return answers(client)


def _in_sync(port: int, password: str) -> bool:
    with redis.Redis(LOOPBACK, port, password=password, socket_timeout=0.5) as client:
        try:
            return bool(client.info("replication").get("master_link_status") == "up")
        except redis.RedisError:
            return False


def _knows_replica(group: SentinelGroup) -> bool:
    # Without a healthy replica in the sentinel's view there is no one to fail over to.
    try:
        with group.sentinel_client() as client:
            replicas = client.sentinel_slaves(MASTER)
    except redis.RedisError:
        return False
    return any(
        r["port"] == group.replica.port
        and not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"])
        for r in replicas
    )


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    started = start_group(tmp_path / "redis")
    yield started
    for node in (started.sentinel, started.replica, started.primary):
        node.stop()


def test_workflows_finish_when_the_primary_dies_and_sentinel_promotes_the_replica(
    group: SentinelGroup, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=group.url,
        redis_sentinel_master=MASTER,
        redis_sentinel_password=group.sentinel_password,  # type: ignore[arg-type]
        home=tmp_path / "home",
        task_modules=f"{TEST_MODULES},ops.chaos.tasks",
        **QUICK,  # type: ignore[arg-type]
    )
    env = {f"TREADLE_{name.upper()}": str(value) for name, value in QUICK.items()}
    workers = [WorkerSpec(k, 1, 2) for k in PRIORITY_ORDER]
    rng = random.Random(11)
    with (
        Stack(settings, workers=workers, extra_env=env) as stack,
        Client.connect(settings, stack.redis_url) as client,
    ):
        assert stack.embedded is None  # only the sentinel URL leads to Redis
        ids = [client.submit(chaos_workflow(i, rng)) for i in range(24)]

        def mid_run() -> bool:
            states = [client.status(w) for w in ids]
            started = sum(any(s["state"] == "succeeded" for s in st["steps"]) for st in states)
            return started >= 3

        wait_until(mid_run, 60, "the first steps to succeed")
        unfinished = [w for w in ids if client.status(w)["state"] not in WORKFLOW_FINAL]
        assert unfinished, "every workflow ended before the primary could be killed"

        group.primary.kill()
        killed_at = time.monotonic()
        wait_until(
            lambda: group.primary_port() == group.replica.port,
            30,
            "the sentinel to promote the replica",
            poll_s=0.1,
        )
        failover_s = time.monotonic() - killed_at

        try:
            wait_until(
                lambda: all(client.status(w)["state"] in WORKFLOW_FINAL for w in ids),
                120,
                "every workflow to end after the failover",
                poll_s=0.25,
            )
        except pytest.fail.Exception:
            pytest.fail(f"still running after the failover: {unfinished_steps(client, ids)}")
        finished_s = time.monotonic() - killed_at
        for workflow_id in ids:
            status = client.status(workflow_id)
            assert status["state"] == "succeeded", status
            report = client.audit(workflow_id)
            assert report.ok, report.problems
        succeeded = {key for w in ids for key in effect_keys(client.status(w))}
        with connect(stack.redis_url, settings) as r:
            ledger = {str(k, "utf-8") for k in r.hkeys(LEDGER)}
        # Writes reach the replica in order, so a succeeded step's earlier effect is there.
        assert succeeded <= ledger
    assert group.role_of(group.replica) == "master"
    assert not group.primary.alive()
    print(
        f"failover took {failover_s:.1f} s; {len(unfinished)} workflows were running, "
        f"all ended {finished_s:.1f} s after the kill"
    )


def unfinished_steps(client: Client, ids: list[str]) -> dict[str, dict[str, str]]:
    """The steps that have not ended, of each workflow that has not: for a failure."""
    found = {}
    for workflow_id in ids:
        status = client.status(workflow_id)
        if status["state"] not in WORKFLOW_FINAL:
            found[workflow_id] = {
                s["id"]: s["state"]
                for s in status["steps"]
                if s["state"] not in ("succeeded", "skipped")
            }
    return found


def effect_keys(status: dict[str, Any]) -> set[str]:
    """The idempotency keys of the side effects a succeeded workflow applied: one per
    effect step, fan-out items counted, the fan-out step itself (their join) not."""
    fan_outs = {s["item_of"] for s in status["steps"] if "item_of" in s}
    return {
        f"{status['id']}:{s['id']}"
        for s in status["steps"]
        if s["task"] == "chaos.effect" and s["id"] not in fan_outs
    }


def test_a_connection_that_lost_its_socket_comes_back_to_the_new_primary(
    group: SentinelGroup, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=group.url,
        redis_sentinel_master=MASTER,
        redis_sentinel_password=group.sentinel_password,  # type: ignore[arg-type]
        home=tmp_path,
        redis_retry_s=5.0,
    )
    with connect(group.url, settings) as client:
        client.set("before", 1)
        # Wait until the write has reached the replica: it is the one that will take over.
        assert client.wait(1, 5000) == 1
        connection = client.connection_pool.get_connection()
        assert connection.port == group.primary.port
        group.primary.kill()
        wait_until(
            lambda: group.primary_port() == group.replica.port, 30, "the failover", poll_s=0.1
        )
        # The path a command takes when its socket breaks under it: straight to a new
        # socket, without the pool. It must ask the sentinels, not retry the dead address.
        connection.disconnect()
        started = time.monotonic()
        connection.send_command("GET", "before")
        assert connection.read_response() == b"1"
        assert connection.port == group.replica.port
        assert time.monotonic() - started < settings.redis_retry_s
        client.connection_pool.release(connection)
        assert client.get("before") == b"1"
