"""ASGI middleware of the server: the request body size limit."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import body_too_large


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a 413 JSON error, declared or streamed.

    A declared Content-Length over the limit is refused before the app runs; a chunked body is
    counted as it is read and cut off with an HTTPException(413), which the app's handler turns
    into the same JSON (FastAPI re-raises HTTPExceptions raised while reading a body).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, on_reject: Callable[[], None] = lambda: None) -> None:
        self.app, self.max_bytes, self.on_reject = app, int(max_bytes), on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            self.on_reject()
            return await JSONResponse(body_too_large(self.max_bytes), status_code=413)(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(413, "request body too large")
            return message

        await self.app(scope, counted, send)
