"""Prometheus metrics, read from what the Lua scripts counted on real workers."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

import pytest
import yaml

from orchestrator import metrics
from orchestrator.client import Client
from orchestrator.stack import Stack
from tests.conftest import REPO, run_cli, wait_until
from tests.scraping import Samples, scrape, served_names, value
from tests.tasks import open_gate

pytestmark = pytest.mark.e2e


def grew(before: Samples, after: Samples) -> Callable[..., float]:
    def by(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    return by


def test_metrics_follow_steps_retries_dead_letters_and_workflows(client: Client) -> None:
    before = scrape(client)
    ok = client.submit(
        {
            "name": "metrics-ok",
            "steps": [
                {"id": "nap", "task": "treadle.sleep", "args": {"seconds": 0.3}},
                {
                    "id": "flaky",
                    "task": "treadle.fail",
                    "args": {"times": 1},
                    "retry": {"max_attempts": 2, "backoff_s": 0.05},
                    "after": ["nap"],
                },
            ],
        }
    )
    bad = client.submit(
        {"name": "metrics-bad", "steps": [{"id": "no", "task": "tests.always_permanent"}]}
    )
    assert client.wait(ok, timeout_s=60)["state"] == "succeeded"
    assert client.wait(bad, timeout_s=60)["state"] == "failed"

    def timed() -> bool:
        # Workers add up their run and wait times and write them once a second.
        by = grew(before, scrape(client))
        return (
            by("treadle_step_run_seconds_count", task="treadle.sleep") >= 1
            and by("treadle_step_run_seconds_count", task="treadle.fail") >= 2
            and by("treadle_step_wait_seconds_count", task="treadle.fail") >= 1
        )

    wait_until(timed, 10, "the workers' step timings to reach Redis")
    after = scrape(client)
    by = grew(before, after)

    assert by("treadle_steps_finished_total", **{"class": "default", "state": "succeeded"}) == 2
    assert by("treadle_steps_finished_total", **{"class": "default", "state": "dead-lettered"}) == 1
    assert by("treadle_workflows_finished_total", **{"class": "default", "state": "succeeded"}) == 1
    assert by("treadle_workflows_finished_total", **{"class": "default", "state": "failed"}) == 1
    assert by("treadle_step_retries_total", task="treadle.fail") == 1
    # Run time: one sleep of 0.3 s, in the bucket up to 0.5 s and not in the one up to 0.25.
    assert by("treadle_step_run_seconds_count", task="treadle.sleep") == 1
    assert 0.3 <= by("treadle_step_run_seconds_sum", task="treadle.sleep") < 1.0
    assert by("treadle_step_run_seconds_bucket", task="treadle.sleep", le="0.25") == 0
    assert by("treadle_step_run_seconds_bucket", task="treadle.sleep", le="0.5") == 1
    # Two attempts of the flaky step: two runs; one dependency wait (the second attempt
    # waited out its backoff, not its dependencies).
    assert by("treadle_step_run_seconds_count", task="treadle.fail") == 2
    assert by("treadle_step_wait_seconds_count", task="treadle.fail") == 1
    assert by("treadle_workflow_latency_seconds_count", **{"class": "default"}) == 2
    dead = len(client.dead_letters)
    assert value(after, "treadle_dead_letters") == dead
    for klass in ("critical", "default", "bulk"):
        assert ("treadle_queue_depth", (("class", klass),)) in after
    # Nothing of these two is unfinished any more.
    assert by("treadle_steps", **{"class": "default", "state": "running"}) == 0
    assert by("treadle_steps", **{"class": "default", "state": "pending"}) == 0


def test_the_oldest_running_step_is_seen_while_it_runs(stack: Stack, client: Client) -> None:
    gate = f"metrics-{uuid.uuid4().hex}"
    held = client.submit(
        {
            "name": "metrics-held",
            "steps": [{"id": "h", "task": "tests.hold", "args": {"name": gate}}],
        }
    )

    def running_for() -> float:
        return value(scrape(client), "treadle_oldest_running_seconds", **{"class": "default"})

    wait_until(lambda: running_for() > 0.5, 30, "the held step to be seen running")
    samples = scrape(client)
    assert value(samples, "treadle_steps", **{"class": "default", "state": "running"}) >= 1
    open_gate(gate, stack.redis_url)
    assert client.wait(held, timeout_s=60)["state"] == "succeeded"
    wait_until(lambda: running_for() == 0, 10, "no step of the class to run any more")


def test_treadle_metrics_prints_the_exposition(stack: Stack) -> None:
    printed = run_cli(stack, "metrics")
    assert printed.returncode == 0, printed.stderr
    assert "# TYPE treadle_step_run_seconds histogram" in printed.stdout
    assert 'treadle_queue_depth{class="critical"}' in printed.stdout


def test_the_histogram_buckets_are_the_ones_the_lua_script_fills() -> None:
    lua = (REPO / "orchestrator" / "lua" / "transition.lua").read_text()
    found = re.search(r"local BUCKETS_S = \{([^}]*)\}", lua)
    assert found is not None
    bounds = tuple(float(b) for b in found.group(1).replace("\n", " ").split(","))
    assert bounds == tuple(float(b) for b in metrics.BUCKETS_S)


def test_step_counts_add_up_moves_and_keep_finished_counts_growing() -> None:
    stored = [
        (["steps", "bulk", "pending"], 3.0),  # created
        (["moved", "bulk", "pending", "queued"], 3.0),
        (["moved", "bulk", "queued", "running"], 2.0),
        (["moved", "bulk", "running", "succeeded"], 1.0),
        (["moved", "bulk", "succeeded", "queued"], 1.0),  # resumed: still counted as ended
        (["moved", "bulk", "", "queued"], 4.0),  # fan-out items, created queued
        (["moved", "bulk"], 9.0),  # not a move: ignored
        (["steps", "bulk", "running"], -1.0),  # written by an earlier version
    ]
    families = {f.name: f for f in metrics.TreadleCollector._steps(stored)}
    now_in = {tuple(s.labels.values()): s.value for s in families["treadle_steps"].samples}
    ended = {
        tuple(s.labels.values()): s.value
        for s in families["treadle_steps_finished"].samples
        if s.name.endswith("_total")
    }
    assert now_in == {
        ("bulk", "pending"): 0.0,
        ("bulk", "queued"): 3.0 - 2.0 + 1.0 + 4.0,
        ("bulk", "running"): 2.0 - 1.0 - 1.0,
    }
    assert ended == {("bulk", "succeeded"): 1.0}


def test_the_sample_alert_rules_use_only_metrics_treadle_serves(client: Client) -> None:
    rules = yaml.safe_load((REPO / "ops" / "prometheus" / "alerts.yml").read_text())
    served = served_names(client)
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(exprs) >= 3
    for expr in exprs:
        used = set(re.findall(r"\btreadle_[a-z_]+\b", expr))
        assert used, expr
        assert used <= served, f"{expr}: {sorted(used - served)} not served"


def test_admission_reads_the_finished_count_and_rate_from_the_moves(client: Client) -> None:
    admission = client.orchestrator.admission
    before = metrics.finished_counts(client.orchestrator.store, ["default", "bulk"])
    workflow = client.submit(
        {
            "name": "finished-count",
            "steps": [
                {"id": "a", "task": "treadle.noop"},
                {"id": "b", "task": "treadle.noop"},
                {"id": "c", "task": "treadle.fail", "args": {"times": 5}},
            ],
        }
    )
    assert client.wait(workflow, timeout_s=60)["state"] == "failed"
    after = metrics.finished_counts(client.orchestrator.store, ["default", "bulk"])
    # Two succeeded and one dead-lettered, all of the default class.
    assert after == {"default": before["default"] + 3, "bulk": before["bulk"]}
    # A sample ten seconds old (the newer one a second old, so upkeep leaves it be): the
    # rate is what finished since, over those ten seconds.
    now = time.time()
    store = client.orchestrator.store
    store.redis.hset(
        store.keys.outstanding,
        "sample:default",
        f"{now - 10} {before['default']} {now - 1} {before['default']}",
    )
    rate = admission._finished_per_s("default")
    assert rate == pytest.approx(3 / 10, rel=0.05)
