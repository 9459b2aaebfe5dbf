"""What the HTTP and WebSocket handlers share: sessions, the encoder batcher, photos, metrics.

Every stroke goes ``prepare_stroke`` (thread) -> batcher (shared encoder call) -> ``finish_stroke``
(thread), under the session's lock, so one session's strokes apply in arrival order and sessions
never share state. A stroke that fails anywhere on the way is rolled back: the session stays as it
was before the request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import numpy as np

from ..errors import DcssaError
from ..session import QueryResult, Retriever, StrokeSession
from .batcher import DynamicBatcher
from .config import ServeConfig
from .errors import BadRequest
from .metrics import Metrics
from .photos import PhotoStore
from .sessions import Entry, SessionStore, session_memory_bound

T = TypeVar("T")


class Service:
    """One server's state; the batcher thread starts with the app (or the first stroke)."""

    def __init__(self, retriever: Retriever, config: ServeConfig, photos_root: str | Path | None = None) -> None:
        self.retriever = retriever
        self.config = config
        self.store = SessionStore(retriever, config,
                                  on_drop=lambda reason: self.metrics.dropped.labels(reason).inc())
        self.batcher: DynamicBatcher | None = None
        self.metrics = Metrics(max_batch=config.max_batch, active_sessions=lambda: len(self.store),
                               queued=lambda: self.batcher.queued if self.batcher else 0)
        self.photos = PhotoStore(retriever.gallery, photos_root)
        self.memory_bound = session_memory_bound(retriever)

    def start(self) -> None:
        if self.batcher is None:
            self.batcher = DynamicBatcher(self.retriever.encoder, output=self.retriever.encoder_output,
                                          max_batch=self.config.max_batch,
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
        doc = {"id": entry.id, "stroke": entry.session.num_strokes, "results": matches,
               "timings_ms": timings, "batch_size": batch}
        if res is not None and res.confidence is not None:  # absent without a calibrator, never made up
            thr = self.config.confidence_threshold
            doc["confidence"] = {"top1": res.confidence["top1"], "top10": res.confidence["top10"], "threshold": thr,
                                 "found": res.confidence["top1"] >= thr}
        return doc

    @staticmethod
    async def exclusive(entry: Entry, fn: Callable[[StrokeSession], Awaitable[T]]) -> T:
        """Run ``await fn(session)`` under the session's lock, to completion even if the client leaves.

        The lock is FIFO, so overlapping requests of one session apply in arrival order; the shield
        keeps a disconnect from cancelling a stroke halfway (canvas drawn, cache not yet updated).
        """

        async def run() -> T:
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
            session.abort_stroke()  # the encoder failed (or the queue was full): the stroke never happened
            raise
        result = await asyncio.to_thread(session.finish_stroke, feature, timings)  # rolls back on failure
        self.metrics.observe_stroke(result)
        return result, n

    async def _on(self, sid: str, op: Callable[[Entry, StrokeSession], Awaitable[dict]]) -> dict:
        entry = self.store.get(sid)
        return await self.exclusive(entry, lambda session: op(entry, session))

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
        async def add(entry: Entry, session: StrokeSession) -> dict:
            return self.state(entry, *await self._apply(session, xy))

        return await self._on(sid, add)

    async def undo(self, sid: str) -> dict:
        async def undo(entry: Entry, session: StrokeSession) -> dict:
            session.undo()
            return self.state(entry)

        return await self._on(sid, undo)

    async def reset(self, sid: str) -> dict:
        async def reset(entry: Entry, session: StrokeSession) -> dict:
            session.reset()
            return self.state(entry)

        return await self._on(sid, reset)

    async def get(self, sid: str) -> dict:
        async def read(entry: Entry, _session: StrokeSession) -> dict:  # after the strokes queued before it
            return self.state(entry)

        return await self._on(sid, read)

    def delete(self, sid: str) -> None:
        self.store.delete(sid)

    def health(self) -> dict:
        r = self.retriever
        return {"status": "ok", "family": r.bundle.family, "sessions": len(self.store), "max_sessions": self.config.max_sessions,
                "gallery": 0 if r.gallery is None else len(r.gallery), "backend": r.backend.name,
                "max_batch": self.config.max_batch, "batch_window_ms": self.config.batch_window_ms,
                "session_memory_bound_bytes": self.memory_bound["total"], "photos": self.photos.available,
                "confidence": r.confidence is not None, "confidence_threshold": self.config.confidence_threshold}
