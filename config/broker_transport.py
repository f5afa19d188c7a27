"""kombu's Redis transport with one fix: a worker survives losing its Redis connection.

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
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from config.sentinel_connection import PrimaryConnection


def _check_attached(channel: Any) -> None:
    if channel.connection.client is None:
        raise redis.ConnectionError("the broker connection was closed")


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    def _connparams(self, asynchronous: bool = False) -> Any:
        _check_attached(self)
        return super()._connparams(asynchronous)


class SentinelChannel(kombu_redis.SentinelChannel):  # type: ignore[misc]
    connection_class = PrimaryConnection

    def _connparams(self, asynchronous: bool = False) -> Any:
        _check_attached(self)
        return super()._connparams(asynchronous)


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel
