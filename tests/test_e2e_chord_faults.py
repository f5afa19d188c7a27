"""A chord's end through a connection that drops just after Redis counted it: the body
must still run, once.

The header task that ends a chord runs Celery's counting script, which also claims the
right to publish the body. If the reply is lost, the backend's retry runs the script
again with the same claim; that second run must see the claim as its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config.celery_app import make_app
from config.redis_server import EmbeddedRedis
from config.settings import Settings
from config.topology import PriorityClass
from orchestrator.client import Client
from orchestrator.stack import Stack, WorkerSpec
from tests.conftest import TEST_MODULES, wait_until
from tests.faults import CuttingProxy

pytestmark = pytest.mark.e2e

DIAMOND = {
    "name": "cut-chord",
    "steps": [
        {"id": "a", "task": "treadle.noop"},
        {"id": "b", "task": "treadle.noop", "after": ["a"]},
        {"id": "c", "task": "treadle.sleep", "args": {"seconds": 1.5}, "after": ["a"]},
        {"id": "d", "task": "treadle.noop", "after": ["b", "c"]},
    ],
}


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Stack, Client, CuttingProxy]]:
    """A stack whose every Redis connection goes through a CuttingProxy."""
    with EmbeddedRedis(tmp_path / "redis") as server, CuttingProxy(server.url) as proxy:
        settings = Settings(redis_url=proxy.url, home=tmp_path / "home", task_modules=TEST_MODULES)
        with (
            Stack(settings, workers=[WorkerSpec(PriorityClass.default, 1, 2)]) as stack,
            Client.connect(settings, stack.redis_url) as client,
        ):
            yield stack, client, proxy


def test_a_lost_reply_to_the_chord_count_that_ends_the_chord_still_runs_its_body(
    proxied: tuple[Stack, Client, CuttingProxy],
) -> None:
    stack, client, proxy = proxied
    workflow_id = client.submit(DIAMOND)

    def b_done_c_running() -> bool:
        steps = {s["id"]: s["state"] for s in client.status(workflow_id)["steps"]}
        return bool(steps["b"] == "succeeded" and steps["c"] == "running")

    wait_until(b_done_c_running, 30, "b to end while c still runs")
    # c's end is the count that completes the chord and claims its body.
    proxy.cut_reply_to(counting_script_sha(stack).encode())
    status = client.wait(workflow_id, timeout_s=60)
    assert proxy.cuts == 1
    assert status["state"] == "succeeded", status
    assert {s["id"]: s["attempts"] for s in status["steps"]}["d"] == 1
    report = client.audit(workflow_id)
    assert report.ok, report.problems


def counting_script_sha(stack: Stack) -> str:
    """The SHA1 the workers' result backend sends its chord counting script by."""
    app = make_app(stack.settings, stack.redis_url)
    try:
        return str(app.backend._chord_part_return_script.sha)
    finally:
        app.close()
