"""The per-session WebSocket: the HTTP operations as messages, errors as messages with a status.

Messages: ``{"op": "stroke", <StrokeIn fields>} | {"op": "undo"} | {"op": "reset"} | {"op": "state"}``.
Each gets a SessionState (plus ``op``) or an ErrorOut (plus ``op`` and ``status``, the HTTP status
the same error gets over HTTP); errors keep the socket open, except at connect: an unknown session
is closed with code 4404, a session store that cannot be reached with 1013 (try again later), a
missing or wrong API key with 4401 and a page of a refused origin with 4403 (see :mod:`.auth`).
"""

from __future__ import annotations

import json

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from ..errors import DcssaError
from .auth import PROTOCOL
from .errors import BadRequest, LimitExceeded, RateLimited, SessionNotFound
from .handlers import invalid_request, report
from .inputs import stroke_from
from .schemas import StrokeIn
from .service import ANONYMOUS, Caller, Service

CLOSE_UNKNOWN_SESSION = 4404
CLOSE_TRY_LATER = 1013  # RFC 6455 "Try Again Later": a server fault at connect (the session store is down)


def _decode(text: str, max_bytes: int) -> dict:
    if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise LimitExceeded(f"message over {max_bytes} bytes", hint="send one stroke per message, or simplify strokes")
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON ({exc.msg})") from None
    if not isinstance(msg, dict):
        raise BadRequest("a message must be a JSON object with an \"op\"")
    return msg


async def _dispatch(service: Service, sid: str, op: object, msg: dict, who: Caller) -> dict:
    if op == "stroke":
        body = StrokeIn.model_validate(msg)
        return await service.stroke(sid, stroke_from(body, service.config.max_points), body.after, who)
    if op == "undo":
        return await service.undo(sid, who)
    if op == "reset":
        return await service.reset(sid, who)
    if op == "state":
        return await service.get(sid, who)
    raise BadRequest(f"unknown op {op!r}", hint='use "stroke", "undo", "reset" or "state"')


async def reply(service: Service, sid: str, text: str, who: Caller = ANONYMOUS) -> dict:
    """The answer to one message; never raises for anything the message or the server did wrong."""
    op = None
    try:
        msg = _decode(text, service.config.max_body_bytes)
        op = msg.pop("op", None)
        return {"op": op, **await _dispatch(service, sid, op, msg, who)}
    except ValidationError as exc:
        status, body = 422, invalid_request(exc.errors())
        service.metrics.errors.labels(body["error"]).inc()
    except Exception as exc:  # noqa: BLE001 - the socket stays open; the error is reported to the client
        status, body = report(exc, service.metrics, "a websocket message")
        if isinstance(exc, RateLimited):
            body["retry_after"] = exc.retry_after  # what Retry-After says over HTTP
    return {"op": op if isinstance(op, str) else None, "status": status, **body}


def add_websocket(app: FastAPI, service: Service) -> None:
    @app.websocket("/v1/sessions/{session_id}/ws")
    async def session_ws(ws: WebSocket, session_id: str) -> None:
        """One session's operations as messages (see the module docstring)."""
        # a browser that sent its API key as a subprotocol entry is answered with the fixed protocol name
        await ws.accept(subprotocol=PROTOCOL if PROTOCOL in ws.scope.get("subprotocols", ()) else None)
        state = ws.scope.get("state", {})
        who = Caller(state.get("principal"), state.get("client") or "unknown")
        try:
            await service.check(session_id, who)
        except DcssaError as exc:  # unknown session, or the shared store is down
            status, body = report(exc, service.metrics, "a websocket connect")
            await ws.send_json({"op": None, "status": status, **body})
            await ws.close(code=CLOSE_UNKNOWN_SESSION if isinstance(exc, SessionNotFound) else CLOSE_TRY_LATER)
            return
        try:
            while True:
                await ws.send_json(await reply(service, session_id, await ws.receive_text(), who))
        except WebSocketDisconnect:
            return

