"""Request bodies: only JSON comes in, and never more than the configured size.

An ASGI middleware, so it runs before routing and parsing: a body that declares itself
too large is refused unread, and one that streams past the limit (chunked, or lying
about its length) is refused once the limit is passed. At most ``max_bytes`` are ever
held; the app then reads the buffered body as if it came from the client.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.errors import error_response
from orchestrator.errors import NotJson, Problem, TooLarge, TreadleError


def is_json_media_type(content_type: str) -> bool:
    """``application/json`` or ``application/<x>+json``, any parameters (charset)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class BodyGuard:
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
