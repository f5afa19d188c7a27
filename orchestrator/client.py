"""The Python client: submit workflows, read their status, wait, list, cancel.

from orchestrator.client import Client
with Client.connect() as client:
    wid = client.submit("workers/samples/workflows/order-fulfillment.yaml")
    print(client.wait(wid, timeout_s=60)["state"])
"""

from __future__ import annotations

import builtins
import itertools
import random
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from config.settings import Settings, get_settings
from orchestrator.audit import chain_problems
from orchestrator.audit_report import AuditReport, audit
from orchestrator.dead_letters import DeadLetters
from orchestrator.errors import Refused
from orchestrator.service import Orchestrator, Submission, with_overrides
from orchestrator.states import WORKFLOW_FINAL
from orchestrator.validate import load_spec_file


def backoff_s(retry_after_s: float, tries: int, random_fraction: float) -> float:
    """How long to wait before submitting again: what the refusal asked for, growing
    with each refusal in a row, plus jitter so refused clients do not return together."""
    base = retry_after_s * (1 << min(tries, 3))
    return base + base * 0.5 * random_fraction


class Client:
    def __init__(self, orchestrator: Orchestrator):
        self.orchestrator = orchestrator

    @classmethod
    def connect(cls, settings: Settings | None = None, redis_url: str | None = None) -> Client:
        return cls(Orchestrator.from_settings(settings or get_settings(), redis_url))

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.orchestrator.close()

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
                return self.orchestrator.submit(merged, source)
            except Refused as refused:
                wait = backoff_s(refused.retry_after_s, tries, random.random())
                if time.monotonic() + wait > deadline:
                    raise
                time.sleep(wait)
        raise AssertionError("unreachable")

    def status(self, workflow_id: str) -> dict[str, Any]:
        return self.orchestrator.store.status(workflow_id)

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

    def list(self, state: str | None = None, limit: int = 1000) -> builtins.list[dict[str, Any]]:
        return self.orchestrator.store.summaries(state, limit)

    def cancel(self, workflow_id: str, terminate: bool = False) -> str:
        """Steps not started never start; running ones finish (or, with ``terminate``,
        are stopped)."""
        return self.orchestrator.cancel(workflow_id, terminate)

    def resume(self, workflow_id: str) -> builtins.list[str]:
        """Re-run what did not succeed; returns the steps that run again."""
        return self.orchestrator.resume(workflow_id).steps

    @property
    def dead_letters(self) -> DeadLetters:
        return DeadLetters(self.orchestrator.store)

    def replay(self, letter_id: str) -> str:
        """Re-queue a dead-lettered step; returns its workflow id."""
        return self.orchestrator.replay(letter_id).workflow_id

    def audit(self, workflow_id: str) -> AuditReport:
        """Check the recorded run against its graph; per-step waits and run times."""
        entries, tail = self.orchestrator.store.audit_entries(workflow_id)
        defs = self.orchestrator.store.step_defs(workflow_id)
        after = {s: d.get("after", []) for s, d in defs.items()}
        all_done = [s for s, d in defs.items() if d.get("trigger") == "all_done"]
        return audit(workflow_id, entries, tail, after, all_done)

    def audit_chain_problems(self, workflow_id: str) -> builtins.list[str]:
        """Where the stored audit chain was changed or cut (empty when intact)."""
        entries, tail = self.orchestrator.store.audit_entries(workflow_id)
        return chain_problems(entries, tail)


__all__ = ["Client"]
