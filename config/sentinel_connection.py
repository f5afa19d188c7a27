"""A connection to whichever server Sentinel names primary, asked on every connect.

redis-py's SentinelManagedConnection asks the sentinels for the primary's address only in
``connect()``. A connection that loses its socket mid-command reconnects through
``send_packed_command``, which opens a socket to the address it had: after a failover,
the dead primary. treadle's clients retry through outages for ``redis_retry_s``, so such a
command would knock on the dead primary for the whole window (seen here: a step's
record held up for 60 s). Asking before every socket connect follows the failover
whichever way the connection comes back.
"""

from __future__ import annotations

import socket

from redis.sentinel import SentinelManagedConnection


class PrimaryConnection(SentinelManagedConnection):
    def _connect(self) -> socket.socket:
        if self.connection_pool.is_master:
            # Raises MasterNotFoundError (a ConnectionError, so retried) mid-failover.
            self.host, self.port = self.connection_pool.get_master_address()
        sock: socket.socket = super()._connect()  # type: ignore[no-untyped-call]
        return sock
