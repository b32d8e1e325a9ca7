"""Request body limit for the server: 413 with a one-line JSON message, before the body is parsed.

A request announcing a ``Content-Length`` above the limit is refused without reading its body. A
chunked request (no ``Content-Length``) is read into memory up to the limit and refused as soon as it
passes it; below the limit it is replayed to the app unchanged.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["BodySizeLimit"]


class BodySizeLimit:
    """Pure ASGI middleware answering 413 for request bodies above ``max_bytes``.

    Args:
        app: the ASGI app it wraps.
        max_bytes: the largest body accepted, in bytes.
    """

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def _refuse(self, send: Any, size: str) -> None:
        body = json.dumps({"detail": (
            f"the request body is {size} bytes, over this server's limit of {self.max_bytes} bytes "
            "(its max_request_bytes): send fewer patches per request"
        )}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                announced = int(length)
            except ValueError:
                announced = -1
            if announced > self.max_bytes:
                await self._refuse(send, str(announced))
                return
            await self.app(scope, receive, send)
            return
        if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send, f"more than {size}")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
