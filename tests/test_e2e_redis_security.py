"""Security against real servers and processes: Redis ACL users and passwords, TLS with
a client certificate, secrets that never reach a log or a screen, and pickles that never
run."""

from __future__ import annotations

import os
import pickle
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from config.celery_app import make_app
from config.settings import Settings
from config.topology import PriorityClass
from orchestrator.client import Client
from orchestrator.stack import Stack, WorkerSpec
from tests.conftest import SAMPLE_MODULES, TEST_MODULES, clean_env, treadle, wait_until
from tests.redis_nodes import (
    LOOPBACK,
    TLS_MISSING,
    RedisNode,
    answers,
    free_port,
    plain_binary,
    server_config,
    tls_binary,
)
from tests.tls_certs import Certificates, make_certificates

pytestmark = pytest.mark.e2e

USER = "treadle-app"
FAN = {
    "name": "guarded",
    "steps": [
        {"id": "a", "task": "treadle.echo", "args": {"value": 1}},
        {"id": "b", "task": "treadle.echo", "args": {"value": 2}, "after": ["a"]},
        {"id": "c", "task": "treadle.echo", "args": {"value": 3}, "after": ["a"]},
        {"id": "d", "task": "treadle.noop", "after": ["b", "c"]},
    ],
}


@dataclass
class AclRedis:
    node: RedisNode
    password: str

    @property
    def url(self) -> str:
        return f"redis://{USER}:{self.password}@{LOOPBACK}:{self.node.port}/0"


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    """A Redis whose default user is off: only the ACL user with its password gets in."""
    password = secrets.token_urlsafe(18)
    port = free_port()
    acl = ["user default off", f"user {USER} on >{password} ~* &* +@all"]
    node = RedisNode(
        "acl", port, tmp_path / "acl", plain_binary(),
        server_config(port, tmp_path / "acl", *acl),
    )  # fmt: skip
    node.start(lambda: answers(redis.Redis(LOOPBACK, port, username=USER, password=password)))
    yield AclRedis(node, password)
    node.stop()


def settings_for(home: Path, url: str, **connection: Any) -> Settings:
    return Settings(
        redis_url=url,
        home=home,
        task_modules=TEST_MODULES,
        sweep_interval_s=0.5,
        recovery_after_s=2.0,
        **connection,
    )


def cli(stack: Stack, *args: str, **env_overrides: str) -> subprocess.CompletedProcess[str]:
    env = stack.env()
    env.update(env_overrides)
    return treadle(*args, env=env, timeout_s=60)


def test_an_acl_user_runs_workflows_and_its_password_is_never_shown(
    acl_redis: AclRedis, tmp_path: Path
) -> None:
    password = acl_redis.password
    with (
        redis.Redis(LOOPBACK, acl_redis.node.port) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.ping()
    settings = settings_for(tmp_path / "home", acl_redis.url)
    shown: list[str] = []
    with (
        Stack(settings, workers=[WorkerSpec(PriorityClass.default, 1, 2)]) as stack,
        Client.connect(settings, stack.redis_url) as client,
    ):
        ok = client.submit(FAN)
        doomed = {"id": "x", "task": "treadle.fail", "args": {"times": 9, "permanent": True}}
        failing = client.submit({"name": "doomed", "steps": [doomed]})
        assert client.wait(ok, timeout_s=60)["state"] == "succeeded"
        assert client.wait(failing, timeout_s=60)["state"] == "failed"
        assert client.audit(ok).ok
        for args in (
            ("status", ok),
            ("status", ok, "--json"),
            ("list",),
            ("audit", ok),
            ("dlq", "list", "--json"),
        ):
            result = cli(stack, *args)
            assert result.returncode == 0, result.stderr
            shown += [result.stdout, result.stderr]
        wrong = f"wrong-{secrets.token_urlsafe(8)}"
        for url, why in (
            (acl_redis.url.replace(password, wrong), "invalid username-password"),
            (f"redis://{USER}:{password}@{LOOPBACK}:{free_port()}/0", "refused"),
        ):
            refused = cli(stack, "status", ok, TREADLE_REDIS_URL=url)
            assert refused.returncode == 5, refused.stderr
            assert "cannot be reached" in refused.stderr and why in refused.stderr
            assert wrong not in refused.stderr
            shown += [refused.stdout, refused.stderr]
        worker_log = stack.child("default-1").log_path
    logs = {path.name: path.read_text(errors="replace") for path in stack.log_dir.glob("*.log")}
    # The worker's banner and kombu's connection messages name the server, masked.
    assert f"{USER}:**@{LOOPBACK}" in logs[worker_log.name]
    for name, text in logs.items():
        assert password not in text, f"the password is in {name}"
    for text in shown:
        assert password not in text


def test_treadle_up_does_not_print_the_password(acl_redis: AclRedis, tmp_path: Path) -> None:
    env = clean_env(redis_url=acl_redis.url, task_modules=SAMPLE_MODULES, flower_port="0")
    up_log = tmp_path / "up.log"
    with up_log.open("w+") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "up"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:

            def banner_shown() -> bool:
                assert up.poll() is None, up_log.read_text()
                return "Flower:" in up_log.read_text()

            wait_until(banner_shown, 90, "treadle up to print its banner", poll_s=0.1)
            spec = tmp_path / "hello.json"
            spec.write_text('{"name": "hello", "steps": [{"id": "a", "task": "treadle.noop"}]}')
            submitted = treadle("submit", str(spec), "--wait", env=env, cwd=tmp_path)
            assert submitted.returncode == 0, submitted.stderr
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(60)
            finally:
                if up.poll() is None:
                    os.killpg(up.pid, signal.SIGKILL)
                    up.wait()
    printed = up_log.read_text()
    assert f"redis: redis://{USER}:***@{LOOPBACK}" in printed
    texts = {"treadle up": printed, "submit": submitted.stdout + submitted.stderr}
    for path in (tmp_path / ".treadle" / "logs").glob("*.log"):
        texts[path.name] = path.read_text(errors="replace")
    assert "flower.log" in texts  # Flower logs its broker URL: masked too
    for name, text in texts.items():
        assert acl_redis.password not in text, f"the password is in {name}"


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "tls")


@pytest.fixture
def tls_redis(tmp_path: Path, certificates: Certificates) -> Iterator[tuple[RedisNode, str]]:
    binary = tls_binary()
    if binary is None:
        # Skipped on a developer's machine; CI installs the binary, so there it is a failure.
        if os.environ.get("CI"):
            pytest.fail(TLS_MISSING)
        pytest.skip(TLS_MISSING)
    password = secrets.token_urlsafe(18)
    port = free_port()
    tls = [
        "port 0",  # TLS only: nothing reaches it in plain text
        f"tls-port {port}",
        f"tls-cert-file {certificates.server_cert}",
        f"tls-key-file {certificates.server_key}",
        f"tls-ca-cert-file {certificates.ca}",
        "tls-auth-clients yes",  # and only with a certificate the CA signed
        f"requirepass {password}",
    ]
    node = RedisNode("tls", port, tmp_path / "tls-redis", binary, [
        *server_config(0, tmp_path / "tls-redis"), *tls,
    ])  # fmt: skip

    def ready() -> bool:
        with redis.Redis(
            LOOPBACK, port, password=password, ssl=True,
            ssl_ca_certs=str(certificates.ca), ssl_certfile=str(certificates.client_cert),
            ssl_keyfile=str(certificates.client_key), socket_timeout=1,
        ) as client:  # fmt: skip
            return answers(client)

    node.start(ready)
    yield node, f"rediss://:{password}@{LOOPBACK}:{port}/0"
    node.stop()


def test_workflows_run_over_tls_with_a_client_certificate(
    tls_redis: tuple[RedisNode, str], certificates: Certificates, tmp_path: Path
) -> None:
    _node, url = tls_redis
    tls = {
        "redis_tls_ca_file": certificates.ca,
        "redis_tls_cert_file": certificates.client_cert,
        "redis_tls_key_file": certificates.client_key,
    }
    settings = settings_for(tmp_path / "home", url, **tls)
    with (
        Stack(settings, workers=[WorkerSpec(PriorityClass.default, 1, 2)]) as stack,
        Client.connect(settings, stack.redis_url) as client,
    ):
        workflow_id = client.submit(FAN)  # a chord: Celery's result backend over TLS too
        assert client.wait(workflow_id, timeout_s=60)["state"] == "succeeded"
        assert client.audit(workflow_id).ok
        assert cli(stack, "status", workflow_id).returncode == 0
        # A server certificate from a CA we do not trust is refused...
        stranger = make_certificates(tmp_path / "stranger", name="stranger")
        untrusted = cli(stack, "status", workflow_id, TREADLE_REDIS_TLS_CA_FILE=str(stranger.ca))
        assert untrusted.returncode == 5, untrusted.stderr
        assert "certificate verify failed" in untrusted.stderr
        # ...and so is a client without a certificate.
        env = {k: v for k, v in stack.env().items() if not k.startswith("TREADLE_REDIS_TLS_")}
        env["TREADLE_REDIS_TLS_CA_FILE"] = str(certificates.ca)
        anonymous = treadle("status", workflow_id, env=env, timeout_s=60)
        assert anonymous.returncode == 5, anonymous.stderr


class LeavesAMark:
    """Unpickling this creates a file: what a malicious pickle would do, harmlessly."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.mark,))


def test_a_pickled_task_message_is_dead_lettered_and_never_unpickled(
    client: Client, stack: Stack, settings: Settings, tmp_path: Path
) -> None:
    # The payload is live: unpickled, it leaves its mark.
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(((LeavesAMark(proof),), {}, {})))
    assert proof.exists()

    mark = tmp_path / "unpickled"
    app: Celery = make_app(settings, stack.redis_url)
    try:
        # A real Celery task message for a real task, serialized by kombu as a pickle.
        sent = app.send_task(
            "treadle.noop", args=(LeavesAMark(mark),), queue="default", serializer="pickle"
        )
    finally:
        app.close()

    def filed() -> dict[str, Any] | None:
        return next(
            (e for e in client.dead_letters.entries() if e.get("message_id") == sent.id), None
        )

    letter = wait_until(filed, 30, "the pickled message to be dead-lettered")
    assert letter["kind"] == "message"
    assert letter["content_type"] == "application/x-python-serialize"
    assert "ContentDisallowed" in letter["error"] or "disallowed" in letter["error"].lower()
    assert not mark.exists()
