"""Messages that cannot be run go to the dead-letter queue, once, and are never retried.

Celery acknowledges or rejects such a message and only logs it (on Redis a rejected
message is deleted: there is no dead-letter exchange). Here each is also filed as a dead
letter of kind "message": a body that cannot be decoded (not JSON, a pickle, which the
JSON-only worker refuses), an unknown task name, or a step message of the wrong shape.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import task_rejected, task_unknown
from celery.worker.consumer import Consumer

from orchestrator.dead_letters import DeadLetters

log = logging.getLogger("treadle.poison")

_BODY_CHARS = 2000


def describe(message: Any, error: str) -> dict[str, Any]:
    """A dead-letter entry for a message nobody can run."""
    headers = dict(getattr(message, "headers", None) or {})
    info = dict(getattr(message, "delivery_info", None) or {})
    body = getattr(message, "body", b"")
    if isinstance(body, bytes):
        try:
            text = body.decode()
        except UnicodeDecodeError:
            text = "base64:" + base64.b64encode(body).decode()
    else:
        text = repr(body)
    return {
        "kind": "message",
        "workflow_id": None,
        "step_id": None,
        "task": headers.get("task"),
        "message_id": headers.get("id"),
        "queue": info.get("routing_key"),
        "content_type": getattr(message, "content_type", None),
        "error": error,
        "body": text[:_BODY_CHARS],
        "attempts": 0,
    }


def install(app: Celery, letters: Callable[[], DeadLetters]) -> None:
    """File undecodable, unknown and invalid messages as dead letters in this worker."""

    def file(message: Any, error: str) -> None:
        try:
            entry_id = letters().file(describe(message, error))
            log.error("message dead-lettered as %s: %s", entry_id, error)
        except Exception:  # the broker already dropped it; at least the log has it
            log.exception("could not file a dead letter for a message: %s", error)

    def on_rejected(message: Any = None, exc: Any = None, **_: Any) -> None:
        file(message, f"{type(exc).__name__}: {exc}" if exc else "not a task message")

    def on_unknown(message: Any = None, exc: Any = None, name: Any = None, **_: Any) -> None:
        file(message, f"unknown task {name!r}")

    task_rejected.connect(on_rejected, weak=False)
    task_unknown.connect(on_unknown, weak=False)

    class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
        def on_decode_error(self, message: Any, exc: Exception) -> None:
            file(message, f"cannot decode: {type(exc).__name__}: {exc}")
            super().on_decode_error(message, exc)

    app.conf.worker_consumer = DeadLetteringConsumer
