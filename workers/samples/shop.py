"""Order fulfilment: reserve stock, authorise the payment, then label and notify at once.

reserve_inventory -> authorize_payment -> (create_label || notify); ``release_inventory``
and ``refund_payment`` undo the first two. Identifiers are derived from the step's
idempotency key, so a retried attempt talks about the same reservation or payment.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from orchestrator.errors import Permanent
from workers.context import StepContext
from workers.registry import task

# Unit prices in cents; unknown SKUs get a stable price derived from their name.
PRICES_CENTS = {"A-1": 1_999, "B-2": 4_950, "C-3": 12_500}
CARRIERS = ("dhl", "ups", "dpd")
CHANNELS = ("email", "sms", "push")


def unit_price_cents(sku: str) -> int:
    known = PRICES_CENTS.get(sku)
    if known is not None:
        return known
    return 500 + int(hashlib.sha256(sku.encode()).hexdigest(), 16) % 9_500


def _ref(prefix: str, key: str) -> str:
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _work(seconds: float) -> None:
    time.sleep(max(0.0, seconds))


def _by_kind(ctx: StepContext, kind: str) -> dict[str, Any] | None:
    """The one dependency result of ``kind`` (None when there is none)."""
    found = [r for r in ctx.results.values() if isinstance(r, dict) and r.get("kind") == kind]
    if len(found) > 1:
        raise Permanent(f"step {ctx.step_id!r} depends on {len(found)} {kind} results")
    return found[0] if found else None


def _need(ctx: StepContext, kind: str) -> dict[str, Any]:
    found = _by_kind(ctx, kind)
    if found is None:
        raise Permanent(f"step {ctx.step_id!r} needs a {kind} result among its dependencies")
    return found


@task(name="shop.reserve_inventory")
def reserve_inventory(
    ctx: StepContext, sku: str, quantity: int = 1, work_s: float = 0.05
) -> dict[str, Any]:
    """Hold ``quantity`` units of ``sku`` for the order in ``params.order_id``."""
    if quantity < 1:
        raise Permanent(f"quantity must be at least 1, not {quantity}")
    _work(work_s)
    price = unit_price_cents(sku)
    return {
        "kind": "reservation",
        "reservation_id": _ref("res", ctx.idempotency_key),
        "order_id": ctx.params.get("order_id"),
        "sku": sku,
        "quantity": quantity,
        "unit_price_cents": price,
        "amount_cents": price * quantity,
        "idempotency_key": ctx.idempotency_key,
    }


@task(name="shop.authorize_payment")
def authorize_payment(
    ctx: StepContext,
    amount_cents: int | None = None,
    currency: str | None = None,
    work_s: float = 0.05,
) -> dict[str, Any]:
    """Authorise the reserved amount (or ``amount_cents``) with the payment provider."""
    reservation = _need(ctx, "reservation")
    amount = reservation["amount_cents"] if amount_cents is None else amount_cents
    if amount <= 0:
        raise Permanent(f"cannot authorise a payment of {amount} cents")
    _work(work_s)
    return {
        "kind": "payment",
        "payment_id": _ref("pay", ctx.idempotency_key),
        "reservation_id": reservation["reservation_id"],
        "order_id": reservation["order_id"],
        "sku": reservation["sku"],
        "quantity": reservation["quantity"],
        "amount_cents": amount,
        "currency": currency or str(ctx.params.get("currency", "EUR")),
        "idempotency_key": ctx.idempotency_key,
    }


@task(name="shop.create_label")
def create_label(ctx: StepContext, carrier: str = "dhl", work_s: float = 0.05) -> dict[str, Any]:
    """Buy a shipping label for the paid order."""
    if carrier not in CARRIERS:
        raise Permanent(f"unknown carrier {carrier!r}; known: {', '.join(CARRIERS)}")
    payment = _need(ctx, "payment")
    _work(work_s)
    return {
        "kind": "label",
        "tracking_number": _ref(carrier.upper(), ctx.idempotency_key),
        "carrier": carrier,
        "order_id": payment["order_id"],
        "payment_id": payment["payment_id"],
        "parcel": {"sku": payment["sku"], "quantity": payment["quantity"]},
        "idempotency_key": ctx.idempotency_key,
    }


@task(name="shop.notify")
def notify(ctx: StepContext, channel: str = "email", work_s: float = 0.02) -> dict[str, Any]:
    """Tell the customer in ``params.customer`` that the order is paid."""
    if channel not in CHANNELS:
        raise Permanent(f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}")
    payment = _need(ctx, "payment")
    _work(work_s)
    amount = f"{payment['amount_cents'] // 100}.{payment['amount_cents'] % 100:02d}"
    return {
        "kind": "notification",
        "channel": channel,
        "to": ctx.params.get("customer"),
        "order_id": payment["order_id"],
        "payment_id": payment["payment_id"],
        "message": f"order {payment['order_id']} paid: {amount} {payment['currency']}",
        "idempotency_key": ctx.idempotency_key,
    }


@task(name="shop.release_inventory")
def release_inventory(
    ctx: StepContext, reservation_id: str | None = None, work_s: float = 0.02
) -> dict[str, Any]:
    """Compensation of reserve_inventory: give the held units back (a no-op if none)."""
    if reservation_id is None:
        reservation = _by_kind(ctx, "reservation")
        reservation_id = reservation["reservation_id"] if reservation else None
    if reservation_id is not None:
        _work(work_s)
    return {
        "kind": "release",
        "reservation_id": reservation_id,
        "released": reservation_id is not None,
        "idempotency_key": ctx.idempotency_key,
    }


@task(name="shop.refund_payment")
def refund_payment(
    ctx: StepContext, payment_id: str | None = None, work_s: float = 0.02
) -> dict[str, Any]:
    """Compensation of authorize_payment: void the authorisation (a no-op if none)."""
    amount_cents = 0
    if payment_id is None:
        payment = _by_kind(ctx, "payment")
        if payment is not None:
            payment_id, amount_cents = payment["payment_id"], payment["amount_cents"]
    if payment_id is not None:
        _work(work_s)
    return {
        "kind": "refund",
        "payment_id": payment_id,
        "refunded": payment_id is not None,
        "amount_cents": amount_cents,
        "idempotency_key": ctx.idempotency_key,
    }
