"""The queue topology: one queue per priority class, the orchestrator's, dead letters."""

from __future__ import annotations

from kombu import Exchange, Queue

from config.topology import PRIORITY_ORDER, PriorityClass

ORCHESTRATOR_QUEUE = "orchestrator"
DEAD_LETTER_QUEUE = "dead_letter"

EXCHANGE_NAME = "treadle"
_EXCHANGE = Exchange(EXCHANGE_NAME, type="direct", durable=True)


def queue_for(klass: PriorityClass | str) -> str:
    """The queue a step of this class is routed to (and its pool consumes)."""
    return PriorityClass(klass).value


def declare_queues() -> tuple[Queue, ...]:
    names = [queue_for(k) for k in PRIORITY_ORDER] + [ORCHESTRATOR_QUEUE, DEAD_LETTER_QUEUE]
    return tuple(Queue(name, _EXCHANGE, routing_key=name, durable=True) for name in names)
