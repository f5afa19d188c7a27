"""Network faults between a client and a real Redis, and a worker's records written by
hand (as one that dies right after writing them leaves them), for tests of what survives
them."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from orchestrator.store import Change, StateStore


class CuttingProxy:
    """A TCP proxy in front of Redis that can drop a connection right after the server
    answered a command, before the client reads the answer: the command ran, the caller
    cannot know. ``cut_reply_to(b"EVALSHA")`` arms it for the next such command (or the
    next ``times`` of them); the reply cut is the one on the connection that sent it."""

    def __init__(self, target_url: str):
        parts = urlsplit(target_url)
        assert parts.hostname is not None and parts.port is not None
        self._target_url = parts
        self.target = (parts.hostname, parts.port)
        self._listener = socket.create_server((parts.hostname, 0))
        self.port: int = self._listener.getsockname()[1]
        self._command: bytes | None = None
        self._times = 0
        self._closed = threading.Event()
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The target's URL (credentials and all) with the proxy's port."""
        return self.url_for()

    def url_for(self, db: int | None = None) -> str:
        """``url``, with another database if ``db`` is given."""
        userinfo, _, _ = self._target_url.netloc.rpartition("@")
        netloc = (
            f"{userinfo}@{self.target[0]}:{self.port}"
            if userinfo
            else (f"{self.target[0]}:{self.port}")
        )
        path = self._target_url.path if db is None else f"/{db}"
        return urlunsplit(self._target_url._replace(netloc=netloc, path=path))

    def cut_reply_to(self, command: bytes, times: int = 1) -> None:
        self._times = times
        self._command = command

    def __enter__(self) -> CuttingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, server]
            # Per connection: the reply cut is the one to the command seen on it, even
            # when many clients talk through the proxy at once.
            armed = threading.Event()
            for source, sink, replies in ((client, server, False), (server, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, sink, replies, armed), daemon=True
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, replies: bool, armed: threading.Event
    ) -> None:
        try:
            while chunk := source.recv(65536):
                if not replies and self._command is not None and self._command in chunk:
                    self._times -= 1
                    if self._times <= 0:
                        self._command = None
                    armed.set()
                elif replies and armed.is_set():
                    armed.clear()
                    self.cuts += 1
                    break  # the reply is dropped with the connection
                sink.sendall(chunk)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


def record_start(store: StateStore, workflow_id: str, step: str) -> None:
    """What a worker records when it claims a pending step."""
    now = time.time()
    store.apply(
        workflow_id,
        [Change(step, "pending", "running", {"attempts": 1, "started_at": now}, {"at": now})],
    )


def record_success(store: StateStore, workflow_id: str, step: str) -> tuple[str, ...]:
    """What a worker records when its step succeeds; returns the steps it released, which
    that worker would publish next."""
    now = time.time()
    release = store.step_defs_of(workflow_id, [step])[step]["release"]
    applied = store.apply(
        workflow_id,
        [
            Change(
                step,
                "running",
                "succeeded",
                {"finished_at": now},
                {"at": now},
                result_json="null",
                release=release,
            )
        ],
    )
    return applied.ready
