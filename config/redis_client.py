"""treadle's Redis clients: one place that says how they connect and ride out outages.

Where they connect to (a server, TLS, the primary Sentinel names) is the endpoint's
business (``config.redis_endpoint``); this module adds the timeouts and the retry policy.

A Redis restart or failover drops every connection for a moment. redis-py's own retry
(capped exponential backoff with jitter) reconnects and repeats the command for up to
``redis_retry_s``; a repeated state transition is recognised by the store (see
``orchestrator/lua/transition.lua``), so a command that ran but whose reply was lost is
not applied twice.
"""

from __future__ import annotations

import math
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from config.redis_endpoint import RedisEndpoint
from config.settings import Settings

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
HEALTH_CHECK_INTERVAL_S = 30
SOCKET_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0


def retry_attempts(window_s: float) -> int:
    """Retries that span about ``window_s`` seconds of backoff (the first few are short)."""
    return 0 if window_s <= 0 else math.ceil(window_s / BACKOFF_CAP_S) + 5


def retry_options(window_s: float) -> dict[str, Any]:
    """redis-py connection options that retry a command through a lost connection for
    about ``window_s`` seconds (for treadle's clients and Celery's result backend)."""
    return {
        "retry": Retry(
            ExponentialWithJitterBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S),
            retry_attempts(window_s),
        ),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }


def connect(url: str, settings: Settings, retry_s: float | None = None) -> redis.Redis:
    """A client that retries through a lost connection for ``settings.redis_retry_s``
    (or ``retry_s``: 0 for callers that repeat their work on a timer anyway)."""
    window = settings.redis_retry_s if retry_s is None else retry_s
    return RedisEndpoint.of(url, settings).client(
        **retry_options(window),
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
    )


def answers(url: str, settings: Settings, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Ping ``url`` once, without retrying: raises redis.ConnectionError/TimeoutError
    (an AuthenticationError or a failed TLS handshake is a ConnectionError too)."""
    with RedisEndpoint.of(url, settings).client(
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialWithJitterBackoff(), 0),
    ) as client:
        client.ping()
