"""Serving the API inside the orchestrator process, beside its Celery consumer.

The socket is bound before the Celery worker starts, so a taken port fails the command
at once with a plain message, and ``--port 0`` knows its port before anything is logged.
uvicorn then runs in a thread of its own: the worker keeps the main thread and its
signal handling, and its shutdown (SIGTERM, Ctrl-C) stops the server as one of its
bootsteps.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from celery import Celery, bootsteps
from fastapi import FastAPI

from orchestrator.errors import InvalidInput, Problem

log = logging.getLogger("treadle.api")

_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 10.0
_GRACEFUL_S = 5


@dataclass
class Listener:
    """A bound listening socket and the address clients reach it at."""

    sock: socket.socket
    host: str
    port: int

    @classmethod
    def bind(cls, host: str, port: int) -> Listener:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except socket.gaierror as exc:
            raise InvalidInput(Problem("--host", f"{host!r}: {exc.strerror}")) from exc
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise InvalidInput(Problem("--port", f"{host}:{port}: {exc.strerror}")) from exc
        sock.listen(128)
        return cls(sock, host, int(sock.getsockname()[1]))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class ApiServer:
    """uvicorn serving ``app`` on ``listener`` in a thread; start() returns once it serves."""

    def __init__(self, app: FastAPI, listener: Listener):
        self.listener = listener
        config = uvicorn.Config(
            app,
            log_config=None,  # the worker has configured logging; uvicorn's loggers propagate
            lifespan="off",
            timeout_graceful_shutdown=_GRACEFUL_S,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [listener.sock]},
            name="treadle-api",
            daemon=True,
        )

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP API did not start on {self.listener.url}")
            time.sleep(0.02)
        log.info("HTTP API on %s", self.listener.url)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(_STOP_TIMEOUT_S)
        self.listener.sock.close()


def install_api(celery_app: Celery, api: FastAPI, listener: Listener) -> None:
    """Serve ``api`` while the orchestrator's worker runs, and stop it with the worker."""

    class ApiStep(bootsteps.StartStopStep):  # type: ignore[misc]
        def create(self, worker: Any) -> ApiServer:
            return ApiServer(api, listener)

    celery_app.steps["worker"].add(ApiStep)
