"""Tickets: a copy of the message that runs each step, kept while its workflow runs.

kombu's Redis transport takes a message off its queue (BRPOP) before it records it as
unacknowledged. If the connection breaks in between — Redis restarting, a network blip,
the worker SIGKILLed — the message is gone, and with it the rest of its chain or chord,
which travels inside it; Celery cannot tell. So treadle keeps each step message it
publishes, and recovery (``orchestrator.orphans``) can publish exactly that message again:
same task id, same chain, same chord. A second copy is harmless (a step runs once).

Copies are taken in Celery's ``before_task_publish`` signal: by the worker for the links
it publishes, and inside ``capture()`` by whoever dispatches a workflow. ``capture()``
collects them and writes them in one round trip when its block ends, before the messages
of a publish batch (``orchestrator.dispatch.publishing``) leave.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from celery import Celery
from celery.app.amqp import task_message
from celery.signals import before_task_publish

from orchestrator import bundles
from orchestrator.store import StateStore

log = logging.getLogger("treadle.tickets")

# Where the join of a fan-out keeps its ticket ("/" is not allowed in step ids).
JOIN_SUFFIX = "/join"
# The task that ends a fan-out (workers.fan_out), args (workflow id, fan-out step, items).
JOIN_TASK = "treadle.join"

# A message re-issued for a step that already succeeded: continue its chain or chord as
# if it had just run (see StepRuntime), instead of stopping there as a duplicate does.
KEEP_GOING_HEADER = "treadle_keep_going"

_local = threading.local()
_lock = threading.Lock()
_default_store: Callable[[], StateStore] | None = None
_connected = False


def step_of(body: Any) -> tuple[str, str] | None:
    """(workflow id, step id) if ``body`` (Celery protocol 2) is a step message."""
    if not isinstance(body, (list, tuple)) or not body:
        return None
    args = body[0]
    if isinstance(args, (list, tuple)) and len(args) == 2 and all(isinstance(a, str) for a in args):
        return str(args[0]), str(args[1])
    return None


def key_of(body: Any) -> tuple[str, str] | None:
    """(workflow id, ticket key): a step's id, or for the join of fan-out P ``P/join``."""
    step = step_of(body)
    if step is not None:
        return step
    args = body[0] if isinstance(body, (list, tuple)) and body else None
    if (
        isinstance(args, (list, tuple))
        and len(args) == 3
        and all(isinstance(a, str) for a in args[:2])
        and isinstance(args[2], int)
    ):
        return str(args[0]), f"{args[1]}{JOIN_SUFFIX}"
    return None


def keys_of(body: Any) -> list[tuple[str, str]]:
    """Every (workflow id, ticket key) a message runs: its step's, or each step of a
    bundle (``orchestrator.bundles``), or its join's."""
    first = key_of(body)
    if first is None:
        return []
    kwargs = body[1] if len(body) > 1 else None
    return [first, *((first[0], s) for s in bundles.others_in(kwargs) or [])]


def _body_of(payload: Mapping[str, Any]) -> Any:
    body = payload["body"]
    if payload["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return json.loads(body)


def key_of_payload(payload: Mapping[str, Any]) -> tuple[str, str] | None:
    """The same for a message as kombu stores it in Redis (a queue or ``unacked``); a
    bundle's first step."""
    try:
        return key_of(_body_of(payload))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def keys_of_payload(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``keys_of`` for a message as kombu stores it in Redis."""
    try:
        return keys_of(_body_of(payload))
    except (KeyError, TypeError, ValueError, AttributeError):
        return []


def use_by_default(store: Callable[[], StateStore]) -> None:
    """Keep a ticket of every step message this process publishes (worker processes)."""
    global _default_store
    _default_store = store
    _connect()


@contextlib.contextmanager
def capture(store: StateStore) -> Iterator[None]:
    """Keep tickets of the step messages published in this block (dispatching), written
    together when it ends without an error."""
    _connect()
    previous = getattr(_local, "capture", None)
    kept: dict[str, dict[str, str]] = {}
    _local.capture = (store, kept)
    try:
        yield
        if kept:
            store.keep_tickets(kept)
    finally:
        _local.capture = previous


def reissue(app: Celery, ticket: Mapping[str, Any], keep_going: bool = False) -> None:
    """Publish a kept message again."""
    headers = dict(ticket["headers"])
    if keep_going:
        headers[KEEP_GOING_HEADER] = True
    message = task_message(headers, dict(ticket["properties"]), tuple(ticket["body"]), None)
    with app.producer_or_acquire() as producer:
        app.amqp.send_task_message(
            producer,
            headers["task"],
            message,
            # Routed through its queue's declaration, as Celery does for a new message.
            queue=ticket["routing_key"],
            exchange=ticket["exchange"] or None,
            routing_key=ticket["routing_key"],
            retry=True,
            retry_policy=app.conf.task_publish_retry_policy,
        )


def _connect() -> None:
    global _connected
    with _lock:
        if not _connected:
            before_task_publish.connect(_keep, weak=False)
            _connected = True


def _keep(
    body: Any = None,
    exchange: Any = None,
    routing_key: str | None = None,
    headers: Mapping[str, Any] | None = None,
    properties: Mapping[str, Any] | None = None,
    **_: Any,
) -> None:
    steps = keys_of(body)
    if not steps or not headers or headers.get(KEEP_GOING_HEADER):
        return
    captured = getattr(_local, "capture", None)
    store = captured[0] if captured is not None else None
    if store is None and _default_store is not None:
        store = _default_store()
    if store is None:
        return
    ticket = {
        "headers": dict(headers),
        "properties": dict(properties or {}),
        "body": body,
        "exchange": getattr(exchange, "name", exchange) or "",
        "routing_key": routing_key or "",
    }
    # Each step of a bundle keeps the bundle's message: a lost bundle is published again
    # whole, whichever of its steps recovery finds first (the others then find it there).
    text = json.dumps(ticket)
    if captured is not None:
        held = captured[1].setdefault(steps[0][0], {})
        for _workflow, step_id in steps:
            held[step_id] = text
        return
    try:
        if len(steps) == 1:
            store.keep_ticket(steps[0][0], steps[0][1], text)
        else:
            store.keep_tickets({steps[0][0]: {step_id: text for _workflow, step_id in steps}})
    except Exception:  # publishing goes on; only a later loss would go unrepaired
        log.exception("could not keep the message of workflow %s step %s", *steps[0])
