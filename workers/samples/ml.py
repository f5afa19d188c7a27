"""ML pipeline: ingest a data set, train one model per hyper-parameter set in parallel,
then evaluate every trained model and keep the best.

Training is simulated: a model's score is :func:`pseudo_score` of its hyper-parameters,
a smooth deterministic surface with its peak at ``learning_rate=0.1, depth=6``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from typing import Any

from orchestrator.errors import Permanent
from workers.context import StepContext
from workers.registry import task

MAX_ROWS = 100_000


def _work(seconds: float) -> None:
    time.sleep(max(0.0, seconds))


def _results_of_kind(ctx: StepContext, kind: str) -> dict[str, dict[str, Any]]:
    """The dependency results of ``kind``, by step id; a fan-out's joined list counts
    item by item (``train[2]``)."""
    found: dict[str, dict[str, Any]] = {}
    for step_id, result in ctx.results.items():
        values = enumerate(result) if isinstance(result, list) else [(None, result)]
        for index, value in values:
            if isinstance(value, dict) and value.get("kind") == kind:
                found[step_id if index is None else f"{step_id}[{index}]"] = value
    return found


def pseudo_score(learning_rate: float, depth: int, rows: int) -> float:
    """Validation accuracy the simulated model reaches; in (0, 1), higher is better."""
    lr_penalty = 0.08 * (math.log10(learning_rate) + 1.0) ** 2  # best at 0.1
    depth_penalty = 0.006 * (depth - 6) ** 2  # best at 6
    data_bonus = 0.05 * (1.0 - 1.0 / math.sqrt(max(rows, 1)))  # more data helps a little
    return round(max(0.01, min(0.99, 0.9 - lr_penalty - depth_penalty + data_bonus)), 6)


@task(name="ml.ingest")
def ingest(ctx: StepContext, rows: int = 200, work_s: float = 0.05) -> dict[str, Any]:
    """Load ``rows`` rows (generated from ``params.seed``) and describe them."""
    if not 1 <= rows <= MAX_ROWS:
        raise Permanent(f"rows must be between 1 and {MAX_ROWS}, not {rows}")
    seed = int(ctx.params.get("seed", 7))
    rng = random.Random(seed)
    data = [[round(rng.gauss(0.0, 1.0), 4) for _ in range(4)] for _ in range(rows)]
    labels = [int(sum(row) > 0) for row in data]
    _work(work_s)
    digest = hashlib.sha256(json.dumps([data, labels]).encode()).hexdigest()
    return {
        "kind": "dataset",
        "dataset": str(ctx.params.get("dataset", "synthetic")),
        "rows": rows,
        "features": 4,
        "positive_share": round(sum(labels) / rows, 4),
        "seed": seed,
        "fingerprint": digest[:16],
    }


@task(name="ml.train")
def train(
    ctx: StepContext, learning_rate: float, depth: int, work_s: float = 0.1
) -> dict[str, Any]:
    """Train one model on the ingested data set with the given hyper-parameters."""
    if not 0 < learning_rate <= 1:
        raise Permanent(f"learning_rate must be in (0, 1], not {learning_rate}")
    if not 1 <= depth <= 32:
        raise Permanent(f"depth must be between 1 and 32, not {depth}")
    datasets = list(_results_of_kind(ctx, "dataset").values())
    if len(datasets) != 1:
        raise Permanent(f"step {ctx.step_id!r} needs exactly one dataset result")
    dataset = datasets[0]
    _work(work_s)
    model_key = f"{dataset['fingerprint']}:{learning_rate}:{depth}"
    return {
        "kind": "model",
        "model_id": "model-" + hashlib.sha256(model_key.encode()).hexdigest()[:12],
        "learning_rate": learning_rate,
        "depth": depth,
        "dataset": dataset["fingerprint"],
        "score": pseudo_score(learning_rate, depth, dataset["rows"]),
    }


@task(name="ml.grid")
def grid(learning_rates: list[float], depths: list[int]) -> list[dict[str, Any]]:
    """Every combination of the hyper-parameters: the items of a training fan-out."""
    return [{"learning_rate": lr, "depth": d} for lr in learning_rates for d in depths]


@task(name="ml.train_each")
def train_each(ctx: StepContext, item: dict[str, Any], work_s: float = 0.1) -> dict[str, Any]:
    """One item of a ``for_each`` fan-out over :func:`grid`: train with its set."""
    return train(ctx, learning_rate=item["learning_rate"], depth=item["depth"], work_s=work_s)


@task(name="ml.evaluate")
def evaluate(ctx: StepContext, min_score: float = 0.0, work_s: float = 0.02) -> dict[str, Any]:
    """Rank every trained model this step depends on; fail if even the best is too weak."""
    models = _results_of_kind(ctx, "model")
    if not models:
        raise Permanent(f"step {ctx.step_id!r} depends on no train step")
    _work(work_s)
    # Highest score first; ties go to the alphabetically first step id.
    ranking = sorted(models, key=lambda step_id: (-models[step_id]["score"], step_id))
    best_step = ranking[0]
    best = models[best_step]
    if best["score"] < min_score:
        raise Permanent(f"best score {best['score']} is below min_score {min_score}")
    return {
        "kind": "evaluation",
        "best_step": best_step,
        "best_model_id": best["model_id"],
        "learning_rate": best["learning_rate"],
        "depth": best["depth"],
        "score": best["score"],
        "candidates": len(models),
        "ranking": ranking,
    }
