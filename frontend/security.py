"""API-key checks and the request-body cap; both sit in front of every route, UI included."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frontend.errors import PayloadTooLarge, Unauthorized, openai_body, spec_for


class ApiKeys:
    """Bearer-token check; with no keys configured every caller is allowed."""

    def __init__(self, keys: frozenset[str]) -> None:
        self._keys = tuple(key.encode("utf-8") for key in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def is_valid(self, key: str | None) -> bool:
        if not self._keys:
            return True
        if not key:
            return False
        candidate = key.encode("utf-8")
        return any(hmac.compare_digest(candidate, known) for known in self._keys)

    def check_authorization_header(self, header: str | None) -> None:
        if not self._keys:
            return
        if not header:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not self.is_valid(token.strip()):
            raise Unauthorized("invalid API key")


DRAIN_FACTOR = 4


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of the body, so that clients which send it all before
    reading get the 413 instead of a reset connection."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class BodySizeLimitMiddleware:
    """Answers 413 when Content-Length or the streamed body exceeds `max_bytes`."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send) -> None:
        error = PayloadTooLarge(f"request body exceeds the limit of {self.max_bytes} bytes")
        body = json.dumps(openai_body(error)).encode("utf-8")
        await send({
            "type": "http.response.start",
            "status": spec_for(error).status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    if declared <= self.max_bytes * DRAIN_FACTOR:
                        await _drain(receive)
                    await self._reject(send)
                    return
        received = 0
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    rejected = True
                    if message.get("more_body", False) and received <= self.max_bytes * DRAIN_FACTOR:
                        await _drain(receive)
                    await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)
