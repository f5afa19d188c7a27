"""treadle on pytest-celery's Docker-based setup, as a user's CI with Docker runs it: a Redis
container (broker, result backend and state store) and a worker container built from
ops/Dockerfile, on pytest-celery's network. Workflows are submitted from the test process
(through the Redis container's published port) and with `treadle submit` inside the worker
container, then read back with `treadle status` and `treadle audit` there.

Needs a Docker engine; skipped without one (conftest.py). Run with `pytest -m docker`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pytest_celery import CeleryTestSetup, CeleryTestWorker

from config.queues import queue_for
from config.topology import PriorityClass
from orchestrator.client import Client

# The first test also builds the image (pip install on a cold cache takes minutes).
pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

WAIT_S = 60

# A diamond: a, then b and c in parallel, then d. It compiles to a chain ending in a chord,
# so the chord's counter lives in the container's Redis result backend.
DIAMOND: dict[str, Any] = {
    "name": "docker-diamond",
    "priority": "default",
    "steps": [
        {"id": "a", "task": "treadle.echo", "args": {"value": 1}},
        {"id": "b", "task": "treadle.noop", "after": ["a"]},
        {"id": "c", "task": "treadle.echo", "args": {"value": "c"}, "after": ["a"]},
        {"id": "d", "task": "treadle.noop", "after": ["b", "c"]},
    ],
}


def treadle_in(worker: CeleryTestWorker, *args: str) -> tuple[int, str, str]:
    """`treadle ARGS` run inside the worker's container, with its environment (the Redis on
    pytest-celery's network); bounded by `timeout` so a hang fails instead of stalling."""
    code, (out, err) = worker.container.exec_run(
        ["timeout", str(WAIT_S * 2), "treadle", *args], demux=True
    )
    return int(code), (out or b"").decode(), (err or b"").decode()


def test_the_worker_container_is_a_treadle_worker_of_the_default_pool(
    celery_setup: CeleryTestSetup,
) -> None:
    assert celery_setup.ready()  # the Redis and worker containers are up, by their logs
    worker = celery_setup.worker
    assert worker is not None and worker.hostname().startswith("default-1@")
    worker.assert_log_exists(f"{worker.hostname()} ready.")
    # treadle's own app (its transport) reaches the worker in the container by name.
    control = celery_setup.app.control
    assert control.ping(destination=[worker.hostname()], timeout=5) == [
        {worker.hostname(): {"ok": "pong"}}
    ]
    queues = control.inspect(destination=[worker.hostname()], timeout=5).active_queues()
    assert [q["name"] for q in queues[worker.hostname()]] == [queue_for(PriorityClass.default)]
    # One Redis for everything, as treadle runs: the backend vendor sits on the broker's.
    assert celery_setup.backend is not None and celery_setup.broker is not None
    assert celery_setup.backend.config()["url"] == celery_setup.broker.config()["url"]


def test_a_workflow_submitted_from_the_test_process_runs_in_the_worker_container(
    celery_setup: CeleryTestSetup, treadle_client: Client
) -> None:
    assert celery_setup.ready()
    worker = celery_setup.worker
    assert worker is not None

    workflow_id = treadle_client.submit(DIAMOND)
    final = treadle_client.wait(workflow_id, timeout_s=WAIT_S)

    assert final["state"] == "succeeded", final
    assert {s["id"]: s["state"] for s in final["steps"]} == dict.fromkeys("abcd", "succeeded")
    assert {s["worker"] for s in final["steps"]} == {worker.hostname()}
    assert treadle_client.audit(workflow_id).ok
    assert treadle_client.audit_chain_problems(workflow_id) == []

    # The same workflow as the CLI in the image sees it.
    code, out, err = treadle_in(worker, "status", workflow_id, "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["state"] == "succeeded" and len(status["steps"]) == 4
    code, out, err = treadle_in(worker, "audit", workflow_id, "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["ok"] and report["problems"] == []
    assert {s["id"] for s in report["steps"]} == set("abcd")


def test_treadle_submit_inside_the_container_waits_for_a_sample_workflow(
    celery_setup: CeleryTestSetup, treadle_client: Client
) -> None:
    assert celery_setup.ready()
    worker = celery_setup.worker
    assert worker is not None

    # The image's own copy of the samples (WORKDIR /app); on the default pool, the one
    # this setup runs (the sample's own class is critical).
    code, out, err = treadle_in(
        worker,
        "submit",
        "workers/samples/workflows/order-fulfillment.yaml",
        "--priority",
        "default",
        "--wait",
        "--json",
    )
    assert code == 0, out + err
    submitted = json.loads(out)
    assert submitted["state"] == "succeeded"

    # What the test process reads from the Redis container agrees.
    status = treadle_client.status(submitted["id"])
    assert status["name"] == "order-fulfillment" and status["state"] == "succeeded"
    assert {s["worker"] for s in status["steps"]} == {worker.hostname()}
    code, out, err = treadle_in(worker, "audit", submitted["id"])
    assert code == 0, out + err
    listed = treadle_client.list(state="succeeded")
    assert submitted["id"] in {row["id"] for row in listed}
