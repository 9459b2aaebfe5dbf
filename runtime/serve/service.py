"""What the HTTP and WebSocket handlers share: sessions, the encoder batcher, photos, metrics.

Every stroke goes ``prepare_stroke`` (thread) -> batcher (shared encoder call) -> ``finish_stroke``
(thread), inside the session store's ``run`` (its lock, and with Redis its versioned commit), so one
session's strokes apply one after the other and sessions never share state. A stroke that fails
anywhere on the way is rolled back: the session stays as it was before the request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..errors import DcssaError
from ..progress import warning
from ..session import QueryResult, Retriever, StrokeSession
from .batcher import DynamicBatcher
from .config import ServeConfig
from .errors import BadRequest, OutOfStep
from .metrics import Metrics
from .photos import PhotoStore
from .ratelimit import LocalQuota, RedisQuota, TokenBucket
from .sessions import SessionStore, keys_of, make_store, session_memory_bound


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the API key's principal (None: keys off) and what the per-client limits count."""

    principal: str | None = None
    client: str = "local"
    admitted: bool = False  # this stroke already passed the rate limit (in the HTTP middleware)


ANONYMOUS = Caller()


def scoped(sid: str, principal: str | None) -> str:
    """The store's id of session ``sid`` as seen by ``principal``: with keys on, another principal's
    lookup of the same id names another (absent) session, so it gets 404 whatever replica it asks."""
    if principal is None:
        return sid
    tag = base64.urlsafe_b64encode(hashlib.sha256(principal.encode()).digest()[:9]).decode()
    return f"{sid}.{tag}"


def clamp_batch(config: ServeConfig, retriever: Retriever) -> ServeConfig:
    """``--max-batch`` cut to the sketch encoder's own limit (a TensorRT engine's profile), said once:
    a larger batch would fail every stroke of it."""
    limit = retriever.encoder.max_batch
    if limit is None or config.max_batch <= limit:
        return config
    warning(f"--max-batch {config.max_batch} is more than the sketch encoder's engine takes ({limit}): batching up "
            f"to {limit} (rebuild the engines with `dcssa-export engines --max-batch {config.max_batch}` for more)")
    return dataclasses.replace(config, max_batch=limit)


class Service:
    """One server's state; the batcher thread starts with the app (or the first stroke)."""

    def __init__(self, retriever: Retriever, config: ServeConfig, photos_root: str | Path | None = None) -> None:
        self.retriever = retriever
        self.config = config = clamp_batch(config, retriever)
        self.metrics = Metrics(max_batch=config.max_batch, active_sessions=lambda: len(self.store),
                               queued=lambda: self.batcher.queued if self.batcher else 0)
        self.store: SessionStore = make_store(
            retriever, config, on_drop=lambda reason: self.metrics.dropped.labels(reason).inc(),
            metrics=self.metrics)
        self.batcher: DynamicBatcher | None = None
        self.photos = PhotoStore(retriever.gallery, photos_root)
        self.memory_bound = session_memory_bound(retriever)
        self.limiter = None if config.rate_limit is None else TokenBucket(config.rate_limit, config.rate_burst)
        self.quota = None
        if config.max_sessions_per_client is not None:
            n = config.max_sessions_per_client
            self.quota = (RedisQuota(n, self.store, int(config.session_ttl * 1000),
                                     lambda sid: keys_of(sid)[0]) if self.store.kind == "redis"
                          else LocalQuota(n, lambda sid: sid in self.store))
        self.draining = False  # SIGTERM received: /healthz answers 503 (see .lifecycle)

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
    def state(self, sid: str, session: StrokeSession, result: QueryResult | None = None,
              batch: int | None = None) -> dict:
        """The response body; built under the session's lock so count and results agree.

        Without a fresh ``result`` (a read, undo, reset) the kept results are first re-ranked if the
        catalogue was swapped since they were computed, so what the client sees is the current one's.
        """
        if result is None:
            session.refresh()
        res = session.result if result is None else result
        matches = [] if res is None else [
            {"id": pid, "score": float(s), "url": "/v1/photos/" + quote(pid, safe="/")}
            for pid, s in zip(res.ids, res.scores)
        ]
        timings = {} if result is None else {k: round(v, 3) for k, v in result.timings.items()}
        doc = {"id": sid, "stroke": session.num_strokes, "results": matches,
               "timings_ms": timings, "batch_size": batch,
               "catalogue": self.retriever.catalogue.fingerprint if res is None else res.catalogue}
        if res is not None and res.confidence is not None:  # absent without a calibrator, never made up
            thr = self.config.confidence_threshold
            doc["confidence"] = {"top1": res.confidence["top1"], "top10": res.confidence["top10"], "threshold": thr,
                                 "found": res.confidence["top1"] >= thr}
        return doc

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

    # -- operations --------------------------------------------------------------------------------
    def admit(self, caller: Caller, strokes: int = 1) -> None:
        """The stroke rate limit, before any work is done or queued for the encoder (429 over it)."""
        if self.limiter is not None and strokes > 0 and not caller.admitted:
            self.limiter.take(caller.client, strokes)

    async def create(self, strokes: list[np.ndarray], caller: Caller = ANONYMOUS) -> dict:
        bound = self.retriever.max_strokes
        if len(strokes) > bound:
            raise BadRequest(f"the sketch has {len(strokes)} strokes, over the session bound of {bound}",
                             hint="send at most that many strokes (or undo some on the client)")
        self.admit(caller, len(strokes))
        if self.quota is not None:
            await self.quota.admit(caller.client)
        key = await self.store.create(scoped("", caller.principal))
        sid = key[: len(key) - len(scoped("", caller.principal))]
        self.metrics.created.inc()
        if self.quota is not None:
            await self.quota.opened(caller.client, key)

        async def rebuild(session: StrokeSession) -> dict:
            result, n = None, None
            for xy in strokes:
                result, n = await self._apply(session, xy)
            return self.state(sid, session, result, n)

        try:
            return await self.store.run(key, rebuild)
        except BaseException:
            with contextlib.suppress(DcssaError):
                await self.store.delete(key)  # a half-rebuilt session is of no use to the client
            raise

    async def stroke(self, sid: str, xy: np.ndarray, after: int | None = None, caller: Caller = ANONYMOUS) -> dict:
        """Add one stroke; with ``after`` (the client's count before it) a retried stroke applies once."""
        self.admit(caller)

        async def add(session: StrokeSession) -> dict:
            if after is not None and session.num_strokes != after:
                n = session.num_strokes
                if n == after + 1 and np.array_equal(session.strokes[-1], xy):
                    return self.state(sid, session)  # a retry of a stroke already applied: its reply was lost
                raise OutOfStep(f"the session holds {n} strokes; this stroke was sent after {after}",
                                hint="GET the session to see its state, or rebuild it with POST /v1/sessions and "
                                     "the strokes drawn so far")
            return self.state(sid, session, *await self._apply(session, xy))

        return await self.store.run(scoped(sid, caller.principal), add)

    async def undo(self, sid: str, caller: Caller = ANONYMOUS) -> dict:
        async def undo(session: StrokeSession) -> dict:
            session.undo()
            return self.state(sid, session)

        return await self.store.run(scoped(sid, caller.principal), undo)

    async def reset(self, sid: str, caller: Caller = ANONYMOUS) -> dict:
        async def reset(session: StrokeSession) -> dict:
            session.reset()
            return self.state(sid, session)

        return await self.store.run(scoped(sid, caller.principal), reset)

    async def get(self, sid: str, caller: Caller = ANONYMOUS) -> dict:
        async def read(session: StrokeSession) -> dict:  # after the strokes queued before it
            return self.state(sid, session)

        return await self.store.run(scoped(sid, caller.principal), read)

    async def check(self, sid: str, caller: Caller = ANONYMOUS) -> None:
        """404 unless ``caller`` may use the live session ``sid`` (a WebSocket's connect)."""
        await self.store.check(scoped(sid, caller.principal))

    async def delete(self, sid: str, caller: Caller = ANONYMOUS) -> None:
        key = scoped(sid, caller.principal)
        await self.store.delete(key)
        if self.quota is not None:
            await self.quota.closed(caller.client, key)

    def health(self) -> dict:
        r = self.retriever
        return {"status": "draining" if self.draining else "ok", "catalogue": r.catalogue.fingerprint,
                "family": r.bundle.family, "sessions": len(self.store),
                "session_store": self.store.kind, "max_sessions": self.config.max_sessions,
                "gallery": 0 if r.gallery is None else len(r.gallery), "backend": r.backend.name,
                "max_batch": self.config.max_batch, "batch_window_ms": self.config.batch_window_ms,
                "session_memory_bound_bytes": self.memory_bound["total"], "photos": self.photos.available,
                "confidence": r.confidence is not None, "confidence_threshold": self.config.confidence_threshold}
