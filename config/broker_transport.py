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

It remembers delivered messages without a transaction around the two writes, and sends
those writes (and the two that forget a message when it is acknowledged) behind the
worker's event loop instead of waiting for them there (``QoS``, ``WriteBehind``).

And it keeps the binding table of treadle's exchange for a moment: kombu reads it from
Redis (SMEMBERS) before every publish to a named exchange, a round trip per message.
treadle's queues and their bindings are declared at start and never change (remote
control's reply exchange, whose bindings come and go with its callers, is read as usual).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.utils.json import dumps

from config.queues import EXCHANGE_NAME
from config.sentinel_connection import PrimaryConnection

FRONT_OF_QUEUE_HEADER = "treadle_front"
BINDINGS_KEPT_S = 10.0
# How long a requeue or a restore waits for the records written behind, and a closing
# channel (whose broker may be gone) before it gives up on them.
FLUSH_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 1.0

log = logging.getLogger("treadle.broker")


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


class WriteBehind:
    """Writes of one channel, sent in the order given by a thread of their own, as many to
    a round trip as have gathered meanwhile.

    kombu's event loop waits for each bookkeeping write (a round trip and, with
    ``appendfsync always``, an fsync), twice per message, while the pool processes wait for
    their next message; sent from here, they cost the loop nothing. No library does this:
    redis-py has no asynchronous pipeline for a synchronous client, and kombu none at all.
    """

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._changed = threading.Condition()
        self._pending: list[Callable[[Any], object]] = []
        self._submitted = 0
        self._written = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, write: Callable[[Any], object]) -> None:
        """Queue ``write(pipeline)``; done at once, and waited for, once closed."""
        with self._changed:
            if not self._closed:
                if self._thread is None:
                    # Started by the first message, in the process that consumes: a worker's
                    # pool processes are forked before, and never consume.
                    self._thread = threading.Thread(
                        target=self._run, name="treadle-write-behind", daemon=True
                    )
                    self._thread.start()
                self._pending.append(write)
                self._submitted += 1
                self._changed.notify_all()
                return
        with self._channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            write(pipe)
            pipe.execute()

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until what was submitted so far is written; False if it is not by then."""
        with self._changed:
            target = self._submitted
            return self._changed.wait_for(lambda: self._written >= target, timeout_s)

    def close(self) -> None:
        """Write what is queued (for a while at most), then stop the thread."""
        if not self.flush(CLOSE_TIMEOUT_S):
            log.warning(
                "broker unreachable: %d delivery records not written (recovery "
                "republishes their messages if they are lost)",
                self._submitted - self._written,
            )
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                batch, self._pending = self._pending, []
            self._write(batch)
            with self._changed:
                self._written += len(batch)
                self._changed.notify_all()

    def _write(self, batch: list[Callable[[Any], object]]) -> None:
        pause = 0.05
        while True:
            try:
                with self._channel.conn_or_acquire() as client:
                    pipe = client.pipeline(transaction=False)
                    for write in batch:
                        write(pipe)
                    pipe.execute()
                return
            except redis.RedisError as exc:
                with self._changed:
                    if self._closed:
                        return
                    log.warning("delivery records not written yet (%s): trying again", exc)
                    self._changed.wait(pause)
                pause = min(pause * 2, 2.0)


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    """kombu's bookkeeping of delivered messages, without MULTI and EXEC around it, and
    written behind the event loop.

    kombu wraps the two writes that remember a delivered message (and the two that forget
    it) in a transaction: four commands where two do. Nothing reads the pair in between,
    and the reader that restores lost messages (``restore_visible``) already copes with a
    tag in the index whose message is gone.

    Written behind (``WriteBehind``), a record can lag its message by a moment. A message
    acknowledged but not yet forgotten when its worker dies is delivered again after the
    visibility timeout and finds its step ended: a step runs once. One delivered but not
    yet remembered is lost with its worker, as one is today between BRPOP and the write
    that remembers it; the recovery sweep republishes it from its ticket
    (``orchestrator.orphans``). Everything that reads the records back for this channel
    (a requeue, a restore) waits for them first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.behind = WriteBehind(self.channel)

    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        if pipe:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as acquired:
                yield acquired.pipeline(transaction=False)

    def append(self, message: Any, delivery_tag: Any) -> None:
        delivery = message.delivery_info
        record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        index, unacked, at = self.unacked_index_key, self.unacked_key, time.time()

        def remember(pipe: Any) -> None:
            pipe.zadd(index, {delivery_tag: at})
            pipe.hset(unacked, delivery_tag, record)

        self.behind.submit(remember)
        kombu_virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        self.behind.submit(lambda pipe: self._remove_from_indices(delivery_tag, pipe))
        kombu_virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        self.behind.flush()
        super().reject(delivery_tag, requeue)

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        self.behind.flush()
        super().restore_by_tag(tag, client, leftmost)

    def restore_unacked(self, client: Any = None) -> Any:
        self.behind.flush()
        return super().restore_unacked(client)


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

    def close(self) -> None:
        # Before kombu's close, which drops the connection pools and then puts back what
        # was delivered and not acknowledged: from records that must be written by then.
        qos = getattr(self, "_qos", None)
        if isinstance(qos, QoS):
            qos.behind.close()
        super().close()  # type: ignore[misc]

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
