"""Live catalogue updates: re-read the ``--gallery`` folder and swap it in without dropping a session.

``dcssa-rt index ... --out GALLERY --force`` (or ``--append``) replaces the folder atomically; then
SIGHUP or ``POST /v1/admin/reload`` makes a replica load it. The new gallery, its FAISS index and its
confidence calibrator are loaded and checked against the bundle in a worker thread while the old
catalogue keeps serving; only a complete, valid catalogue is swapped in, by one assignment of
``retriever.catalogue``. A stroke already prepared finishes on the catalogue it started with (the
session took it at ``prepare_stroke``); each session's next operation re-ranks its kept results on
the new one (``StrokeSession.refresh``). A folder that fails to load leaves the old catalogue in
place and the error is reported (to the admin caller, and on the log for SIGHUP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..errors import DcssaError
from ..search.catalogue import load_catalogue
from .photos import PhotoStore

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("dcssa.serve")

ADMIN_HINT = ("start the server with --api-keys KEYS and --admin NAME, and call with NAME's key; "
              "or send SIGHUP to the server process")


class Reloader:
    """Reloads one service's catalogue from its gallery folder, one reload at a time."""

    def __init__(self, service: Service, photos_root: str | Path | None) -> None:
        self.service = service
        self.photos_root = photos_root
        gallery = service.retriever.gallery
        self.folder = None if gallery is None else gallery.path
        self._lock = asyncio.Lock()
        self.reloads = 0

    async def reload(self) -> dict:
        """Load, check, swap; returns what changed. Raises :class:`DcssaError` (the old one stays)."""
        if self.folder is None:
            raise DcssaError("this server has no gallery folder to reload", hint="start it with --gallery FOLDER")
        async with self._lock:
            r = self.service.retriever
            try:
                new = await asyncio.to_thread(load_catalogue, self.folder, r.bundle)
            except (OSError, ValueError) as exc:  # unreadable files, a FAISS index it cannot read
                raise DcssaError(f"cannot load the catalogue ({type(exc).__name__}: {exc})", path=self.folder,
                                 hint="rebuild it with `dcssa-rt index PHOTOS --bundle BUNDLE --out GALLERY --force`")\
                    from None
            old = r.catalogue
            photos = PhotoStore(new.gallery, self.photos_root)
            r.catalogue = new  # the swap: every stroke prepared from now on ranks on `new`
            self.service.photos = photos
            self.reloads += 1
        log.warning("catalogue %s -> %s (%d photos, confidence %s) from %s", old.fingerprint, new.fingerprint,
                    new.size, "on" if new.confidence is not None else "off", self.folder)
        return {"catalogue": new.fingerprint, "previous": old.fingerprint, "gallery": new.size,
                "confidence": new.confidence is not None, "changed": new.fingerprint != old.fingerprint}

    async def on_signal(self) -> None:
        """SIGHUP: reload, reporting a failure on the log (there is no caller to answer)."""
        try:
            await self.reload()
        except DcssaError as exc:
            log.error("catalogue reload from %s failed, keeping %s: %s", self.folder,
                      self.service.retriever.catalogue.fingerprint, exc)

    def install_sighup(self) -> bool:
        """Reload on SIGHUP (only possible from the main thread's loop: not under a test client)."""
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task] = set()

        def fire() -> None:
            task = loop.create_task(self.on_signal())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, fire)
            return True
        return False


def forbidden(message: str) -> JSONResponse:
    return JSONResponse({"error": "forbidden", "message": message, "hint": ADMIN_HINT}, status_code=403)


def add_admin(app: FastAPI, service: Service, reloader: Reloader) -> None:
    """``POST /v1/admin/reload``, for the principal named by ``serve --admin`` only."""
    admin = service.config.admin

    # an operator's endpoint, like /metrics: documented in docs/guides/operations.md, not in the client API spec
    @app.post("/v1/admin/reload", include_in_schema=False)
    async def reload(request: Request) -> JSONResponse:
        """Swap in the gallery folder's current catalogue (gallery, index, calibrator); 409 keeps the old one."""
        principal = getattr(request.state, "principal", None)  # set by the API-key layer (--api-keys)
        if admin is None or principal is None:
            return forbidden("the admin endpoint needs --api-keys and --admin")
        if principal != admin:
            return forbidden(f"principal {principal!r} is not this server's --admin")
        try:
            return JSONResponse(await reloader.reload())
        except DcssaError as exc:
            service.metrics.errors.labels("reload_failed").inc()
            where = f"{exc.path}: " if exc.path else ""
            return JSONResponse({"error": "reload_failed", "message": f"{where}{exc.message}; still serving "
                                 f"catalogue {service.retriever.catalogue.fingerprint}", "hint": exc.hint},
                                status_code=409)
