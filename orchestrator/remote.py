"""The client of a remote orchestrator: the same methods as ``Client``, over the HTTP API.

Errors come back as the classes the orchestrator raised (the ``error`` code of the body
names the class, see ``orchestrator.errors``), so the CLI prints the same message and
exits with the same code whether it talks to Redis or to an orchestrator over HTTP.
"""

from __future__ import annotations

import builtins
import json
from typing import Any
from urllib.parse import quote

import httpx

from orchestrator.audit_report import AuditReport
from orchestrator.client import BaseClient
from orchestrator.errors import (
    InvalidInput,
    Problem,
    Refused,
    TreadleError,
    Unreachable,
    error_class,
)
from orchestrator.service import Submission

AUDIT_TAIL_HEADER = "Treadle-Audit-Tail"


def error_from_response(response: httpx.Response, source: str | None = None) -> TreadleError:
    """The treadle error an HTTP error response stands for."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        # Not our body: a proxy or load balancer in between answered.
        klass = Unreachable if response.status_code >= 500 else TreadleError
        return klass(f"HTTP {response.status_code} from {response.url}: {response.text[:200]}")
    klass = error_class(body["error"])
    message = str(body.get("message") or f"HTTP {response.status_code}")
    if issubclass(klass, Refused):
        retry_after = body.get("retry_after_s") or response.headers.get("Retry-After") or 1
        return klass(message, float(retry_after))
    if issubclass(klass, InvalidInput):
        problems = [
            Problem(str(p.get("where", "")), str(p.get("what", "")))
            for p in body.get("problems") or []
            if isinstance(p, dict)
        ]
        return klass(problems or message, source)
    return klass(message)


class RemoteDeadLetters:
    """The dead-letter queue of a remote orchestrator."""

    def __init__(self, client: RemoteClient):
        self.client = client

    def entries(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.client.call("GET", "/dead-letters").json()
        return entries

    def get(self, letter_id: str) -> dict[str, Any]:
        letter: dict[str, Any] = self.client.call("GET", f"/dead-letters/{_seg(letter_id)}").json()
        return letter

    def purge(self) -> int:
        return int(self.client.call("DELETE", "/dead-letters").json()["purged"])


class RemoteClient(BaseClient):
    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        http: httpx.Client | None = None,
    ):
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = http or httpx.Client(base_url=self.url, timeout=timeout_s)
        self.http.headers.update(headers)

    def __enter__(self) -> RemoteClient:
        return self

    def close(self) -> None:
        self.http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        source: str | None = None,
    ) -> httpx.Response:
        """One request; a treadle error for every answer that is not a success."""
        content = None
        headers = {}
        if body is not None:
            try:
                content = json.dumps(body, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(Problem("", f"not JSON: {exc}"), source) from exc
            headers["Content-Type"] = "application/json"
        try:
            response = self.http.request(
                method, path, params=params, content=content, headers=headers
            )
        except httpx.TransportError as exc:
            raise Unreachable(f"the orchestrator at {self.url} cannot be reached: {exc}") from exc
        if response.is_success:
            return response
        raise error_from_response(response, source)

    def _submit_once(self, raw: Any, source: str | None) -> Submission:
        reply = self.call("POST", "/workflows", body=raw, source=source).json()
        return Submission(reply["id"], bool(reply["created"]))

    def status(self, workflow_id: str) -> dict[str, Any]:
        status: dict[str, Any] = self.call("GET", f"/workflows/{_seg(workflow_id)}").json()
        return status

    def list(self, state: str | None = None, limit: int = 1000) -> builtins.list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = state
        rows: builtins.list[dict[str, Any]] = self.call("GET", "/workflows", params=params).json()
        return rows

    def cancel(self, workflow_id: str, terminate: bool = False) -> str:
        path = f"/workflows/{_seg(workflow_id)}/cancel"
        params = {"terminate": "true"} if terminate else None
        return str(self.call("POST", path, params=params).json()["state"])

    def resume(self, workflow_id: str) -> builtins.list[str]:
        reply = self.call("POST", f"/workflows/{_seg(workflow_id)}/resume").json()
        return [str(s) for s in reply["steps"]]

    @property
    def dead_letters(self) -> RemoteDeadLetters:
        return RemoteDeadLetters(self)

    def replay(self, letter_id: str) -> str:
        return str(
            self.call("POST", f"/dead-letters/{_seg(letter_id)}/replay").json()["workflow_id"]
        )

    def replay_all(self) -> builtins.list[str]:
        return [str(w) for w in self.call("POST", "/dead-letters/replay").json()["workflows"]]

    def audit(self, workflow_id: str) -> AuditReport:
        report = self.call("GET", f"/workflows/{_seg(workflow_id)}/audit/check").json()
        return AuditReport.from_json(report)

    def audit_log(self, workflow_id: str) -> tuple[builtins.list[str], str]:
        response = self.call("GET", f"/workflows/{_seg(workflow_id)}/audit")
        lines = [line for line in response.text.split("\n") if line]
        return lines, response.headers.get(AUDIT_TAIL_HEADER, "")

    def metrics_text(self) -> str:
        return self.call("GET", "/metrics").text


def _seg(value: str) -> str:
    """One path segment, whatever the id holds."""
    return quote(value, safe="")
