"""The Python client: submit workflows, read their status, wait, list, cancel, resume, and
work the dead-letter queue, either in-process against Redis or over the HTTP API.

from orchestrator.client import Client
with Client.connect() as client:          # Redis directly (or Client.remote(url, token))
    wid = client.submit("workers/samples/workflows/order-fulfillment.yaml")
    print(client.wait(wid, timeout_s=60)["state"])
"""

from __future__ import annotations

import builtins
import itertools
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from config.settings import Settings, get_settings
from orchestrator import metrics
from orchestrator.audit import chain_problems, ends_digest
from orchestrator.audit_report import AuditReport
from orchestrator.dead_letters import DeadLetters
from orchestrator.errors import Refused
from orchestrator.service import Orchestrator, Submission, with_overrides
from orchestrator.states import WORKFLOW_FINAL
from orchestrator.validate import load_spec_file

if TYPE_CHECKING:
    from orchestrator.remote import RemoteClient


def backoff_s(retry_after_s: float, tries: int, random_fraction: float) -> float:
    """How long to wait before submitting again: what the refusal asked for, growing
    with each refusal in a row, plus jitter so refused clients do not return together."""
    base = retry_after_s * (1 << min(tries, 3))
    return base + base * 0.5 * random_fraction


class DeadLetterQueue(Protocol):
    """What a client offers of the dead-letter queue (local or over HTTP)."""

    def entries(self) -> list[dict[str, Any]]: ...

    def get(self, letter_id: str) -> dict[str, Any]: ...

    def purge(self) -> int: ...


class BaseClient(ABC):
    """Everything a producer or operator does with treadle; the local and the remote
    client differ only in how each call reaches the orchestrator."""

    def __enter__(self) -> BaseClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None: ...

    def submit(
        self,
        spec: Mapping[str, Any] | str | Path,
        *,
        params: Mapping[str, Any] | None = None,
        priority: str | None = None,
        retry_refused_s: float = 0.0,
    ) -> str:
        """Submit a spec (a mapping, or the path of a YAML/JSON file); returns its id.

        A spec whose ``idempotency_key`` was submitted before returns the first id. A
        submission refused by backpressure raises ``Refused`` (with ``retry_after_s``),
        unless ``retry_refused_s`` allows trying again for that long.
        """
        return self.submit_detailed(
            spec, params=params, priority=priority, retry_refused_s=retry_refused_s
        ).id

    def submit_detailed(
        self,
        spec: Mapping[str, Any] | str | Path,
        *,
        params: Mapping[str, Any] | None = None,
        priority: str | None = None,
        retry_refused_s: float = 0.0,
    ) -> Submission:
        source = None
        if isinstance(spec, (str, Path)):
            source = str(spec)
            raw = load_spec_file(Path(spec))
        else:
            raw = spec
        merged = with_overrides(raw, params, priority)
        deadline = time.monotonic() + retry_refused_s
        for tries in itertools.count():
            try:
                return self._submit_once(merged, source)
            except Refused as refused:
                wait = backoff_s(refused.retry_after_s, tries, random.random())
                if time.monotonic() + wait > deadline:
                    raise
                time.sleep(wait)
        raise AssertionError("unreachable")

    @abstractmethod
    def _submit_once(self, raw: Any, source: str | None) -> Submission: ...

    @abstractmethod
    def status(self, workflow_id: str) -> dict[str, Any]:
        """The ``treadle status --json`` object."""

    def wait(
        self, workflow_id: str, timeout_s: float | None = None, poll_s: float = 0.05
    ) -> dict[str, Any]:
        """Block until the workflow ends; returns its final status."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = poll_s
        while True:
            status = self.status(workflow_id)
            if status["state"] in WORKFLOW_FINAL:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"workflow {workflow_id} still {status['state']} after {timeout_s} s"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    @abstractmethod
    def list(self, state: str | None = None, limit: int = 1000) -> builtins.list[dict[str, Any]]:
        """Workflow summaries, newest first."""

    @abstractmethod
    def cancel(self, workflow_id: str, terminate: bool = False) -> str:
        """Steps not started never start; running ones finish (or, with ``terminate``,
        are stopped). Returns the workflow's state afterwards."""

    @abstractmethod
    def resume(self, workflow_id: str) -> builtins.list[str]:
        """Re-run what did not succeed; returns the steps that run again."""

    @property
    @abstractmethod
    def dead_letters(self) -> DeadLetterQueue: ...

    @abstractmethod
    def replay(self, letter_id: str) -> str:
        """Re-queue a dead-lettered step; returns its workflow id."""

    @abstractmethod
    def replay_all(self) -> builtins.list[str]:
        """Resume every workflow with a step dead letter; returns their ids."""

    @abstractmethod
    def audit(self, workflow_id: str) -> AuditReport:
        """Check the recorded run against its graph; per-step waits and run times."""

    @abstractmethod
    def metrics_text(self) -> str:
        """The Prometheus metrics in their text format (as ``/metrics`` serves them)."""

    @abstractmethod
    def audit_log(self, workflow_id: str) -> tuple[builtins.list[str], str]:
        """The stored audit records (canonical JSON texts, in order) and the digest of
        where the store says their chains end (``orchestrator.audit.ends_digest``): enough
        to check the trail yourself with ``orchestrator.audit.chain_problems``."""


class Client(BaseClient):
    """In-process: validates, stores and dispatches through Redis itself."""

    def __init__(self, orchestrator: Orchestrator):
        self.orchestrator = orchestrator

    @classmethod
    def connect(cls, settings: Settings | None = None, redis_url: str | None = None) -> Client:
        return cls(Orchestrator.from_settings(settings or get_settings(), redis_url))

    @staticmethod
    def remote(url: str, token: str | None = None, timeout_s: float = 30.0) -> RemoteClient:
        """A client of the orchestrator's HTTP API at ``url``, with the same methods."""
        from orchestrator.remote import RemoteClient

        return RemoteClient(url, token, timeout_s=timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> BaseClient:
        """Remote when ``TREADLE_API_URL`` is set, else in-process on Redis."""
        settings = settings or get_settings()
        if settings.api_url:
            token = settings.api_token.get_secret_value() if settings.api_token else None
            return cls.remote(settings.api_url, token, settings.api_timeout_s)
        return cls.connect(settings)

    def __enter__(self) -> Client:
        return self

    def close(self) -> None:
        self.orchestrator.close()

    def _submit_once(self, raw: Any, source: str | None) -> Submission:
        return self.orchestrator.submit(raw, source)

    def status(self, workflow_id: str) -> dict[str, Any]:
        return self.orchestrator.store.status(workflow_id)

    def list(self, state: str | None = None, limit: int = 1000) -> builtins.list[dict[str, Any]]:
        return self.orchestrator.store.summaries(state, limit)

    def cancel(self, workflow_id: str, terminate: bool = False) -> str:
        return self.orchestrator.cancel(workflow_id, terminate)

    def resume(self, workflow_id: str) -> builtins.list[str]:
        return self.orchestrator.resume(workflow_id).steps

    @property
    def dead_letters(self) -> DeadLetters:
        return DeadLetters(self.orchestrator.store)

    def replay(self, letter_id: str) -> str:
        return self.orchestrator.replay(letter_id).workflow_id

    def replay_all(self) -> builtins.list[str]:
        return self.orchestrator.replay_all()

    def audit(self, workflow_id: str) -> AuditReport:
        return self.orchestrator.audit(workflow_id)

    def audit_log(self, workflow_id: str) -> tuple[builtins.list[str], str]:
        entries, tails = self.orchestrator.store.audit_entries(workflow_id)
        return entries, ends_digest(tails)

    def metrics_text(self) -> str:
        body, _ = metrics.exposition(self.orchestrator.store, self.orchestrator.checker.topology)
        return body.decode()

    def audit_chain_problems(self, workflow_id: str) -> builtins.list[str]:
        """Where the stored audit chains were changed or cut (empty when intact)."""
        return chain_problems(*self.orchestrator.store.audit_entries(workflow_id))


__all__ = ["BaseClient", "Client", "DeadLetterQueue"]
