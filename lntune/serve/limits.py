"""BodyLimit: request bodies over `max_bytes` are refused (413) before they are parsed, whether the client declares
their length (Content-Length) or streams them (chunked)."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return (f"the request body is over the {self.max_bytes:,}-byte limit (--max-body-bytes); send smaller images "
                "or a shorter conversation")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            from lntune.serve.errors import ServeError

            body = json.dumps(ServeError(self._message(), 413, code="body_too_large").body()).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._message())  # FastAPI passes HTTPException through body parsing
            return message

        await self.app(scope, counting_receive, send)
