"""ASGI middleware of the server: the request body size limit, the catalogue fingerprint header."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import body_too_large

# A refused body is still read (and dropped) up to this many bytes and seconds before the 413 goes
# out: a server that answers and closes while the client is still sending resets the connection,
# and the client sees "connection reset" / "broken pipe" instead of the 413. Beyond the bounds the
# answer goes out anyway (a client sending more than this is not owed a polite reply).
DRAIN_BYTES = 64 << 20
DRAIN_SECONDS = 10.0


async def drain(receive: Receive, already_done: bool = False) -> None:
    """Read and drop the rest of a request body, within :data:`DRAIN_BYTES` and :data:`DRAIN_SECONDS`."""
    if already_done:
        return

    async def read() -> None:
        seen = 0
        while seen <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(read(), DRAIN_SECONDS)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a 413 JSON error, declared or streamed.

    A declared Content-Length over the limit is refused before the app runs; a chunked body is
    counted as it is read and cut off with an HTTPException(413), which the app's handler turns
    into the same JSON (FastAPI re-raises HTTPExceptions raised while reading a body). Either way
    the rest of the body is drained first (see :data:`DRAIN_BYTES`) and the connection closed
    after the answer, so the client reads the 413 instead of a reset.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, on_reject: Callable[[], None] = lambda: None) -> None:
        self.app, self.max_bytes, self.on_reject = app, int(max_bytes), on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            self.on_reject()
            if declared.isdigit() and int(declared) <= DRAIN_BYTES:
                await drain(receive)
            response = JSONResponse(body_too_large(self.max_bytes), status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        seen = 0
        over = False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    await drain(receive, already_done=not message.get("more_body", False))
                    raise StarletteHTTPException(413, "request body too large")
            return message

        async def closing(message: Message) -> None:
            if over and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, counted, closing)


#: the response header naming the catalogue a replica searches (see dcssa.runtime.search.catalogue)
CATALOGUE_HEADER = "X-Dcssa-Catalogue"


class CatalogueHeader:
    """Add :data:`CATALOGUE_HEADER` to every HTTP response: during a rolling catalogue update a client
    (or a log line) sees which catalogue each replica answered from."""

    def __init__(self, app: ASGIApp, fingerprint: Callable[[], str | None]) -> None:
        self.app, self.fingerprint = app, fingerprint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                fp = self.fingerprint()
                if fp is not None:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (CATALOGUE_HEADER.lower().encode(), fp.encode())]}
            await send(message)

        await self.app(scope, receive, tagged)
