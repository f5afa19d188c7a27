"""The sample workflows and their task modules: every spec is valid and runnable, both
spec forms of a scenario describe the same graph, and the tasks pass data along.

Pure logic: no Redis, no Celery. Tasks are called directly with hand-built contexts, and
whole workflows are run in-process in dependency order with their sleeps set to zero.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import pytest
import yaml

import config
import workers.builtins  # noqa: F401 - registers the treadle.* built-ins
from config.topology import load_topology
from orchestrator.errors import Permanent
from orchestrator.model import Workflow, WorkflowSpec, normalise
from workers.context import StepContext
from workers.registry import REGISTRY
from workers.samples import compliance, images, ml, shop

WORKFLOWS = Path(shop.__file__).parent / "workflows"
SCENARIOS = ("order-fulfillment", "ml-pipeline", "compliance-report", "image-processing")
# Samples with a run-time fan-out: checked as specs, run end to end only (tests/test_e2e_*).
FAN_OUT_SCENARIOS = ("ml-sweep",)
FILES = sorted(p.name for p in WORKFLOWS.iterdir() if p.suffix in (".yaml", ".json"))


def load(name: str) -> Workflow:
    raw = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    return normalise(WorkflowSpec.model_validate(raw))


def ctx(
    step_id: str = "step",
    *,
    results: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    attempt: int = 1,
    workflow_id: str = "wf-1",
) -> StepContext:
    return StepContext(
        workflow_id=workflow_id,
        step_id=step_id,
        task="sample",
        attempt=attempt,
        params=dict(params or {}),
        results=dict(results or {}),
    )


def run(workflow: Workflow, workflow_id: str = "wf-run") -> dict[str, Any]:
    """Run every step in dependency order, in this process, without the sleeps.

    Results cross a JSON round trip, as they would between workers.
    """
    graph = {step.id: set(step.after) for step in workflow.steps}
    results: dict[str, Any] = {}
    for step_id in TopologicalSorter(graph).static_order():
        step = workflow.step(step_id)
        definition = REGISTRY.get(step.task)
        assert definition is not None, step.task
        kwargs = definition.bind(step.args)
        if "work_s" in definition.args_model.model_fields:
            kwargs["work_s"] = 0.0
        if definition.wants_context:
            kwargs["ctx"] = StepContext(
                workflow_id=workflow_id,
                step_id=step.id,
                task=step.task,
                attempt=1,
                params=workflow.params,
                results={dep: results[dep] for dep in step.after},
                priority=workflow.step_priority(step).value,
            )
        results[step.id] = json.loads(json.dumps(definition.func(**kwargs)))
    return results


def comparable(step: Any) -> Any:
    """A normalised step without where it was written and in what order ``after`` is."""
    return dataclasses.replace(step, where="", after=tuple(sorted(step.after)))


# ---------------------------------------------------------------------------------------
# The spec files


def test_every_scenario_has_both_forms_and_json_is_shown() -> None:
    every = SCENARIOS + FAN_OUT_SCENARIOS
    expected = {f"{s}.yaml" for s in every} | {f"{s}-stages.yaml" for s in every}
    assert set(FILES) == expected | {"order-fulfillment.json"}


@pytest.mark.parametrize("name", FILES)
def test_sample_is_valid(name: str) -> None:
    workflow = load(name)
    topology = load_topology(Path(config.__file__).parent / "topology.yaml")
    ids = [step.id for step in workflow.steps]
    assert len(ids) == len(set(ids)), "duplicate step ids"
    seen: set[str] = set()
    for step in workflow.steps:
        assert step.task in REGISTRY, f"{step.where}.task: unknown task {step.task!r}"
        provided = ("item",) if step.for_each else ()
        assert REGISTRY.argument_problems(step.task, step.args, step.where, provided) == []
        if step.compensate is not None:
            assert step.compensate in REGISTRY, f"{step.where}.compensate: {step.compensate!r}"
        # Declaration order is a topological order: no unknown dependency, no cycle.
        assert set(step.after) <= seen, f"{step.where}.after: {step.after}"
        seen.add(step.id)
        definition = REGISTRY.get(step.task)
        assert definition is not None
        for resource in (*step.resources, *definition.resources):
            assert resource in topology.resources, f"{step.where}: resource {resource!r}"
    # Orders undo what they did (a saga); the other scenarios stop on a failure.
    expected = "compensate" if workflow.name == "order-fulfillment" else "stop"
    assert workflow.on_failure == expected


@pytest.mark.parametrize("name", FILES)
def test_sample_is_quick(name: str) -> None:
    """The simulated work of a whole workflow, run one step after another, stays short."""
    total = 0.0
    for step in load(name).steps:
        definition = REGISTRY.get(step.task)
        assert definition is not None
        item: dict[str, Any] = (
            {"item": {}} if step.for_each else {}
        )  # a fan-out's item comes at run time
        kwargs = definition.bind({**step.args, **item})
        total += float(kwargs.get("work_s", 0.0))
        if step.task == "treadle.sleep":
            total += float(kwargs["seconds"])
    assert 0 < total < 1.0


def test_priorities_suit_the_scenarios() -> None:
    expected = {
        "order-fulfillment": "critical",
        "compliance-report": "default",
        "ml-pipeline": "bulk",
        "ml-sweep": "bulk",
        "image-processing": "bulk",
    }
    for name in FILES:
        workflow = load(name)
        assert workflow.priority.value == expected[workflow.name], name


@pytest.mark.parametrize("scenario", SCENARIOS + FAN_OUT_SCENARIOS)
def test_stages_form_is_the_same_graph(scenario: str) -> None:
    steps_form = load(f"{scenario}.yaml")
    stages_form = load(f"{scenario}-stages.yaml")
    assert set(stages_form.edges()) == set(steps_form.edges())
    assert {s.id: comparable(s) for s in stages_form.steps} == {
        s.id: comparable(s) for s in steps_form.steps
    }
    assert dataclasses.replace(stages_form, steps=()) == dataclasses.replace(steps_form, steps=())


def test_order_json_is_the_same_graph_as_yaml() -> None:
    assert set(load("order-fulfillment.json").edges()) == set(
        load("order-fulfillment.yaml").edges()
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_both_forms_compute_the_same_results(scenario: str) -> None:
    assert run(load(f"{scenario}.yaml")) == run(load(f"{scenario}-stages.yaml"))


# ---------------------------------------------------------------------------------------
# Whole sample workflows, run in-process


def test_order_workflow_data_flow() -> None:
    results = run(load("order-fulfillment.yaml"), workflow_id="wf-order")
    reserve, pay = results["reserve"], results["pay"]
    assert reserve["amount_cents"] == 2 * shop.PRICES_CENTS["A-1"]
    assert pay["reservation_id"] == reserve["reservation_id"]
    assert pay["amount_cents"] == reserve["amount_cents"]
    assert results["label"]["payment_id"] == pay["payment_id"]
    assert results["notify"]["message"] == "order 42 paid: 39.98 EUR"
    assert results["notify"]["to"] == "ada@example.com"
    keys = {r["idempotency_key"] for r in results.values()}
    assert keys == {f"wf-order:{step}" for step in results}


def test_order_json_workflow_data_flow() -> None:
    results = run(load("order-fulfillment.json"))
    assert results["pay"]["currency"] == "USD"
    assert results["label"]["tracking_number"].startswith("UPS-")
    assert results["notify"]["message"] == "order 43 paid: 49.50 USD"


def test_ml_workflow_picks_the_best_model() -> None:
    results = run(load("ml-pipeline.yaml"))
    trains = {k: v for k, v in results.items() if k.startswith("train-")}
    best = max(trains, key=lambda k: trains[k]["score"])
    assert results["evaluate"]["best_step"] == best == "train-lr0.1-d6"
    assert results["evaluate"]["best_model_id"] == trains[best]["model_id"]
    assert results["evaluate"]["candidates"] == 4
    assert len({t["score"] for t in trains.values()}) == 4
    assert {t["dataset"] for t in trains.values()} == {results["ingest"]["fingerprint"]}


def test_compliance_workflow_report() -> None:
    results = run(load("compliance-report.yaml"))
    extracted, validated = results["extract"], results["validate"]
    transformed, report = results["transform"], results["report"]
    assert extracted["count"] == 24
    assert validated["count"] + len(validated["rejected"]) == 24
    assert validated["rejected"], "the sample data includes bad entries"
    assert transformed["checksum"] == compliance.rows_checksum(transformed["rows"])
    assert report["checksum"] == transformed["checksum"]
    assert report["rows"] == validated["count"]
    assert report["total_eur_cents"] == sum(r["amount_eur_cents"] for r in transformed["rows"])
    assert report["period"] == "2024-Q4"
    assert report["title"] == "ACME GmbH 2024-Q4 ledger report"


def test_image_workflow_summary() -> None:
    summary = run(load("image-processing.yaml"))["summary"]
    assert summary["images"] == ["beach.jpg", "cat.png", "eicar-test.gif"]
    assert summary["resized"] == summary["compressed"] == summary["scanned"] == 3
    assert summary["complete"] == summary["images"]
    assert summary["quarantine"] == ["eicar-test.gif"]
    assert summary["bytes_saved"] > 0


# ---------------------------------------------------------------------------------------
# shop


def test_reserve_is_stable_across_attempts_and_priced() -> None:
    first = shop.reserve_inventory(ctx("reserve", params={"order_id": 7}), sku="B-2", work_s=0)
    again = shop.reserve_inventory(
        ctx("reserve", params={"order_id": 7}, attempt=3), sku="B-2", work_s=0
    )
    other = shop.reserve_inventory(ctx("reserve", workflow_id="wf-2"), sku="B-2", work_s=0)
    assert first == again
    assert first["reservation_id"] != other["reservation_id"]
    assert first["order_id"] == 7
    assert first["amount_cents"] == shop.PRICES_CENTS["B-2"]
    assert first["idempotency_key"] == "wf-1:reserve"
    unknown = shop.unit_price_cents("Z-99")
    assert unknown == shop.unit_price_cents("Z-99")
    assert 500 <= unknown < 10_000
    with pytest.raises(Permanent):
        shop.reserve_inventory(ctx(), sku="A-1", quantity=0, work_s=0)


def _reservation() -> dict[str, Any]:
    return shop.reserve_inventory(
        ctx("reserve", params={"order_id": 9}), sku="A-1", quantity=3, work_s=0
    )


def test_pay_reads_the_reservation() -> None:
    reservation = _reservation()
    pay = shop.authorize_payment(ctx("pay", results={"reserve": reservation}), work_s=0)
    assert pay["reservation_id"] == reservation["reservation_id"]
    assert pay["amount_cents"] == 3 * 1_999
    assert pay["currency"] == "EUR"
    assert pay["order_id"] == 9
    assert pay["idempotency_key"] == "wf-1:pay"
    override = shop.authorize_payment(
        ctx("pay", results={"r": reservation}, params={"currency": "CHF"}),
        amount_cents=100,
        work_s=0,
    )
    assert (override["amount_cents"], override["currency"]) == (100, "CHF")
    with pytest.raises(Permanent):
        shop.authorize_payment(ctx("pay"), work_s=0)
    with pytest.raises(Permanent):
        shop.authorize_payment(ctx("pay", results={"r": reservation}), amount_cents=0, work_s=0)


def test_label_and_notify_read_the_payment() -> None:
    pay = shop.authorize_payment(ctx("pay", results={"reserve": _reservation()}), work_s=0)
    label = shop.create_label(ctx("label", results={"pay": pay}), carrier="dpd", work_s=0)
    assert label["payment_id"] == pay["payment_id"]
    assert label["tracking_number"].startswith("DPD-")
    assert label["parcel"] == {"sku": "A-1", "quantity": 3}
    note = shop.notify(
        ctx("notify", results={"pay": pay}, params={"customer": "x@example.com"}), work_s=0
    )
    assert note["message"] == "order 9 paid: 59.97 EUR"
    assert note["to"] == "x@example.com"
    with pytest.raises(Permanent):
        shop.create_label(ctx("label", results={"pay": pay}), carrier="pigeon", work_s=0)
    with pytest.raises(Permanent):
        shop.notify(ctx("notify", results={"pay": pay}), channel="fax", work_s=0)
    with pytest.raises(Permanent):
        shop.notify(ctx("notify"), work_s=0)


def test_compensations_undo_or_do_nothing() -> None:
    reservation = _reservation()
    pay = shop.authorize_payment(ctx("pay", results={"reserve": reservation}), work_s=0)
    release = shop.release_inventory(ctx("undo", results={"reserve": reservation}), work_s=0)
    assert release["released"] and release["reservation_id"] == reservation["reservation_id"]
    assert shop.release_inventory(ctx("undo"), reservation_id="res-1", work_s=0)["released"]
    assert not shop.release_inventory(ctx("undo"), work_s=0)["released"]
    refund = shop.refund_payment(ctx("undo", results={"pay": pay}), work_s=0)
    assert refund["refunded"] and refund["payment_id"] == pay["payment_id"]
    assert refund["amount_cents"] == pay["amount_cents"]
    assert not shop.refund_payment(ctx("undo"), work_s=0)["refunded"]


# ---------------------------------------------------------------------------------------
# ml


def test_ingest_is_deterministic_per_seed() -> None:
    a = ml.ingest(ctx(params={"seed": 1}), rows=50, work_s=0)
    b = ml.ingest(ctx(params={"seed": 1}), rows=50, work_s=0)
    c = ml.ingest(ctx(params={"seed": 2}), rows=50, work_s=0)
    assert a == b
    assert a["fingerprint"] != c["fingerprint"]
    assert a["rows"] == 50 and 0 < a["positive_share"] < 1
    with pytest.raises(Permanent):
        ml.ingest(ctx(), rows=0, work_s=0)


def test_train_scores_its_hyper_parameters() -> None:
    dataset = ml.ingest(ctx(), rows=100, work_s=0)
    model = ml.train(ctx("t", results={"ingest": dataset}), learning_rate=0.2, depth=5, work_s=0)
    assert model["score"] == ml.pseudo_score(0.2, 5, 100)
    assert model["dataset"] == dataset["fingerprint"]
    assert model["model_id"].startswith("model-")
    for lr, depth in ((0.0, 3), (1.5, 3), (0.1, 0), (0.1, 33)):
        with pytest.raises(Permanent):
            ml.train(ctx("t", results={"i": dataset}), learning_rate=lr, depth=depth, work_s=0)
    with pytest.raises(Permanent):
        ml.train(ctx("t"), learning_rate=0.1, depth=3, work_s=0)


def test_pseudo_score_peaks_at_the_known_optimum() -> None:
    best = ml.pseudo_score(0.1, 6, 1000)
    for lr, depth in ((0.01, 6), (0.5, 6), (0.1, 2), (0.1, 12), (0.05, 4)):
        assert ml.pseudo_score(lr, depth, 1000) < best
    assert ml.pseudo_score(0.1, 6, 10) < best  # less data, lower score
    assert 0 < ml.pseudo_score(1.0, 32, 1) < 1


def test_evaluate_picks_the_best_train_result() -> None:
    dataset = ml.ingest(ctx(), rows=100, work_s=0)
    grid = {"a": (0.3, 3), "b": (0.1, 6), "c": (0.01, 9)}
    results: dict[str, Any] = {
        step: ml.train(ctx(step, results={"i": dataset}), learning_rate=lr, depth=d, work_s=0)
        for step, (lr, d) in grid.items()
    }
    results["ingest"] = dataset  # a non-model result is ignored
    verdict = ml.evaluate(ctx("evaluate", results=results), work_s=0)
    assert verdict["best_step"] == "b"
    assert (verdict["learning_rate"], verdict["depth"]) == (0.1, 6)
    assert verdict["best_model_id"] == results["b"]["model_id"]
    assert verdict["candidates"] == 3
    assert verdict["ranking"][0] == "b"
    scores = [results[s]["score"] for s in verdict["ranking"]]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(Permanent):
        ml.evaluate(ctx("evaluate", results=results), min_score=0.999, work_s=0)
    with pytest.raises(Permanent):
        ml.evaluate(ctx("evaluate", results={"ingest": dataset}), work_s=0)


def test_evaluate_breaks_ties_by_step_id() -> None:
    model = {"kind": "model", "model_id": "m", "learning_rate": 0.1, "depth": 6, "score": 0.9}
    verdict = ml.evaluate(ctx(results={"z": model, "y": model}), work_s=0)
    assert verdict["best_step"] == "y"


# ---------------------------------------------------------------------------------------
# compliance


def _compliance_chain(records: int = 36) -> list[dict[str, Any]]:
    params = {"period": "2025-01", "seed": 3}
    out = [compliance.extract(ctx("e", params=params), records=records, work_s=0)]
    steps: list[Callable[..., dict[str, Any]]] = [
        compliance.validate,
        compliance.transform,
        compliance.report,
    ]
    for func in steps:
        out.append(func(ctx(func.__name__, results={"prev": out[-1]}, params=params), work_s=0))
    return out


def test_extract_is_deterministic_and_includes_bad_entries() -> None:
    extracted, validated, _, _ = _compliance_chain()
    assert extracted == _compliance_chain()[0]
    assert extracted["count"] == len(extracted["records"]) == 36
    assert extracted["period"] == "2025-01"
    bad = [
        r["id"]
        for r in extracted["records"]
        if r["amount_cents"] <= 0 or r["currency"] not in compliance.EUR_RATES_PPM
    ]
    assert [r["id"] for r in validated["rejected"]] == bad
    assert len(bad) == 9  # entries 5, 11, ... are negative; 3, 15, 27 in currency XXX
    assert validated["records"] == [r for r in extracted["records"] if r["id"] not in bad]
    with pytest.raises(Permanent):
        compliance.extract(ctx(), records=-1, work_s=0)


def test_transform_converts_to_eur_and_seals_the_rows() -> None:
    _, validated, transformed, _ = _compliance_chain()
    for record, row in zip(validated["records"], transformed["rows"], strict=True):
        rate = compliance.EUR_RATES_PPM[record["currency"]]
        assert row["id"] == record["id"]
        assert abs(row["amount_eur_cents"] - record["amount_cents"] * rate / 1e6) <= 0.5
    assert transformed["checksum"] == compliance.rows_checksum(transformed["rows"])
    assert transformed["rejected"] == len(validated["rejected"])


def test_report_totals_and_checks_the_checksum() -> None:
    _, validated, transformed, report = _compliance_chain()
    assert report["rows"] == validated["count"] == transformed["count"]
    assert report["checksum"] == transformed["checksum"]
    assert sum(report["by_account"].values()) == report["total_eur_cents"]
    assert report["total_eur_cents"] == sum(r["amount_eur_cents"] for r in transformed["rows"])
    assert set(report["by_account"]) <= set(compliance.ACCOUNTS)
    tampered = json.loads(json.dumps(transformed))
    tampered["rows"][0]["amount_eur_cents"] += 1
    with pytest.raises(Permanent, match="checksum"):
        compliance.report(ctx(results={"transform": tampered}), work_s=0)
    with pytest.raises(Permanent):
        compliance.transform(ctx(results={"extract": _compliance_chain()[0]}), work_s=0)


def test_checksum_ignores_key_order_but_not_values() -> None:
    rows = [{"a": 1, "b": 2}]
    assert compliance.rows_checksum(rows) == compliance.rows_checksum([{"b": 2, "a": 1}])
    assert compliance.rows_checksum(rows) != compliance.rows_checksum([{"a": 1, "b": 3}])


# ---------------------------------------------------------------------------------------
# images


def test_resize_keeps_the_aspect_and_never_upscales() -> None:
    resized = images.resize(ctx(params={"width": 400}), image="a.jpg", work_s=0)
    (ow, oh), (w, h) = resized["original"], resized["size"]
    assert (ow, oh) == images.original_size("a.jpg")
    assert w == 400 and h == oh * 400 // ow
    assert images.resize(ctx(), image="a.jpg", work_s=0)["size"][0] == 256
    assert images.resize(ctx(), image="a.jpg", width=8000, work_s=0)["size"][0] == ow
    with pytest.raises(Permanent):
        images.resize(ctx(), image="a.jpg", width=1, work_s=0)
    with pytest.raises(Permanent):
        images.resize(ctx(), image="../etc/passwd", work_s=0)


def test_compress_shrinks_more_at_lower_quality() -> None:
    high = images.compress(ctx(), image="a.jpg", quality=95, work_s=0)
    low = images.compress(ctx(params={"quality": 30}), image="a.jpg", work_s=0)
    assert low["quality"] == 30
    assert low["bytes_after"] < high["bytes_after"] < high["bytes_before"]
    assert high["bytes_before"] == images.original_bytes("a.jpg")
    with pytest.raises(Permanent):
        images.compress(ctx(), image="a.jpg", quality=0, work_s=0)


def test_scan_uses_the_scanner_resource_and_idempotency_key() -> None:
    definition = REGISTRY.get("images.scan")
    assert definition is not None
    assert definition.resources == ("scanner-api",)
    assert definition.retry is not None and definition.retry.max_attempts > 1
    clean = images.scan(ctx("scan.a"), image="a.jpg", work_s=0)
    retried = images.scan(ctx("scan.a", attempt=2), image="a.jpg", work_s=0)
    assert clean == retried
    assert clean["clean"] and clean["threat"] is None
    assert clean["idempotency_key"] == "wf-1:scan.a"
    infected = images.scan(ctx("scan.b"), image="EICAR.gif", work_s=0)
    assert not infected["clean"] and infected["scan_id"] != clean["scan_id"]


def test_summary_counts_what_was_done() -> None:
    results: dict[str, Any] = {}
    for name in ("a.jpg", "b.png"):
        results[f"resize.{name}"] = images.resize(ctx(), image=name, work_s=0)
        results[f"compress.{name}"] = images.compress(ctx(), image=name, work_s=0)
    results["scan.a"] = images.scan(ctx("scan.a"), image="a.jpg", work_s=0)
    results["scan.x"] = images.scan(ctx("scan.x"), image="eicar.png", work_s=0)
    summary = images.summarize(ctx(results=results), work_s=0)
    assert summary["images"] == ["a.jpg", "b.png", "eicar.png"]
    assert (summary["resized"], summary["compressed"], summary["scanned"]) == (2, 2, 2)
    assert summary["complete"] == ["a.jpg"]
    assert summary["quarantine"] == ["eicar.png"]
    saved = sum(
        r["bytes_before"] - r["bytes_after"] for k, r in results.items() if k.startswith("comp")
    )
    assert summary["bytes_saved"] == saved
    with pytest.raises(Permanent):
        images.summarize(ctx(), work_s=0)


def test_every_sample_task_is_registered_under_its_scenario() -> None:
    names = {
        n for n in REGISTRY.names() if n.split(".")[0] in {"shop", "ml", "compliance", "images"}
    }
    assert names == {
        "shop.reserve_inventory",
        "shop.authorize_payment",
        "shop.create_label",
        "shop.notify",
        "shop.release_inventory",
        "shop.refund_payment",
        "ml.ingest",
        "ml.train",
        "ml.grid",
        "ml.train_each",
        "ml.evaluate",
        "compliance.extract",
        "compliance.validate",
        "compliance.transform",
        "compliance.report",
        "images.resize",
        "images.compress",
        "images.scan",
        "images.summarize",
    }
