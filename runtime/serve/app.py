"""The FastAPI app: live drawing sessions over HTTP and WebSocket, the drawing page, photos, metrics.

``create_app(retriever, ...)`` wires a loaded :class:`~dcssa.runtime.Retriever` to a
:class:`~.service.Service` (sessions, the encoder batcher, photos, metrics) and registers the
routes. Errors a client can cause come back as 4xx ``ErrorOut`` JSON; the server's own faults as
503 (backend unavailable, queue full: retry) or 500 (see :mod:`.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Literal

from fastapi import Body, Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from ..session import Retriever
from .auth import Access, OriginGuard
from .config import ServeConfig
from .handlers import install_handlers
from .inputs import sketch_from, stroke_from
from .keys import KeyRing
from .middleware import BodyLimit, CatalogueHeader
from .reload import Reloader, add_admin
from .schemas import ERRORS, Health, SessionState, SketchIn, StrokeIn
from .service import Caller, Service
from .websocket import add_websocket


def caller(request: Request) -> Caller:
    """Who sent the request, as :class:`~.auth.Access` found it."""
    state = request.state
    return Caller(getattr(state, "principal", None), getattr(state, "client", None) or "unknown",
                  getattr(state, "admitted", False))


def _page() -> str:
    return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")


def add_pages(app: FastAPI, service: Service) -> None:
    """The drawing page and the operator's endpoints (health, Prometheus metrics)."""
    page = _page()

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "draining"}})
    async def healthz() -> Response:
        """Liveness and readiness: 503 ``draining`` once the replica is stopping (SIGTERM)."""
        return JSONResponse(service.health(), status_code=503 if service.draining else 200)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)


def add_sessions(app: FastAPI, service: Service) -> None:
    """The session API: open (or rebuild), read, add a stroke, undo, reset, delete."""
    max_points = service.config.max_points

    @app.post("/v1/sessions", response_model=SessionState, response_model_exclude_unset=True, status_code=201, responses=ERRORS)
    async def create_session(body: SketchIn | None = Body(None), who: Caller = Depends(caller)) -> dict:
        """Open a session; with the strokes drawn so far it is rebuilt (after a restart or expiry)."""
        return await service.create(sketch_from(body, max_points), who)

    @app.get("/v1/sessions/{session_id}", response_model=SessionState, response_model_exclude_unset=True, responses=ERRORS)
    async def get_session(session_id: str, who: Caller = Depends(caller)) -> dict:
        return await service.get(session_id, who)

    @app.post("/v1/sessions/{session_id}/strokes", response_model=SessionState, response_model_exclude_unset=True, responses=ERRORS)
    async def add_stroke(session_id: str, body: StrokeIn, who: Caller = Depends(caller)) -> dict:
        """Add one stroke; returns the top-K photos for the sketch so far and the stroke's timings."""
        return await service.stroke(session_id, stroke_from(body, max_points), body.after, who)

    @app.post("/v1/sessions/{session_id}/undo", response_model=SessionState, response_model_exclude_unset=True, responses=ERRORS)
    async def undo(session_id: str, who: Caller = Depends(caller)) -> dict:
        """Remove the last stroke; returns the results as they were before it."""
        return await service.undo(session_id, who)

    @app.post("/v1/sessions/{session_id}/reset", response_model=SessionState, response_model_exclude_unset=True, responses=ERRORS)
    async def reset(session_id: str, who: Caller = Depends(caller)) -> dict:
        return await service.reset(session_id, who)

    @app.delete("/v1/sessions/{session_id}", status_code=204, response_class=Response, responses=ERRORS)
    async def delete_session(session_id: str, who: Caller = Depends(caller)) -> Response:
        await service.delete(session_id, who)
        return Response(status_code=204)


def add_photos(app: FastAPI, service: Service) -> None:
    """Gallery photos by id, for the result thumbnails."""

    @app.get(
        "/v1/photos/{photo_id:path}",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}, "application/octet-stream": {}}},
                   **{code: ERRORS[code] for code in (404, 422, 500)}},
    )
    async def photo(photo_id: str, size: Literal["thumb", "full"] = "thumb") -> Response:
        """A gallery photo by id: a cached JPEG thumbnail, or the original file with ?size=full."""
        if size == "full":
            return FileResponse(service.photos.path(photo_id))
        data = await asyncio.to_thread(service.photos.thumbnail, photo_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})


def add_access(app: FastAPI, service: Service) -> None:
    """Outermost first: the Origin policy, CORS for --cors-origin pages, then API keys (README "Running it in public")."""
    config = service.config
    refused = service.metrics.errors.labels
    keys = None if config.api_keys is None else KeyRing(config.api_keys)
    app.add_middleware(Access, keys=keys, on_refuse=lambda: refused("unauthorized").inc(),
                       principal_header=config.principal_header, limiter=service.limiter,
                       on_limit=lambda: refused("rate_limited").inc())
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["Retry-After"], max_age=600)
    app.add_middleware(OriginGuard, allowed=config.cors_origins, on_refuse=lambda: refused("origin_not_allowed").inc())


def create_app(retriever: Retriever, *, photos_root: str | Path | None = None, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving ``retriever``; the batcher thread starts with the app (or first stroke)."""
    config = config or ServeConfig()
    service = Service(retriever, config, photos_root)
    reloader = Reloader(service, photos_root)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        reloader.install_sighup()
        try:
            yield
        finally:
            service.close()
            await service.store.close()

    app = FastAPI(
        title="dcssa-rt serve",
        version="1",
        summary="Live sketch-based photo retrieval: one request per stroke, top-K photos back.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes,
                       on_reject=lambda: service.metrics.errors.labels("limit_exceeded").inc())
    app.add_middleware(CatalogueHeader, fingerprint=lambda: retriever.catalogue.fingerprint)
    add_access(app, service)
    app.state.service = service
    app.state.reloader = reloader
    install_handlers(app, service.metrics, config.max_body_bytes)
    add_pages(app, service)
    add_sessions(app, service)
    add_photos(app, service)
    add_websocket(app, service)
    add_admin(app, service, reloader)
    return app


__all__ = ["ServeConfig", "Service", "create_app", "stroke_from", "sketch_from"]
