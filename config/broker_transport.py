"""kombu's Redis transport (and its Sentinel variant) with one fix: a worker survives
losing its Redis connection.

When the broker connection drops, Celery 5.7 collects the connection (which detaches its
transport) and then closes it; closing the channel tries to put back the messages it
delivered, needs a new connection pool for that, and builds it from the detached
transport: ``AttributeError: 'NoneType' object has no attribute 'hostname'``. That is not
a connection error, so Celery calls it unrecoverable and the worker exits on the first
Redis restart that finds it holding messages (compare celery#10205, celery#10302).

Here the channel reports the detached transport as the connection error it is; Celery
then reconnects as usual (through Sentinel: to whichever server is primary by then). The
messages it could not put back stay in kombu's ``unacked`` hash, where the recovery sweep
finds them (``orchestrator.stranded``).

It also lets a message jump its queue: one published with the ``treadle_front`` header
goes to the consuming end (kombu LPUSHes and workers BRPOP from the right). treadle uses
it for a step that waited for a shared limit and has just been woken: it was at the front
of its queue when it was refused, and behind a flood of fresh messages its token or
permit would go unused (a refilled bucket overflows while it waits in line).

It remembers delivered messages without a transaction around the two writes (``QoS``).

And it keeps the binding table of treadle's exchange for a moment: kombu reads it from
Redis (SMEMBERS) before every publish to a named exchange, a round trip per message.
treadle's queues and their bindings are declared at start and never change (remote
control's reply exchange, whose bindings come and go with its callers, is read as usual).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

from config.queues import EXCHANGE_NAME
from config.sentinel_connection import PrimaryConnection

FRONT_OF_QUEUE_HEADER = "treadle_front"
BINDINGS_KEPT_S = 10.0


def to_front(signature: Mapping[str, Any]) -> dict[str, Any]:
    """The signature (as a dict), published at the front of its queue."""
    options = dict(signature.get("options") or {})
    options["headers"] = {**(options.get("headers") or {}), FRONT_OF_QUEUE_HEADER: True}
    return {**signature, "options": options}


def in_line(signature: Mapping[str, Any]) -> dict[str, Any]:
    """The signature (as a dict), published at the back of its queue as usual."""
    options = dict(signature.get("options") or {})
    headers = {
        k: v for k, v in (options.get("headers") or {}).items() if k != FRONT_OF_QUEUE_HEADER
    }
    options["headers"] = headers
    return {**signature, "options": options}


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    """kombu's bookkeeping of delivered messages, without MULTI and EXEC around it.

    kombu wraps the two writes that remember a delivered message (and the two that forget
    it) in a transaction: four commands where two do. Nothing reads the pair in between,
    and the reader that restores lost messages (``restore_visible``) already copes with a
    tag in the index whose message is gone."""

    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        if pipe:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as acquired:
                yield acquired.pipeline(transaction=False)


class _TreadleChannel:
    """Mixed in before kombu's Redis or Sentinel channel."""

    connection: Any
    _bindings: dict[str, tuple[float, Any]]

    def get_table(self, exchange: str) -> Any:
        if exchange != EXCHANGE_NAME:
            return super().get_table(exchange)  # type: ignore[misc]
        kept = getattr(self, "_bindings", None)
        if kept is None:
            kept = self._bindings = {}
        now = time.monotonic()
        hit = kept.get(exchange)
        if hit is not None and now - hit[0] < BINDINGS_KEPT_S:
            return hit[1]
        table = super().get_table(exchange)  # type: ignore[misc]
        kept[exchange] = (now, table)
        return table

    def _queue_bind(self, exchange: str, *args: Any, **kwargs: Any) -> Any:
        getattr(self, "_bindings", {}).pop(exchange, None)
        return super()._queue_bind(exchange, *args, **kwargs)  # type: ignore[misc]

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection was closed")
        return super()._connparams(asynchronous)  # type: ignore[misc]

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if not (message.get("headers") or {}).get(FRONT_OF_QUEUE_HEADER) or kwargs.get(
            "_publish_batch"
        ):
            return super()._put(queue, message, **kwargs)  # type: ignore[misc,no-any-return]
        channel: Any = self
        key = channel._q_for_pri(queue, channel._get_message_priority(message, reverse=False))
        with channel.conn_or_acquire() as client:
            client.rpush(key, dumps(message))
        return None


class Channel(_TreadleChannel, kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS


class SentinelChannel(_TreadleChannel, kombu_redis.SentinelChannel):  # type: ignore[misc]
    QoS = QoS
    connection_class = PrimaryConnection


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel
