"""Compliance report: extract -> validate -> transform -> report, strictly in order.

Each step reads the output of the one before it. ``transform`` seals its rows with a
SHA-256 checksum that ``report`` verifies before totalling them, so the report can show
the rows it was built from were not changed on the way.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from typing import Any

from orchestrator.errors import Permanent
from workers.context import StepContext
from workers.registry import task

MAX_RECORDS = 10_000
ACCOUNTS = ("cash", "payables", "receivables", "revenue")
# Fixed conversion rates into EUR, in parts per million (integers keep sums exact).
EUR_RATES_PPM = {"EUR": 1_000_000, "USD": 920_000, "GBP": 1_170_000, "CHF": 1_040_000}


def _work(seconds: float) -> None:
    time.sleep(max(0.0, seconds))


def _need(ctx: StepContext, kind: str) -> dict[str, Any]:
    """The one dependency result of ``kind``."""
    found = [r for r in ctx.results.values() if isinstance(r, dict) and r.get("kind") == kind]
    if len(found) != 1:
        raise Permanent(f"step {ctx.step_id!r} needs exactly one {kind} result, got {len(found)}")
    return found[0]


def rows_checksum(rows: list[dict[str, Any]]) -> str:
    """SHA-256 of the rows as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(rows, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@task(name="compliance.extract")
def extract(
    ctx: StepContext, source: str = "ledger", records: int = 12, work_s: float = 0.05
) -> dict[str, Any]:
    """Pull ``records`` ledger entries for ``params.period`` (generated from ``params.seed``).

    About one entry in six is deliberately bad (a non-positive amount or an unknown
    currency) so that ``validate`` has something to reject.
    """
    if not 0 <= records <= MAX_RECORDS:
        raise Permanent(f"records must be between 0 and {MAX_RECORDS}, not {records}")
    rng = random.Random(f"{source}:{ctx.params.get('period', '')}:{ctx.params.get('seed', 0)}")
    entries = []
    for i in range(records):
        currency = rng.choice(sorted(EUR_RATES_PPM))
        amount = rng.randint(100, 500_000)
        if i % 6 == 5:
            amount = -amount
        if i % 6 == 3 and i % 4 == 3:
            currency = "XXX"
        entries.append(
            {
                "id": f"{source}-{i:05d}",
                "account": rng.choice(ACCOUNTS),
                "amount_cents": amount,
                "currency": currency,
            }
        )
    _work(work_s)
    return {
        "kind": "extract",
        "source": source,
        "period": ctx.params.get("period"),
        "count": len(entries),
        "records": entries,
    }


@task(name="compliance.validate")
def validate(ctx: StepContext, work_s: float = 0.05) -> dict[str, Any]:
    """Keep the entries with a positive amount in a known currency; list the rest."""
    extracted = _need(ctx, "extract")
    valid, rejected = [], []
    for record in extracted["records"]:
        if record["amount_cents"] <= 0:
            rejected.append({"id": record["id"], "reason": "non-positive amount"})
        elif record["currency"] not in EUR_RATES_PPM:
            rejected.append(
                {"id": record["id"], "reason": f"unknown currency {record['currency']}"}
            )
        else:
            valid.append(record)
    _work(work_s)
    return {
        "kind": "validated",
        "source": extracted["source"],
        "period": extracted["period"],
        "count": len(valid),
        "records": valid,
        "rejected": rejected,
    }


@task(name="compliance.transform")
def transform(ctx: StepContext, work_s: float = 0.05) -> dict[str, Any]:
    """Convert every valid entry to EUR cents (rounded half up) and seal the rows."""
    validated = _need(ctx, "validated")
    rows = [
        {
            "id": record["id"],
            "account": record["account"],
            "amount_eur_cents": (
                record["amount_cents"] * EUR_RATES_PPM[record["currency"]] + 500_000
            )
            // 1_000_000,
        }
        for record in validated["records"]
    ]
    _work(work_s)
    return {
        "kind": "transformed",
        "source": validated["source"],
        "period": validated["period"],
        "count": len(rows),
        "rows": rows,
        "rejected": len(validated["rejected"]),
        "checksum": rows_checksum(rows),
    }


@task(name="compliance.report")
def report(ctx: StepContext, work_s: float = 0.05) -> dict[str, Any]:
    """Check the rows against their checksum, then total them per account."""
    transformed = _need(ctx, "transformed")
    rows = transformed["rows"]
    if rows_checksum(rows) != transformed["checksum"]:
        raise Permanent("transformed rows do not match their checksum")
    by_account: dict[str, int] = {}
    for row in rows:
        by_account[row["account"]] = by_account.get(row["account"], 0) + row["amount_eur_cents"]
    _work(work_s)
    return {
        "kind": "report",
        "title": f"{ctx.params.get('entity', 'treadle')} {transformed['period']} ledger report",
        "period": transformed["period"],
        "source": transformed["source"],
        "rows": len(rows),
        "rejected": transformed["rejected"],
        "by_account": dict(sorted(by_account.items())),
        "total_eur_cents": sum(by_account.values()),
        "checksum": transformed["checksum"],
    }
