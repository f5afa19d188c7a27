"""The HTTP API as producers and operators use it: real `treadle orchestrator --port`
processes (two replicas on two ports, one Redis) in front of real workers.

One stack for the module, with its own topology: the critical class admits 2
outstanding steps, so backpressure is easy to reach.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from config.settings import Settings
from config.topology import PriorityClass
from orchestrator.audit import chain_problems
from orchestrator.client import Client
from orchestrator.errors import InvalidInput, NotFound
from orchestrator.stack import Stack, WorkerSpec
from orchestrator.states import WORKFLOW_FINAL
from tests.conftest import TEST_MODULES, clean_env, treadle, wait_until
from tests.tasks import fix

pytestmark = pytest.mark.e2e

TOPOLOGY = """
pools:
  critical: {concurrency: 2}
  default:  {concurrency: 2}
  bulk:     {concurrency: 1}
admission:
  critical: {high: 2, low: 1}
"""
TOKEN = "test-token-for-the-api-0123456789"
MAX_BODY_BYTES = 64 * 1024
QUICK = {"sweep_interval_s": "0.5", "recovery_after_s": "2.0"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Api:
    stack: Stack
    urls: list[str]  # one per orchestrator replica
    home: Path

    def http(self, replica: int = 0, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.urls[replica], headers=headers, timeout=30)

    def cli(self, *args: str, url: str | None = None, token: str = TOKEN) -> Any:
        """The real `treadle` command in remote mode: it knows the API, not Redis."""
        env = clean_env(
            api_url=url or self.urls[0],
            api_token=token,
            task_modules=TEST_MODULES,
            home=str(self.home / "cli-home"),
        )
        return treadle(*args, env=env, cwd=self.home, timeout_s=60)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("api-home")
    topology = home / "topology.yaml"
    topology.write_text(TOPOLOGY)
    settings = Settings(home=home, task_modules=TEST_MODULES, topology=topology)
    workers = [
        WorkerSpec(PriorityClass.critical, 1, 2),
        WorkerSpec(PriorityClass.default, 1, 2),
    ]
    env = {
        **{f"TREADLE_{k.upper()}": v for k, v in QUICK.items()},
        "TREADLE_API_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    }
    ports = [free_port(), free_port()]
    with Stack(
        settings, workers=workers, api_port=ports[0], api_token=TOKEN, extra_env=env
    ) as stack:
        stack.start_orchestrator("orchestrator-2", ports[1])
        stack.wait_http(ports[1])
        api = Api(stack, [f"http://127.0.0.1:{p}" for p in ports], home)
        for replica in range(2):
            with api.http(replica) as http:
                wait_until(partial(_answers, http, "/readyz"), 30, f"replica {replica} to serve")
        yield api


def _answers(http: httpx.Client, path: str) -> bool:
    try:
        return http.get(path).status_code == 200
    except httpx.TransportError:
        return False


def finished(http: httpx.Client, workflow_id: str, timeout_s: float = 60) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        status: dict[str, Any] = http.get(f"/workflows/{workflow_id}").json()
        return status if status["state"] in WORKFLOW_FINAL else None

    return wait_until(ended, timeout_s, f"workflow {workflow_id} to end", poll_s=0.1)


def steps_of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in status["steps"]}


def count(http: httpx.Client) -> int:
    return len(http.get("/workflows", params={"limit": 10_000}).json())


# -- producers ------------------------------------------------------------------------


def test_a_submission_is_created_then_polled_until_it_succeeded(api: Api) -> None:
    spec = {
        "name": "http-hello",
        "idempotency_key": f"hello-{free_port()}",
        "steps": [
            {"id": "a", "task": "treadle.echo", "args": {"value": 1}},
            {"id": "b", "task": "treadle.noop", "after": ["a"], "when": "params.go == true"},
        ],
    }
    with api.http() as http:
        created = http.post("/workflows", json=spec, params={"param": ["go=true"]})
        assert created.status_code == 201, created.text
        assert created.json()["created"] is True
        workflow_id = created.json()["id"]

        status = finished(http, workflow_id)
        assert status["state"] == "succeeded"
        assert set(status) >= {"id", "name", "state", "priority", "submitted_at", "finished_at"}
        # The ?param= override reached the condition: b ran rather than being skipped.
        assert steps_of(status)["b"]["state"] == "succeeded"
        assert steps_of(status)["a"]["after"] == [] and steps_of(status)["b"]["after"] == ["a"]

        listed = http.get("/workflows", params={"state": "succeeded"}).json()
        assert workflow_id in [row["id"] for row in listed]

    # The same idempotency key on the other replica: the first id, 200 instead of 201.
    with api.http(1) as other:
        again = other.post("/workflows", json=spec)
        assert again.status_code == 200
        assert again.json() == {"id": workflow_id, "created": False}


def test_a_priority_override_picks_the_class(api: Api) -> None:
    spec = {"name": "http-priority", "steps": [{"id": "a", "task": "treadle.noop"}]}
    with api.http() as http:
        created = http.post("/workflows", json=spec, params={"priority": "critical"})
        assert created.status_code == 201, created.text
        status = finished(http, created.json()["id"])
        assert status["priority"] == "critical" and status["state"] == "succeeded"


def test_an_invalid_spec_gets_400_with_every_problem_located_and_nothing_is_written(
    api: Api,
) -> None:
    spec = {
        "name": "broken",
        "steps": [
            {"id": "a", "task": "no.such_task"},
            {"id": "b", "task": "treadle.noop", "after": ["pay"]},
            {"id": "b", "task": "treadle.noop"},
        ],
    }
    with api.http() as http:
        before = count(http)
        refused = http.post("/workflows", json=spec)
        assert refused.status_code == 400
        body = refused.json()
        assert body["error"] == "invalid"
        problems = {(p["where"], p["what"]) for p in body["problems"]}
        wheres = {where for where, _ in problems}
        assert {"steps[0].task", "steps[1].after"} <= wheres, problems
        assert any("duplicate" in what for _, what in problems), problems
        assert any("'pay'" in what for _, what in problems)

        bad_query = http.post("/workflows", json=spec, params={"priority": "urgent", "param": "x"})
        assert bad_query.status_code == 400
        wheres = {p["where"] for p in bad_query.json()["problems"]}
        # The query's problems and the spec's, together.
        assert wheres == {"query.priority", "query.param[0]", *{w for w, _ in problems}}

        not_json = http.post(
            "/workflows", content=b"{name: x", headers={"Content-Type": "application/json"}
        )
        assert not_json.status_code == 400
        assert not_json.json()["problems"][0]["where"].startswith("body (line 1")

        not_json_type = http.post(
            "/workflows", content=b"name: x", headers={"Content-Type": "text/yaml"}
        )
        assert not_json_type.status_code == 415
        assert count(http) == before


def test_the_list_filters_by_state_class_and_tenant_and_names_the_tenant(api: Api) -> None:
    tenant = f"tenant-{free_port()}"
    noop = [{"id": "a", "task": "treadle.noop"}]
    specs: list[dict[str, Any]] = [
        {"name": "f-default", "tenant": tenant, "steps": noop},
        {"name": "f-other", "tenant": f"{tenant}-x", "steps": noop},
        {"name": "f-none", "steps": noop},
        {
            "name": "f-failed",
            "tenant": tenant,
            "steps": [{"id": "a", "task": "tests.always_permanent"}],
        },
    ]
    with api.http() as http:
        ids: dict[str, str] = {}
        for spec in specs:
            created = http.post("/workflows", json=spec)
            assert created.status_code == 201, created.text
            ids[spec["name"]] = created.json()["id"]
        for workflow_id in ids.values():
            finished(http, workflow_id)

        def listed(**params: str) -> dict[str, dict[str, Any]]:
            answer = http.get("/workflows", params={"limit": "10000", **params})
            assert answer.status_code == 200, answer.text
            return {row["id"]: row for row in answer.json()}

        mine = listed(tenant=tenant)
        assert set(mine) == {ids["f-default"], ids["f-failed"]}
        assert {row["tenant"] for row in mine.values()} == {tenant}
        assert listed(tenant=tenant, state="failed").keys() == {ids["f-failed"]}
        assert listed(tenant=tenant, priority="bulk") == {}
        assert ids["f-default"] in listed(tenant=tenant, priority="default")
        assert listed()[ids["f-none"]]["tenant"] is None
        # Without a tenant filter every tenant's rows come, and the class filter alone works.
        every_default = listed(priority="default")
        assert {ids["f-default"], ids["f-other"], ids["f-none"]} <= every_default.keys()
        assert {row["priority"] for row in every_default.values()} == {"default"}

        for params in ({"priority": "urgent"}, {"tenant": ""}, {"state": "sleeping"}):
            refused = http.get("/workflows", params=params)
            assert refused.status_code == 400, (params, refused.text)
            assert refused.json()["error"] == "invalid"


def test_backpressure_answers_429_with_retry_after_and_writes_nothing(api: Api) -> None:
    blocker = {
        "name": "critical-blocker",
        "priority": "critical",
        "stages": [
            {
                "parallel": [
                    {"id": f"s{i}", "task": "treadle.sleep", "args": {"seconds": 60}}
                    for i in range(2)
                ]
            }
        ],
    }
    refused_spec = {
        "name": "critical-late",
        "priority": "critical",
        "idempotency_key": f"late-{free_port()}",
        "steps": [{"id": "a", "task": "treadle.noop"}],
    }
    with api.http() as http:
        blocking = http.post("/workflows", json=blocker)
        assert blocking.status_code == 201, blocking.text
        before = count(http)

        refused = http.post("/workflows", json=refused_spec)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        body = refused.json()
        assert body["error"] == "refused" and body["retry_after_s"] >= 1
        assert "watermark of 2" in body["message"]
        assert count(http) == before  # nothing of it was written

        spec_file = api.home / "late.json"
        spec_file.write_text(json.dumps({**refused_spec, "idempotency_key": None}))
        cli = api.cli("submit", str(spec_file))
        assert cli.returncode == 3, cli.stderr
        assert "retry in" in cli.stderr
        assert count(http) == before

        stopped = http.post(f"/workflows/{blocking.json()['id']}/cancel?terminate=true")
        assert stopped.json()["state"] == "cancelled"

        # Its idempotency key was not stored either: once admitted, it is a new workflow.
        def admitted_once_drained() -> httpx.Response | None:
            answer = http.post("/workflows", json=refused_spec)
            return None if answer.status_code == 429 else answer

        admitted = wait_until(admitted_once_drained, 30, "the class to drain")
        assert admitted.status_code == 201, admitted.text
        assert finished(http, admitted.json()["id"])["state"] == "succeeded"


def test_unknown_ids_are_404_naming_the_id(api: Api) -> None:
    with api.http() as http:
        for method, path in [
            ("GET", "/workflows/nope-123"),
            ("POST", "/workflows/nope-123/cancel"),
            ("POST", "/workflows/nope-123/resume"),
            ("GET", "/workflows/nope-123/audit"),
            ("GET", "/workflows/nope-123/audit/check"),
            ("GET", "/dead-letters/nope-123"),
            ("POST", "/dead-letters/nope-123/replay"),
        ]:
            answer = http.request(method, path)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.json()["error"] == "not_found"
            assert "nope-123" in answer.json()["message"]


# -- operators ------------------------------------------------------------------------


def test_cancel_then_resume_over_http(api: Api) -> None:
    spec = {
        "name": "http-cancel",
        "steps": [
            {"id": "slow", "task": "treadle.sleep", "args": {"seconds": 1.5}},
            {"id": "next", "task": "treadle.noop", "after": ["slow"]},
        ],
    }
    with api.http() as http, api.http(1) as other:
        workflow_id = http.post("/workflows", json=spec).json()["id"]
        wait_until(
            lambda: (
                steps_of(http.get(f"/workflows/{workflow_id}").json())["slow"]["state"] == "running"
            ),
            30,
            "the slow step to run",
        )
        busy = other.post(f"/workflows/{workflow_id}/resume")
        assert busy.status_code == 409 and busy.json()["error"] == "wrong_state"

        cancelled = other.post(f"/workflows/{workflow_id}/cancel", params={"terminate": "true"})
        assert cancelled.status_code == 200
        assert cancelled.json() == {"id": workflow_id, "state": "cancelled"}
        status = http.get(f"/workflows/{workflow_id}").json()
        assert status["state"] == "cancelled"
        assert {s["state"] for s in status["steps"]} == {"cancelled"}

        resumed = http.post(f"/workflows/{workflow_id}/resume")
        assert resumed.status_code == 200
        assert resumed.json() == {"id": workflow_id, "steps": ["slow", "next"]}
        assert finished(http, workflow_id)["state"] == "succeeded"


def test_the_audit_trail_comes_as_json_lines_whose_chain_verifies(api: Api) -> None:
    spec = {
        "name": "http-audit",
        "steps": [
            {"id": "a", "task": "treadle.echo", "args": {"value": "x"}},
            {"id": "b", "task": "treadle.echo", "args": {"value": "y"}, "after": ["a"]},
        ],
    }
    with api.http() as http:
        workflow_id = http.post("/workflows", json=spec).json()["id"]
        assert finished(http, workflow_id)["state"] == "succeeded"

        log = http.get(f"/workflows/{workflow_id}/audit")
        assert log.status_code == 200
        assert log.headers["content-type"].startswith("application/x-ndjson")
        lines = log.text.splitlines()
        tail = log.headers["Treadle-Audit-Tail"]
        assert chain_problems(lines, tail) == []
        records = [json.loads(line) for line in lines]
        assert all("prev" in r for r in records)
        assert any("input_sha256" in r for r in records)
        assert any("output_sha256" in r for r in records)
        # The checksums make a change visible: one edited record breaks the chain.
        edited = [*lines[:-1], lines[-1].replace('"to":', '"to": ')]
        assert chain_problems(edited, tail)

        verdict = http.get(f"/workflows/{workflow_id}/audit/check").json()
        assert verdict["ok"] is True and verdict["problems"] == []
        assert verdict["records"] == len(lines)
        assert sorted(s["id"] for s in verdict["steps"]) == ["a", "b"]

        via_cli = api.cli("audit", workflow_id, "--json")
        assert via_cli.returncode == 0, via_cli.stderr
        assert json.loads(via_cli.stdout)["ok"] is True


def _dead_lettered(http: httpx.Client, name: str) -> tuple[str, dict[str, Any]]:
    spec = {
        "name": "http-dlq",
        "steps": [
            {"id": "before", "task": "treadle.noop"},
            {
                "id": "broken",
                "task": "tests.broken_until_fixed",
                "args": {"name": name},
                "after": ["before"],
            },
        ],
    }
    workflow_id = http.post("/workflows", json=spec).json()["id"]
    assert finished(http, workflow_id)["state"] == "failed"
    letters = http.get("/dead-letters").json()
    return workflow_id, next(e for e in letters if e.get("workflow_id") == workflow_id)


def test_the_dead_letter_queue_over_http(api: Api) -> None:
    with api.http() as http, api.http(1) as other:
        first, letter = _dead_lettered(http, f"http-dlq-{free_port()}")
        assert (letter["step_id"], letter["task"]) == ("broken", "tests.broken_until_fixed")
        assert {"id", "error", "attempts"} <= set(letter)

        shown = other.get(f"/dead-letters/{quote(letter['id'], safe='')}")
        assert shown.status_code == 200, shown.text
        assert shown.json()["id"] == letter["id"] and "RuntimeError" in shown.json()["traceback"]

        fix(letter["args"]["name"], api.stack.redis_url)
        replayed = other.post(f"/dead-letters/{letter['id']}/replay")
        assert replayed.status_code == 200, replayed.text
        assert replayed.json() == {"id": letter["id"], "workflow_id": first}
        assert finished(http, first)["state"] == "succeeded"

        second, letter = _dead_lettered(http, f"http-dlq-{free_port()}")
        fix(letter["args"]["name"], api.stack.redis_url)
        every = http.post("/dead-letters/replay")
        assert every.status_code == 200 and second in every.json()["workflows"]
        assert finished(http, second)["state"] == "succeeded"

        third, _ = _dead_lettered(http, f"http-dlq-{free_port()}")
        purged = other.delete("/dead-letters")
        assert purged.status_code == 200 and purged.json()["purged"] >= 1
        assert http.get("/dead-letters").json() == []
        assert http.get(f"/workflows/{third}").json()["state"] == "failed"  # stays failed


# -- security -------------------------------------------------------------------------


def test_every_route_but_health_needs_the_token(api: Api) -> None:
    with api.http(token=None) as anonymous, api.http(token="not-the-token-at-all") as wrong:
        for client in (anonymous, wrong):
            for method, path in [
                ("GET", "/workflows"),
                ("POST", "/workflows"),
                ("GET", "/dead-letters"),
                ("DELETE", "/dead-letters"),
                ("GET", "/openapi.json"),
                ("GET", "/docs"),
                ("GET", "/metrics"),
            ]:
                answer = client.request(method, path)
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.headers["WWW-Authenticate"].startswith("Bearer")
                assert answer.json()["error"] == "unauthorized"
        basic = anonymous.get("/workflows", headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/readyz").json() == {"status": "ready"}
    with api.http() as http:
        document = http.get("/openapi.json").json()
        assert "/workflows" in document["paths"]
        assert "WorkflowSpec" in document["components"]["schemas"]
        assert http.get("/docs").status_code == 200
    # Neither the token nor the wrong ones tried are written to the logs.
    logs = [api.stack.child(r).log_path.read_text() for r in ("orchestrator", "orchestrator-2")]
    assert '"GET /workflows HTTP/1.1" 401' in logs[0]  # requests are logged, without them
    assert not [log for log in logs if TOKEN in log or "not-the-token-at-all" in log]


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read(api: Api) -> None:
    big = json.dumps({"name": "big", "params": {"blob": "x" * MAX_BODY_BYTES}, "steps": []})
    with api.http() as http:
        declared = http.post(
            "/workflows", content=big, headers={"Content-Type": "application/json"}
        )
        assert declared.status_code == 413
        assert declared.json()["error"] == "too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked
            for start in range(0, len(big), 8192):
                yield big[start : start + 8192].encode()

        streamed = http.post(
            "/workflows", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413


@pytest.mark.parametrize(
    ("how", "extra_args", "extra_env"),
    [
        ("TREADLE_API_AUTH=off", [], {"TREADLE_API_AUTH": "off"}),
        ("--insecure-no-auth", ["--insecure-no-auth"], {}),
    ],
)
def test_the_api_refuses_to_start_without_a_token_unless_auth_is_turned_off(
    api: Api, how: str, extra_args: list[str], extra_env: dict[str, str]
) -> None:
    env = api.stack.env()
    env.pop("TREADLE_API_TOKEN", None)
    command = [sys.executable, "-m", "orchestrator.cli", "orchestrator", "--port"]
    refused = subprocess.run(
        [*command, "0"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode == 2
    assert "TREADLE_API_TOKEN" in refused.stderr and "TREADLE_API_AUTH=off" in refused.stderr

    port = free_port()
    log = (api.home / f"open-{port}.log").open("w+")
    process = subprocess.Popen(
        [*command, str(port), *extra_args],
        env={**env, **extra_env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as open_api:
            wait_until(lambda: _answers(open_api, "/workflows"), 60, f"the API opened by {how}")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0  # SIGTERM stops the consumer and the server cleanly
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    assert "takes requests without a token" in (api.home / f"open-{port}.log").read_text()


# -- the remote CLI -------------------------------------------------------------------


def test_the_cli_over_http_prints_the_same_and_exits_with_the_same_codes(api: Api) -> None:
    spec = api.home / "hello.yaml"
    spec.write_text("name: hello-remote\nsteps:\n  - {id: a, task: treadle.noop}\n")
    submitted = api.cli("submit", str(spec), "--wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    reply = json.loads(submitted.stdout)
    assert reply["state"] == "succeeded"

    # The other replica answers for what the first one stored.
    status = api.cli("status", reply["id"], "--json", url=api.urls[1])
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "succeeded"
    listed = api.cli("list", "--json")
    assert reply["id"] in [row["id"] for row in json.loads(listed.stdout)]

    broken = api.home / "broken.yaml"
    broken.write_text("name: b\nsteps:\n  - {id: a, task: treadle.noop, after: [zz]}\n")
    invalid = api.cli("submit", str(broken))
    assert invalid.returncode == 2
    assert f"{broken}: steps[0].after: unknown step 'zz'" in invalid.stderr

    unknown = api.cli("status", "no-such-workflow")
    assert unknown.returncode == 4 and "no-such-workflow" in unknown.stderr

    unreachable = api.cli("list", url=f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 5 and "cannot be reached" in unreachable.stderr

    wrong_token = api.cli("list", token="not-the-token-at-all")
    assert wrong_token.returncode == 2 and "token" in wrong_token.stderr

    dlq = api.cli("dlq", "list", "--json")
    assert dlq.returncode == 0 and isinstance(json.loads(dlq.stdout), list)


def test_the_python_client_does_the_same_over_http(api: Api) -> None:
    with Client.remote(api.urls[1], TOKEN) as client:
        workflow_id = client.submit(
            {
                "name": "py-remote",
                "steps": [{"id": "a", "task": "treadle.echo", "args": {"value": 7}}],
            },
            params={"who": "remote"},
        )
        assert client.wait(workflow_id, timeout_s=60)["state"] == "succeeded"
        assert workflow_id in [row["id"] for row in client.list(state="succeeded")]
        assert client.audit(workflow_id).ok
        assert chain_problems(*client.audit_log(workflow_id)) == []
        assert client.cancel(workflow_id) == "succeeded"  # already ended: unchanged
        assert client.resume(workflow_id) == []  # nothing to run again
        assert isinstance(client.dead_letters.entries(), list)
        with pytest.raises(NotFound):
            client.status("no-such-workflow")
        with pytest.raises(InvalidInput) as caught:
            client.submit({"name": "x", "steps": [{"id": "a", "task": "no.such"}]})
        assert caught.value.problems[0].where == "steps[0].task"


def test_every_replica_serves_the_same_metrics(api: Api) -> None:
    with api.http(0) as first, api.http(1) as second:
        workflow_id = first.post(
            "/workflows", json={"name": "metered", "steps": [{"id": "a", "task": "treadle.noop"}]}
        ).json()["id"]
        assert finished(first, workflow_id)["state"] == "succeeded"
        answers = [http.get("/metrics") for http in (first, second)]
        assert all(a.status_code == 200 for a in answers)
        assert answers[0].headers["content-type"].startswith("text/plain")
        finished_line = re.compile(
            r'^treadle_workflows_finished_total\{class="default",state="succeeded"\} (\S+)$',
            re.MULTILINE,
        )
        counts = [finished_line.search(a.text) for a in answers]
        assert all(counts) and float(counts[0].group(1)) >= 1  # type: ignore[union-attr]
        assert counts[0].group(1) == counts[1].group(1)  # type: ignore[union-attr]
    printed = api.cli("metrics")
    assert printed.returncode == 0, printed.stderr
    assert "# TYPE treadle_queue_depth gauge" in printed.stdout
