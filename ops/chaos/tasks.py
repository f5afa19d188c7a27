"""Tasks for the chaos run: each applies one side effect through an idempotent ledger,
the way a real task calls a payment or stock service with ``ctx.idempotency_key``."""

from __future__ import annotations

import os
import time

from config.redis_client import connect
from config.settings import get_settings
from workers import StepContext, task

LEDGER = "chaos:ledger"  # idempotency key -> the attempt whose effect was applied
CALLS = "chaos:calls"  # every call, including those of attempts that were killed


@task(name="chaos.effect")
def effect(ctx: StepContext, work_s: float = 0.05) -> bool:
    time.sleep(work_s)
    # treadle's own client: it follows a Sentinel failover and rides out a restart.
    with connect(os.environ["TREADLE_REDIS_URL"], get_settings()) as client:
        client.rpush(CALLS, ctx.idempotency_key)
        # The service applies a key's effect once, however often it is asked.
        return bool(client.hsetnx(LEDGER, ctx.idempotency_key, ctx.attempt))
