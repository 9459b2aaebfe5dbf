"""The FastAPI app: live drawing sessions over HTTP and WebSocket, the drawing page, photos, metrics.

``create_app(retriever, ...)`` wires a loaded :class:`~dcssa.runtime.Retriever` to a
:class:`SessionStore`, a :class:`DynamicBatcher` for the sketch encoder and a :class:`PhotoStore`.
Every stroke goes ``prepare_stroke`` (thread) -> batcher (shared encoder call) -> ``finish_stroke``
(thread), under the session's lock, so one session's strokes apply in arrival order and sessions
never share state. Errors a client can cause come back as 4xx ``ErrorOut`` JSON, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
from fastapi import Body, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import DcssaError, StrokeError
from ..session import QueryResult, Retriever, StrokeSession
from ..strokes import parse_stroke, parse_strokes
from .batcher import DynamicBatcher
from .errors import BadRequest, classify, error_body
from .metrics import Metrics
from .photos import PhotoStore
from .schemas import ERRORS, Health, SessionState, SketchIn, StrokeIn
from .sessions import Entry, SessionStore, session_memory_bound

log = logging.getLogger("dcssa.serve")

_FORMS = ("stroke", "strokes", "points", "drawing")


@dataclass
class ServeConfig:
    """Server limits and batching; the CLI flags of ``dcssa-rt serve`` map one to one."""

    max_sessions: int = 256
    session_ttl: float = 1800.0  # seconds idle before a session is dropped
    max_batch: int = 8
    batch_window_ms: float = 5.0
    max_queue: int = 256  # strokes waiting for the encoder before 503
    max_body_bytes: int = 1 << 20
    max_points: int = 4096  # per stroke


# -- input -> strokes in the model frame -----------------------------------------------------------


# The rasteriser scales in float32 like the reference; beyond this a coordinate would overflow.
MAX_COORD = 1e30


def _check_points(strokes: list[np.ndarray], limit: int) -> None:
    for i, s in enumerate(strokes):
        where = "the stroke" if len(strokes) == 1 else f"stroke {i}"
        if len(s) > limit:
            raise StrokeError(f"{where} has {len(s)} points, over the server's limit of {limit}",
                              hint="simplify the stroke on the client (drop points closer than a pixel)")
        with np.errstate(all="ignore"):
            big = ~(np.abs(s) <= MAX_COORD)  # also catches inf from an extreme frame's scaling
        if big.any():
            j = int(np.nonzero(big.any(axis=1))[0][0])
            raise StrokeError(f"{where}, point {j}: out of range once mapped into the 256 model frame "
                              f"(|coordinate| must stay below {MAX_COORD:g})",
                              hint='send canvas coordinates with "frame": [canvas width, canvas height]')


def stroke_from(body: StrokeIn, max_points: int) -> np.ndarray:
    """The single stroke of a request body, as (n, 2) in the 256 frame."""
    doc = body.model_dump(exclude_none=True)
    forms = [k for k in _FORMS if k in doc]
    if len(forms) != 1:
        what = "no stroke" if not forms else f"both {forms[0]!r} and {forms[1]!r}"
        raise BadRequest(f"the body has {what}", hint='send exactly one of "stroke", "strokes", "points", "drawing" '
                         '(e.g. {"stroke": [[x, y], ...], "frame": [w, h]})')
    with np.errstate(over="ignore", invalid="ignore"):  # extreme frames: caught by _check_points
        if forms[0] == "stroke":
            strokes = [parse_stroke(doc["stroke"], frame=doc.get("frame"))]
        else:
            strokes = parse_strokes(doc)
        if len(strokes) != 1:
            raise BadRequest(f"the body holds {len(strokes)} strokes; this endpoint takes one",
                             hint="send strokes one request at a time, or rebuild a session with POST /v1/sessions")
    _check_points(strokes, max_points)
    return strokes[0]


def sketch_from(body: SketchIn | None, max_points: int) -> list[np.ndarray]:
    """All strokes of a session-creation body (none for an empty body)."""
    doc = {} if body is None else body.model_dump(exclude_none=True)
    forms = [k for k in _FORMS if k in doc]
    if not forms or (len(forms) == 1 and len(doc[forms[0]]) == 0):
        return []
    with np.errstate(over="ignore", invalid="ignore"):
        strokes = parse_strokes(doc)
    _check_points(strokes, max_points)
    return strokes


# -- the service: what HTTP and WebSocket handlers share -----------------------------------------


class Service:
    def __init__(self, retriever: Retriever, config: ServeConfig, photos_root: str | Path | None = None) -> None:
        self.retriever = retriever
        self.config = config
        self.store = SessionStore(retriever, max_sessions=config.max_sessions, ttl=config.session_ttl,
                                  on_drop=lambda reason: self.metrics.dropped.labels(reason).inc())
        self.batcher: DynamicBatcher | None = None
        self.metrics = Metrics(max_batch=config.max_batch, active_sessions=lambda: len(self.store),
                               queued=lambda: self.batcher.queued if self.batcher else 0)
        self.photos = PhotoStore(retriever.gallery, photos_root)
        self.memory_bound = session_memory_bound(retriever)

    def start(self) -> None:
        if self.batcher is None:
            self.batcher = DynamicBatcher(self.retriever.encoder, max_batch=self.config.max_batch,
                                          window_ms=self.config.batch_window_ms, max_queue=self.config.max_queue,
                                          on_batch=self.metrics.observe_batch)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None

    # -- helpers -----------------------------------------------------------------------------------
    def state(self, entry: Entry, result: QueryResult | None = None, batch: int | None = None) -> dict:
        """The response body; built under the session's lock so count and results agree."""
        res = entry.session.result if result is None else result
        matches = [] if res is None else [
            {"id": pid, "score": float(s), "url": "/v1/photos/" + quote(pid, safe="/")}
            for pid, s in zip(res.ids, res.scores)
        ]
        timings = {} if result is None else {k: round(v, 3) for k, v in result.timings.items()}
        return {"id": entry.id, "stroke": entry.session.num_strokes, "results": matches,
                "timings_ms": timings, "batch_size": batch}

    @staticmethod
    async def exclusive(entry: Entry, fn):
        """Run ``await fn(session)`` under the session's lock, to completion even if the client leaves.

        The lock is FIFO, so overlapping requests of one session apply in arrival order; the shield
        keeps a disconnect from cancelling a stroke halfway (canvas drawn, cache not yet updated).
        """

        async def run():
            async with entry.lock:
                return await fn(entry.session)

        task = asyncio.ensure_future(run())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # never "exception not retrieved"
        return await asyncio.shield(task)

    async def _apply(self, session: StrokeSession, xy: np.ndarray) -> tuple[QueryResult, int]:
        self.start()
        image = await asyncio.to_thread(session.prepare_stroke, xy)
        try:
            feature, timings, n = await self.batcher.encode(image)
        except BaseException:
            session.abort_stroke()
            raise
        result = await asyncio.to_thread(session.finish_stroke, feature, timings)
        self.metrics.observe_stroke(result)
        return result, n

    # -- operations --------------------------------------------------------------------------------
    async def create(self, strokes: list[np.ndarray]) -> dict:
        bound = self.retriever.max_strokes
        if len(strokes) > bound:
            raise BadRequest(f"the sketch has {len(strokes)} strokes, over the session bound of {bound}",
                             hint="send at most that many strokes (or undo some on the client)")
        entry = self.store.create()
        self.metrics.created.inc()

        async def rebuild(session: StrokeSession) -> dict:
            result, n = None, None
            for xy in strokes:
                result, n = await self._apply(session, xy)
            return self.state(entry, result, n)

        try:
            return await self.exclusive(entry, rebuild)
        except BaseException:
            with contextlib.suppress(DcssaError):
                self.store.delete(entry.id)  # a half-rebuilt session is of no use to the client
            raise

    async def stroke(self, sid: str, xy: np.ndarray) -> dict:
        entry = self.store.get(sid)

        async def add(session: StrokeSession) -> dict:
            return self.state(entry, *await self._apply(session, xy))

        return await self.exclusive(entry, add)

    async def undo(self, sid: str) -> dict:
        entry = self.store.get(sid)

        async def undo(session: StrokeSession) -> dict:
            session.undo()
            return self.state(entry)

        return await self.exclusive(entry, undo)

    async def reset(self, sid: str) -> dict:
        entry = self.store.get(sid)

        async def reset(session: StrokeSession) -> dict:
            session.reset()
            return self.state(entry)

        return await self.exclusive(entry, reset)

    async def get(self, sid: str) -> dict:
        entry = self.store.get(sid)

        async def read(_session: StrokeSession) -> dict:  # after the strokes queued before this request
            return self.state(entry)

        return await self.exclusive(entry, read)

    def delete(self, sid: str) -> None:
        self.store.delete(sid)

    def health(self) -> dict:
        r = self.retriever
        return {"status": "ok", "sessions": len(self.store), "max_sessions": self.config.max_sessions,
                "gallery": 0 if r.gallery is None else len(r.gallery), "backend": r.backend.name,
                "max_batch": self.config.max_batch, "batch_window_ms": self.config.batch_window_ms,
                "session_memory_bound_bytes": self.memory_bound["total"], "photos": self.photos.available}


# -- the app -----------------------------------------------------------------------------------------

class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a 413 JSON error, declared or streamed.

    A declared Content-Length over the limit is refused before the app runs; a chunked body is
    counted as it is read and cut off with an HTTPException(413), which the app's handler turns
    into the same JSON (FastAPI re-raises HTTPExceptions raised while reading a body).
    """

    def __init__(self, app, max_bytes: int, on_reject=lambda: None) -> None:
        self.app, self.max_bytes, self.on_reject = app, int(max_bytes), on_reject

    def _body(self) -> dict:
        return {"error": "limit_exceeded", "message": f"request body over {self.max_bytes} bytes",
                "hint": "send one stroke per request, or simplify strokes"}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            self.on_reject()
            return await JSONResponse(self._body(), status_code=413)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(413, "request body too large")
            return message

        await self.app(scope, counted, send)


def _page() -> str:
    return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ()))
        msg = e.get("msg", "invalid")
        if e.get("type") == "json_invalid":
            msg = f"invalid JSON ({e.get('ctx', {}).get('error', 'decode error')})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def create_app(retriever: Retriever, *, photos_root: str | Path | None = None, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving ``retriever``; the batcher thread starts with the app (or first stroke)."""
    config = config or ServeConfig()
    service = Service(retriever, config, photos_root)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="dcssa-rt serve",
        version="1",
        summary="Live sketch-based photo retrieval: one request per stroke, top-K photos back.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes,
                       on_reject=lambda: service.metrics.errors.labels("limit_exceeded").inc())
    app.state.service = service
    page = _page()

    def error(status: int, body: dict) -> JSONResponse:
        service.metrics.errors.labels(body["error"]).inc()
        return JSONResponse(body, status_code=status)

    @app.exception_handler(DcssaError)
    async def _dcssa(_req: Request, exc: DcssaError):
        return error(classify(exc)[0], error_body(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError):
        return error(422, {"error": "invalid_request", "message": _validation_message(exc.errors()),
                           "hint": "see the request schemas at /docs or /openapi.json"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:
            body = {"error": "limit_exceeded", "message": f"request body over {config.max_body_bytes} bytes",
                    "hint": "send one stroke per request, or simplify strokes"}
        elif exc.status_code == 400:  # FastAPI: a body it cannot decode (not UTF-8, say)
            body = {"error": "invalid_request", "message": f"unreadable request body ({exc.detail})",
                    "hint": "send UTF-8 JSON with Content-Type: application/json"}
        else:
            body = {"error": f"http_{exc.status_code}", "message": str(exc.detail), "hint": "see /docs for the API"}
        return error(exc.status_code, body)

    @app.exception_handler(Exception)
    async def _internal(_req: Request, exc: Exception):
        log.exception("internal error")
        return error(500, error_body(exc))

    # -- routes ----------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        return service.health()

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.post("/v1/sessions", response_model=SessionState, status_code=201, responses=ERRORS)
    async def create_session(body: SketchIn | None = Body(None)) -> dict:
        """Open a session; with the strokes drawn so far it is rebuilt (after a restart or expiry)."""
        return await service.create(sketch_from(body, config.max_points))

    @app.get("/v1/sessions/{session_id}", response_model=SessionState, responses=ERRORS)
    async def get_session(session_id: str) -> dict:
        return await service.get(session_id)

    @app.post("/v1/sessions/{session_id}/strokes", response_model=SessionState, responses=ERRORS)
    async def add_stroke(session_id: str, body: StrokeIn) -> dict:
        """Add one stroke; returns the top-K photos for the sketch so far and the stroke's timings."""
        xy = stroke_from(body, config.max_points)
        return await service.stroke(session_id, xy)

    @app.post("/v1/sessions/{session_id}/undo", response_model=SessionState, responses=ERRORS)
    async def undo(session_id: str) -> dict:
        """Remove the last stroke; returns the results as they were before it."""
        return await service.undo(session_id)

    @app.post("/v1/sessions/{session_id}/reset", response_model=SessionState, responses=ERRORS)
    async def reset(session_id: str) -> dict:
        return await service.reset(session_id)

    @app.delete("/v1/sessions/{session_id}", status_code=204, response_class=Response, responses=ERRORS)
    async def delete_session(session_id: str) -> Response:
        service.delete(session_id)
        return Response(status_code=204)

    @app.get(
        "/v1/photos/{photo_id:path}",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}, "application/octet-stream": {}}}, 404: ERRORS[404],
                   422: ERRORS[422]},
    )
    async def photo(photo_id: str, size: Literal["thumb", "full"] = "thumb") -> Response:
        """A gallery photo by id: a cached JPEG thumbnail, or the original file with ?size=full."""
        if size == "full":
            return FileResponse(service.photos.path(photo_id))
        data = await asyncio.to_thread(service.photos.thumbnail, photo_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    @app.websocket("/v1/sessions/{session_id}/ws")
    async def session_ws(ws: WebSocket, session_id: str) -> None:
        """Messages: {"op": "stroke", <StrokeIn fields>} | {"op": "undo"} | {"op": "reset"} | {"op": "state"}.

        Each gets a SessionState (plus "op") or an ErrorOut (plus "op" and "status"); errors keep the
        socket open, except an unknown session (closed with code 4404).
        """
        await ws.accept()
        try:
            service.store.get(session_id)
        except DcssaError as exc:
            await ws.send_json({"op": None, "status": 404, **error_body(exc)})
            await ws.close(code=4404)
            return
        try:
            while True:
                text = await ws.receive_text()
                await ws.send_json(await _ws_message(service, session_id, text, config))
        except WebSocketDisconnect:
            return

    return app


async def _ws_message(service: Service, sid: str, text: str, config: ServeConfig) -> dict:
    op = None
    try:
        if len(text.encode("utf-8", "surrogatepass")) > config.max_body_bytes:
            raise StarletteHTTPException(413)
        try:
            msg = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"invalid JSON ({exc.msg})") from None
        if not isinstance(msg, dict):
            raise BadRequest("a message must be a JSON object with an \"op\"")
        op = msg.pop("op", None)
        if op == "stroke":
            out = await service.stroke(sid, stroke_from(StrokeIn.model_validate(msg), config.max_points))
        elif op == "undo":
            out = await service.undo(sid)
        elif op == "reset":
            out = await service.reset(sid)
        elif op == "state":
            out = await service.get(sid)
        else:
            raise BadRequest(f"unknown op {op!r}", hint='use "stroke", "undo", "reset" or "state"')
        return {"op": op, **out}
    except ValidationError as exc:
        status, body = 422, {"error": "invalid_request", "message": _validation_message(exc.errors()), "hint": None}
    except StarletteHTTPException:
        status, body = 413, {"error": "limit_exceeded", "message": f"message over {config.max_body_bytes} bytes", "hint": None}
    except Exception as exc:  # noqa: BLE001 - the socket stays open; the error is reported to the client
        status, body = classify(exc)[0], error_body(exc)
        if status == 500:
            log.exception("internal error on a websocket message")
    service.metrics.errors.labels(body["error"]).inc()
    return {"op": op if isinstance(op, str) else None, "status": status, **body}


__all__ = ["ServeConfig", "Service", "create_app", "stroke_from", "sketch_from"]
