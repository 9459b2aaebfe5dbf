"""Drawing sessions held in memory: unguessable ids, a time-to-live, an LRU cap, one lock each.

A session is cheap to lose: the client holds its strokes and can rebuild it with
``POST /v1/sessions {"strokes": [...]}``. So the store may drop sessions freely (idle longer than
the TTL, or least recently used when the cap is reached) and memory stays bounded by
``max_sessions x`` :func:`session_memory_bound`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import manifest as mf
from ..session import Retriever, StrokeSession
from .config import ServeConfig
from .errors import SessionNotFound

ID_BYTES = 18  # 144 random bits, 24 url-safe characters


@dataclass
class Entry:
    """One live session plus what the server needs to serve it safely."""

    id: str
    session: StrokeSession
    last_used: float
    # FIFO-fair: overlapping requests of one session are applied in the order they arrived
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SessionStore:
    """Sessions by id, least recently used first. Used from the event loop thread only."""

    def __init__(self, retriever: Retriever, config: ServeConfig, *, clock: Callable[[], float] = time.monotonic,
                 on_drop: Callable[[str], None] | None = None) -> None:
        self.retriever = retriever
        self.max_sessions = int(config.max_sessions)
        self.ttl = float(config.session_ttl)
        self.clock = clock
        self._on_drop = on_drop or (lambda _reason: None)
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, sid: object) -> bool:
        return sid in self._entries

    def sweep(self) -> int:
        """Drop sessions idle for longer than the TTL; they sit at the LRU end, so this is O(dropped)."""
        now, dropped = self.clock(), 0
        while self._entries:
            sid, entry = next(iter(self._entries.items()))
            if now - entry.last_used <= self.ttl:
                break
            del self._entries[sid]
            dropped += 1
            self._on_drop("expired")
        return dropped

    def create(self) -> Entry:
        self.sweep()
        while len(self._entries) >= self.max_sessions:
            self._entries.popitem(last=False)
            self._on_drop("evicted")
        sid = secrets.token_urlsafe(ID_BYTES)
        while sid in self._entries:  # pragma: no cover - 2**-144
            sid = secrets.token_urlsafe(ID_BYTES)
        entry = Entry(sid, self.retriever.session(), self.clock())
        self._entries[sid] = entry
        return entry

    def get(self, sid: str) -> Entry:
        """The live session ``sid`` (marked as just used), or :class:`SessionNotFound`."""
        self.sweep()
        entry = self._entries.get(sid)
        if entry is None:
            raise SessionNotFound(
                "unknown or expired session",
                hint="create a new one with POST /v1/sessions, sending the strokes drawn so far to rebuild it",
            )
        entry.last_used = self.clock()
        self._entries.move_to_end(sid)
        return entry

    def delete(self, sid: str) -> None:
        self.get(sid)
        del self._entries[sid]
        self._on_drop("deleted")


def session_memory_bound(retriever: Retriever, max_strokes: int | None = None) -> dict[str, int]:
    """Bytes one session can hold at the stroke limit (numpy payload; Python object overhead aside).

    - canvas: the uint8 raster, canvas^2 bytes;
    - undo history: int32 indices of the pixels each stroke turned on; a pixel is turned on by at
      most one stroke, so all strokes together hold at most canvas^2 of them;
    - K/V cache: two (max_strokes, D) float32 arrays, allocated when the session opens (untouched
      pages are not resident until strokes fill them);
    - per stroke kept for undo: the (D,) feature and (E,) embedding (float32), top-K indices
      (int64) and scores (float32);
    - in flight: one preprocessed (1, 3, H, W) float32 raster while a stroke is encoded.
    """
    t = int(max_strokes or retriever.max_strokes)
    d, e, k = retriever.bundle.feature_dim, retriever.bundle.embed_dim, retriever.topk
    pipeline = retriever.pipeline
    c = pipeline.recipe.canvas
    parts = {
        "canvas": c * c,
        "undo_history": 4 * c * c,
        "kv_cache": 2 * t * d * 4 if retriever.bundle.head_graph == mf.HEAD_STEP else 0,
        "per_stroke_results": t * (d * 4 + e * 4 + k * 8 + k * 4),
        "in_flight_raster": 3 * pipeline.height * pipeline.width * 4,
    }
    parts["total"] = sum(parts.values())
    return parts
