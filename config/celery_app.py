"""The Celery app factory. Nothing creates an app at import time."""

from __future__ import annotations

from typing import Any

from celery import Celery

from config.queues import declare_queues, queue_for
from config.redis_client import BACKOFF_BASE_S, BACKOFF_CAP_S, retry_attempts
from config.redis_endpoint import RedisEndpoint
from config.redis_server import discover_running
from config.settings import Settings
from config.topology import PriorityClass
from orchestrator.errors import Unreachable


def resolve_redis_url(settings: Settings) -> str:
    """TREADLE_REDIS_URL, else the embedded Redis that `treadle up` (or a test) started."""
    if settings.redis_url:
        return settings.redis_url
    found = discover_running(settings.home)
    if found is None:
        raise Unreachable(
            "no Redis to talk to: set TREADLE_REDIS_URL, or start the embedded stack with "
            "`treadle up` in this directory"
        )
    return found


def celery_config(settings: Settings, redis_url: str) -> dict[str, Any]:
    """The explicit mapping from treadle's settings to Celery's."""
    endpoint = RedisEndpoint.of(redis_url, settings)
    transport = {
        # Longer than any step may run (checked in Settings), so a running step's message
        # is never handed to a second worker while the first still holds it.
        "visibility_timeout": settings.visibility_timeout_s,
        **endpoint.transport_options(),
    }
    retries = retry_attempts(settings.redis_retry_s)
    return {
        **endpoint.celery_options(),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "visibility_timeout": settings.visibility_timeout_s,
        "result_expires": settings.result_expires_s,
        "task_queues": declare_queues(),
        "task_default_queue": queue_for(PriorityClass.default),
        "task_default_exchange": "treadle",
        "task_default_routing_key": queue_for(PriorityClass.default),
        "task_create_missing_queues": False,
        "task_track_started": False,
        "result_extended": True,
        # Flower turns task events on in the workers it watches (its enable_events); no
        # "task-sent" event: treadle records when each step was queued in its own store.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": False,
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child or None,
        "broker_connection_retry_on_startup": True,
        # Through a Redis restart or failover: workers reconnect for as long as it takes,
        # publishing and result writes retry for redis_retry_s, and steps that are running
        # keep running (their records go to the state store, which retries too).
        "broker_connection_max_retries": None,
        "task_publish_retry_policy": {
            "max_retries": retries,
            "interval_start": 0,
            "interval_step": BACKOFF_BASE_S * 4,
            "interval_max": BACKOFF_CAP_S,
        },
        "result_backend_always_retry": True,
        "result_backend_max_retries": retries,
        "result_backend_base_sleep_between_retries_ms": int(BACKOFF_BASE_S * 1000),
        "result_backend_max_sleep_between_retries_ms": int(BACKOFF_CAP_S * 1000),
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "treadle_redis_retry_s": settings.redis_retry_s,  # read by config.result_backend
        # Read by whoever publishes steps (orchestrator.dispatch.publishing).
        "treadle_bundle_target_s": settings.bundle_target_s,
        "treadle_bundle_max": settings.bundle_max,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }


def make_app(settings: Settings, redis_url: str | None = None, *, name: str = "treadle") -> Celery:
    url = redis_url or resolve_redis_url(settings)
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings, url))
    return app
