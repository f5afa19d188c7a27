"""Request bodies: only JSON comes in, never more than the configured size, never
nested deeper than any spec needs.

``BodyGuard`` is an ASGI middleware, so it runs before routing and parsing: a body that
declares itself too large is refused unread, and one that streams past the limit
(chunked, or lying about its length) is refused once the limit is passed. At most
``max_bytes`` are ever held; the app then reads the buffered body as if it came from the
client. ``json_body`` parses it for the routes that take one.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.errors import error_response
from orchestrator.errors import InvalidInput, NotJson, Problem, TooLarge, TreadleError

# Deeper than any spec needs (stages nest two levels a block); anything deeper would
# only exhaust the recursion of the JSON and validation code after the parser.
MAX_JSON_DEPTH = 64


def is_json_media_type(content_type: str) -> bool:
    """``application/json`` or ``application/<x>+json``, any parameters (charset)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class BodyGuard:
    """413 past ``max_bytes``, 415 for a body that is not JSON; otherwise the app gets the
    request with its body read once, here."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        # The server already refused a Content-Length that is not a number.
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(self._too_large(f"declares {declared} bytes, more"))(
                scope, receive, send
            )
            return
        body, refusal, early = await self._read(receive)
        if refusal is None and body and not is_json_media_type(headers.get("content-type", "")):
            refusal = self._not_json(headers)
        if refusal is not None:
            await error_response(refusal)(scope, receive, send)
            return
        await self.app(scope, _replay(body, early, receive), send)

    async def _read(self, receive: Receive) -> tuple[bytes, TreadleError | None, Message | None]:
        """The whole body, or a refusal once it passes the limit. ``early``: a message
        other than body (a disconnect) that arrived before the body ended."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), None, message
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return b"", self._too_large("is larger"), None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None, None

    def _too_large(self, how: str) -> TooLarge:
        return TooLarge(
            Problem(
                "body",
                f"{how} than the limit of {self.max_bytes} bytes (TREADLE_API_MAX_BODY_BYTES)",
            )
        )

    @staticmethod
    def _not_json(headers: dict[str, str]) -> NotJson:
        given = headers.get("content-type") or "none"
        return NotJson(
            Problem("Content-Type", f"{given!r}: only application/json bodies are accepted")
        )


def _replay(body: bytes, early: Message | None, receive: Receive) -> Receive:
    """A receive that hands out the buffered body, then whatever the client sends next
    (a disconnect, which streaming responses listen for)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            if early is None:
                return {"type": "http.request", "body": body, "more_body": False}
        if early is not None:
            return early
        return await receive()

    return replayed


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar: 0); without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest


def parse_json_body(raw: bytes) -> Any:
    """The JSON value of a request body; InvalidInput saying where it is not JSON."""
    if not raw.strip():
        raise InvalidInput(Problem("body", "is empty: expected a workflow spec as JSON"))
    too_deep = InvalidInput(Problem("body", f"nests deeper than {MAX_JSON_DEPTH} levels"))
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise too_deep from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(Problem("body", f"is not UTF-8: {exc.reason}")) from exc
    except json.JSONDecodeError as exc:
        where = f"body (line {exc.lineno}, column {exc.colno})"
        raise InvalidInput(Problem(where, f"not JSON: {exc.msg}")) from exc
    except ValueError as exc:  # NaN, Infinity: Python's extensions, not JSON
        raise InvalidInput(Problem("body", str(exc))) from exc
    if json_depth(value) > MAX_JSON_DEPTH:
        raise too_deep
    return value


async def json_body(request: Request) -> Any:
    """The dependency that gives a route its parsed body."""
    return parse_json_body(await request.body())


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
