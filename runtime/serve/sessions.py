"""Where drawing sessions live: one :class:`SessionStore` protocol, an in-memory and a Redis store.

A session is cheap to lose: the client holds its strokes and can rebuild it with
``POST /v1/sessions {"strokes": [...]}``. The in-memory store (the default) keeps every session in
this process, with a TTL and an LRU cap. The Redis store keeps what a session *is* in Redis (its
strokes, the stroke head's K/V rows, its per-stroke results, a version number, all under one TTL)
so that any replica can serve any stroke; each replica keeps only a small LRU cache of live
sessions keyed by (session, version) and rebuilds a missing one from the stored strokes.

Both stores run an operation as ``await store.run(sid, op)``: ``op`` gets a :class:`StrokeSession`
that is current, may change it, and the store makes the change durable. Within a process the
operations of one session are serialised by a FIFO lock; across replicas the Redis store commits
with a version check in a Lua script (optimistic concurrency: no lock is ever held in Redis, so a
replica killed mid-stroke leaves nothing behind to expire).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import numpy as np

from ..contract import manifest as mf
from ..errors import DcssaError
from ..extras import require
from ..session import QueryResult, Retriever, StrokeSession
from .config import ServeConfig, redact
from .errors import ServerBusy, SessionNotFound, StoreUnavailable

ID_BYTES = 18  # 144 random bits, 24 url-safe characters
T = TypeVar("T")
Op = Callable[[StrokeSession], Awaitable[T]]

NOT_FOUND_HINT = "create a new one with POST /v1/sessions, sending the strokes drawn so far to rebuild it"


def not_found() -> SessionNotFound:
    return SessionNotFound("unknown or expired session", hint=NOT_FOUND_HINT)


async def shielded(coro: Awaitable[T]) -> T:
    """Run ``coro`` to completion even if the awaiting request is cancelled (the client left).

    A stroke cancelled halfway would leave the canvas drawn but the cache not updated (or, with
    Redis, computed but not committed); the shield lets it finish and its result be dropped.
    """
    task = asyncio.ensure_future(coro)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # never "exception not retrieved"
    return await asyncio.shield(task)


class SessionStore(Protocol):
    """What the service needs from a session store (see the module docstring)."""

    kind: str

    def __len__(self) -> int:
        """Sessions held in this process (all of them in memory; the local cache with Redis)."""

    async def create(self, suffix: str = "") -> str:
        """A new, empty session's id (random, then ``suffix``: the caller's scope, see serve.service)."""

    async def run(self, sid: str, op: Op[T]) -> T:
        """``await op(session)`` on the current state of ``sid``, exclusively; its changes are kept."""

    async def check(self, sid: str) -> None:
        """Raise :class:`SessionNotFound` unless ``sid`` is live (and refresh its TTL)."""

    async def delete(self, sid: str) -> None:
        ...

    async def close(self) -> None:
        ...


# -- in memory ---------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One live session plus what the server needs to serve it safely."""

    id: str
    session: StrokeSession
    last_used: float
    # FIFO-fair: overlapping requests of one session are applied in the order they arrived
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class MemoryStore:
    """Sessions by id in this process, least recently used first. Used from the event loop only."""

    kind = "memory"

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

    def create_entry(self, suffix: str = "") -> Entry:
        self.sweep()
        while len(self._entries) >= self.max_sessions:
            self._entries.popitem(last=False)
            self._on_drop("evicted")
        sid = secrets.token_urlsafe(ID_BYTES) + suffix
        while sid in self._entries:  # pragma: no cover - 2**-144
            sid = secrets.token_urlsafe(ID_BYTES) + suffix
        entry = Entry(sid, self.retriever.session(), self.clock())
        self._entries[sid] = entry
        return entry

    async def create(self, suffix: str = "") -> str:
        return self.create_entry(suffix).id

    def get(self, sid: str) -> Entry:
        """The live session ``sid`` (marked as just used), or :class:`SessionNotFound`."""
        self.sweep()
        entry = self._entries.get(sid)
        if entry is None:
            raise not_found()
        entry.last_used = self.clock()
        self._entries.move_to_end(sid)
        return entry

    async def run(self, sid: str, op: Op[T]) -> T:
        entry = self.get(sid)

        async def locked() -> T:
            async with entry.lock:
                return await op(entry.session)

        return await shielded(locked())

    async def check(self, sid: str) -> None:
        self.get(sid)

    async def delete(self, sid: str) -> None:
        self.get(sid)
        del self._entries[sid]
        self._on_drop("deleted")

    async def close(self) -> None:
        self._entries.clear()


# -- Redis -------------------------------------------------------------------------------------------

# KEYS: state, rows. ARGV: expected version, rows kept, ttl (ms), store format, then one packed row
# (pack_row) per appended stroke. Returns the new version, -1 for a session that is gone, -2 for a
# stale version (retry).
# The shebang (Redis >= 7, Valkey) makes a full server (maxmemory, noeviction) refuse the whole
# script up front, instead of letting it write halfway once its first write has passed.
COMMIT_SCRIPT = """#!lua
local v = redis.call('HGET', KEYS[1], 'version')
if not v then return -1 end
if tonumber(v) ~= tonumber(ARGV[1]) then return -2 end
local keep = tonumber(ARGV[2])
if keep == 0 then redis.call('DEL', KEYS[2]) else redis.call('LTRIM', KEYS[2], 0, keep - 1) end
for j = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[j]) end
local nv = tonumber(v) + 1
redis.call('HSET', KEYS[1], 'version', nv, 'strokes', redis.call('LLEN', KEYS[2]), 'format', ARGV[4])
for i = 1, 2 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
return nv
"""

# KEYS: state, rows. ARGV: ttl (ms). The version (nil: no such session); refreshes the TTL.
# Allowed when Redis is full: it only re-times keys, so reads still work then.
TOUCH_SCRIPT = """#!lua flags=allow-oom
local v = redis.call('HGET', KEYS[1], 'version')
if not v then return nil end
for i = 1, 2 do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return tonumber(v)
"""

COMMIT_ATTEMPTS = 8  # a conflicting commit means another replica applied a stroke: rebuild and retry

#: the stored layout's version, kept in the state hash. Format 1 (dcssa-rt before it) kept four keys
#: (meta, strokes, kv, results) with float32 K/V rows and JSON results; format 2 keeps one packed row
#: per stroke (pack_row) with float16 K/V rows: under half the bytes, the same results.
STORE_FORMAT = 2
KV_DTYPE = np.dtype("<f2")  # what CausalHead rounds its cache rows to: stored as is, nothing lost


def keys_of(sid: str) -> list[str]:
    """The session's keys (state hash, rows list); the hash tag keeps them in one Redis Cluster slot.

    The names differ from format 1's, so a replica of either version finds no session of the other
    and answers 404 (the client rebuilds it) instead of misreading it.
    """
    return [f"dcssa:{{{sid}}}:{part}" for part in ("state", "rows")]


def legacy_key(sid: str) -> str:
    """Format 1's meta hash: only looked at to say why a session is not found."""
    return f"dcssa:{{{sid}}}:meta"


# one stored stroke: format, bytes of its points, bytes of its result; then points, result, K/V row.
# One list element per stroke: one allocation in Redis, whose rounding up (jemalloc size classes)
# the points and the result fill, where separate lists paid it for the K/V row alone.
_ROW = struct.Struct("<BII")


def pack_row(points: np.ndarray, result: QueryResult, kv: np.ndarray | None) -> bytes:
    """A stroke as stored: its (n, 2) points (float64, exact), its result, its (2, D) K/V row."""
    xy = np.asarray(points, "<f8").tobytes()
    res = encode_result(result)
    rows = b"" if kv is None else np.asarray(kv).astype(KV_DTYPE).tobytes()
    return b"".join([_ROW.pack(STORE_FORMAT, len(xy), len(res)), xy, res, rows])


def unpack_row(raw: bytes) -> tuple[np.ndarray, QueryResult, np.ndarray]:
    """``pack_row`` undone: points (n, 2) float64, the result, K/V (2, D) float32 ((2, 0) if none)."""
    fmt, n_xy, n_res = _ROW.unpack_from(raw)
    if fmt != STORE_FORMAT:
        raise ValueError(f"stored row in format {fmt}, not {STORE_FORMAT}")
    at = _ROW.size
    xy = np.frombuffer(raw, "<f8", n_xy // 8, at).reshape(-1, 2).astype(np.float64)
    result = decode_result(raw[at + n_xy : at + n_xy + n_res])
    kv = np.frombuffer(raw, KV_DTYPE, offset=at + n_xy + n_res).astype(np.float32)
    return xy, result, kv.reshape(2, -1)


# format, JSON header bytes, top-K, embedding dims, signals (NO_SIGNALS: None)
_RESULT = struct.Struct("<BHHHH")
NO_SIGNALS = 0xFFFF


def encode_result(r: QueryResult) -> bytes:
    """A stroke's result as stored: what the client is shown again after an undo, and the confidence
    signals the next stroke's features build on. Arrays are packed as their bytes (exact, and half
    the size of the JSON they were in format 1); the ids and confidence stay a small JSON header."""
    head = {"stroke": r.stroke, "ids": r.ids}
    if r.confidence is not None:
        head["confidence"] = {k: float(v) for k, v in r.confidence.items()}
    if r.catalogue is not None:
        head["catalogue"] = r.catalogue  # a replica on another catalogue re-ranks it (StrokeSession.refresh)
    text = json.dumps(head, separators=(",", ":")).encode()
    signals = np.zeros(0, "<f8") if r.signals is None else np.asarray(r.signals, "<f8")
    return b"".join([
        _RESULT.pack(STORE_FORMAT, len(text), len(r.indices), len(r.embedding),
                     NO_SIGNALS if r.signals is None else len(signals)),
        text, np.asarray(r.indices, "<i4").tobytes(), np.asarray(r.scores, "<f4").tobytes(),
        np.asarray(r.embedding, "<f4").tobytes(), signals.tobytes()])


def decode_result(raw: bytes) -> QueryResult:
    fmt, n_text, k, e, n_sig = _RESULT.unpack_from(raw)
    if fmt != STORE_FORMAT:
        raise ValueError(f"stored result in format {fmt}, not {STORE_FORMAT}")
    at = _RESULT.size
    head = json.loads(raw[at : at + n_text])
    at += n_text
    parts = []
    for dtype, n in (("<i4", k), ("<f4", k), ("<f4", e), ("<f8", 0 if n_sig == NO_SIGNALS else n_sig)):
        parts.append(np.frombuffer(raw, dtype, n, at))
        at += parts[-1].nbytes
    idx, scores, emb, signals = parts
    # the step feature is not stored (K/V rows carry what the head needs): restored results have none
    return QueryResult(head["stroke"], list(head["ids"]), idx.astype(np.int64), scores.astype(np.float32),
                       emb.astype(np.float32), np.zeros(0, np.float32), {},
                       None if n_sig == NO_SIGNALS else signals.astype(np.float64), head.get("confidence"),
                       head.get("catalogue"))


PASSWORD_ENV = "DCSSA_REDIS_PASSWORD"


def password_from_env(url: str) -> dict[str, str]:
    """The Redis password from $DCSSA_REDIS_PASSWORD when the URL carries none: it then stays out of
    the command line (``ps``) and the compose file."""
    password = os.environ.get(PASSWORD_ENV)
    return {"password": password} if password and urlsplit(url).password is None else {}


def redis_url(url: str) -> str:
    """``url`` if it names a Redis server, else a :class:`DcssaError` naming the accepted forms."""
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise DcssaError(f"--session-store {redact(url)!r}: not 'memory' nor a redis:// URL",
                         hint="use memory, or redis://HOST:6379/0 (rediss:// for TLS, unix:///path/redis.sock)")
    return url


@dataclass
class _Cached:
    version: int
    session: StrokeSession
    last_used: float


class RedisStore:
    """Sessions in Redis (or Valkey), shared by every replica; a local (session, version) cache."""

    kind = "redis"

    def __init__(self, retriever: Retriever, config: ServeConfig, url: str, *,
                 clock: Callable[[], float] = time.monotonic, on_drop: Callable[[str], None] | None = None,
                 metrics: Any = None) -> None:
        aioredis = require("redis.asyncio", "--session-store redis://")
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        self.retriever = retriever
        self.url = redis_url(url)
        self.ttl_ms = max(1, int(config.session_ttl * 1000))
        self.timeout = float(config.store_timeout)
        self.max_local = int(config.max_sessions)
        self.clock = clock
        self._on_drop = on_drop or (lambda _reason: None)
        self.metrics = metrics  # a serve Metrics: rebuild and store times, conflicts (None: not recorded)
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        # bounded: one connect and one reply timeout, no retries inside the client (the HTTP client
        # retries); a broken connection is replaced on the next command, so the replica recovers alone
        self.redis = aioredis.from_url(self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                                       retry=Retry(NoBackoff(), 0), health_check_interval=30,
                                       **password_from_env(url))
        self._commit = self.redis.register_script(COMMIT_SCRIPT)
        self._touch = self.redis.register_script(TOUCH_SCRIPT)
        self._local: OrderedDict[str, _Cached] = OrderedDict()
        self._locks: dict[str, list] = {}  # sid -> [lock, users]: FIFO within this replica
        self.stateful = retriever.head is not None and bool(retriever.head.spec.state)

    def __len__(self) -> int:
        return len(self._local)

    async def call(self, what: str, coro: Awaitable[T]) -> T:
        """A Redis command of another part of the server (the session quota), with the store's errors."""
        return await self._call(what, coro)

    async def _call(self, what: str, coro: Awaitable[T]) -> T:
        """A Redis command; any store failure becomes a 503 ``store_unavailable``."""
        try:
            return await coro
        except self._errors as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                raise StoreUnavailable(
                    f"the session store is full (Redis maxmemory reached) while trying to {what}; "
                    "nothing was applied",
                    hint=f"retry later; operators: raise maxmemory of the Redis server at {self._where()} "
                         "or lower --session-ttl (sessions leave by their TTL)") from None
            raise StoreUnavailable(
                f"the session store is unreachable or failing while trying to {what} "
                f"({type(exc).__name__}: {exc}); nothing was applied",
                hint=f"retry in a moment; operators: check the Redis server at {self._where()}") from None

    def _where(self) -> str:
        parts = urlsplit(self.url)
        return parts.hostname and f"{parts.hostname}:{parts.port or 6379}" or self.url

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except self._errors:
            return False

    # -- the local cache -----------------------------------------------------------------------------
    def _remember(self, sid: str, version: int, session: StrokeSession) -> None:
        self._local[sid] = _Cached(version, session, self.clock())
        self._local.move_to_end(sid)
        now = self.clock()
        while self._local:
            old, c = next(iter(self._local.items()))
            if len(self._local) <= self.max_local and now - c.last_used <= self.ttl_ms / 1000:
                break
            del self._local[old]

    def _forget(self, sid: str) -> None:
        self._local.pop(sid, None)

    async def _load(self, sid: str) -> tuple[int, StrokeSession]:
        """The session as stored (one MULTI: a consistent snapshot), its canvas re-rasterised."""
        state, rows_key = keys_of(sid)

        async def fetch():
            async with self.redis.pipeline(transaction=True) as p:
                p.hmget(state, "version", "strokes", "format")
                p.lrange(rows_key, 0, -1)
                return await p.execute()

        (version, count, fmt), rows = await self._call("load the session", fetch())
        if version is None or int(count or 0) != len(rows):
            raise not_found()  # gone, or its rows expired first: rebuilt by the client
        if rows and int(fmt or 0) != STORE_FORMAT:
            raise SessionNotFound(f"this session was stored in format {int(fmt or 1)} by another dcssa-rt "
                                  f"version; this replica reads format {STORE_FORMAT}", hint=NOT_FOUND_HINT)
        t0 = time.perf_counter()
        d = self.retriever.bundle.feature_dim
        xs, results, kv = [], [], []
        for raw in rows:
            xy, result, row = unpack_row(raw)
            xs.append(xy)
            results.append(result)
            kv.append(row)
        if self.stateful:
            if any(r.shape[1] != d for r in kv):
                raise not_found()  # written by a replica serving another bundle
            k = np.stack([r[0] for r in kv]) if kv else np.zeros((0, d), np.float32)
            v = np.stack([r[1] for r in kv]) if kv else np.zeros((0, d), np.float32)
        else:
            k = v = np.zeros((0, d), np.float32)
        session = StrokeSession.restore(self.retriever, xs, k, v, results)
        if self.metrics is not None:
            self.metrics.observe_rebuild((time.perf_counter() - t0) * 1e3)
        return int(version), session

    # -- the protocol --------------------------------------------------------------------------------
    async def create(self, suffix: str = "") -> str:
        sid = secrets.token_urlsafe(ID_BYTES) + suffix
        meta = keys_of(sid)[0]

        async def make():
            async with self.redis.pipeline(transaction=True) as p:
                p.hsetnx(meta, "version", 0)
                p.hsetnx(meta, "strokes", 0)
                p.hsetnx(meta, "format", STORE_FORMAT)
                p.pexpire(meta, self.ttl_ms)
                return await p.execute()

        created, _, _, _ = await self._call("create a session", make())
        if not created:  # pragma: no cover - 2**-144
            return await self.create(suffix)
        self._remember(sid, 0, self.retriever.session())
        return sid

    async def _version(self, sid: str) -> int:
        version = await self._call("read the session", self._touch(keys=keys_of(sid), args=[self.ttl_ms]))
        if version is None:
            self._forget(sid)
            if await self._call("read the session", self.redis.exists(legacy_key(sid))):
                raise SessionNotFound("this session was stored in format 1 (float32 K/V rows) by an older "
                                      f"dcssa-rt; this replica reads format {STORE_FORMAT}", hint=NOT_FOUND_HINT)
            raise not_found()
        return int(version)

    async def check(self, sid: str) -> None:
        await self._version(sid)

    def _rows(self, session: StrokeSession, start: int) -> list[bytes]:
        """Strokes ``start:`` packed for the commit script, one row each (see :func:`pack_row`)."""
        keys, values = session.kv_rows(start)
        return [pack_row(xy, res, np.stack([keys[i], values[i]]) if self.stateful else None)
                for i, (xy, res) in enumerate(zip(session.strokes[start:], session.results(start)))]

    async def _attempt(self, sid: str, op: Op[T]) -> tuple[bool, T | None]:
        """One read-apply-commit round; ``(False, None)`` when another replica committed first."""
        t0 = time.perf_counter()
        version = await self._version(sid)
        cached = self._local.get(sid)
        if cached is not None and cached.version == version:
            session = cached.session
        else:
            version, session = await self._load(sid)
        self._forget(sid)  # until committed, the local copy may be ahead of the store
        before = session.num_strokes
        t1 = time.perf_counter()
        try:
            value = await op(session)
        except BaseException:
            if session.num_strokes == before:  # refused or rolled back (bad stroke, nothing to undo): unchanged
                self._remember(sid, version, session)
            raise
        t2 = time.perf_counter()
        after = session.num_strokes
        if after == before:  # a read, or an undo/reset with nothing to drop: nothing to commit
            self._remember(sid, version, session)
            self._observe(t1 - t0)
            return True, value
        keep = min(before, after)
        new = await self._call("save the stroke", self._commit(
            keys=keys_of(sid), args=[version, keep, self.ttl_ms, STORE_FORMAT, *self._rows(session, keep)]))
        self._observe(t1 - t0 + time.perf_counter() - t2)
        if new == -1:
            raise not_found()
        if new == -2:  # another replica committed first: reload and apply again
            if self.metrics is not None:
                self.metrics.conflicts.inc()
            return False, None
        self._remember(sid, int(new), session)
        return True, value

    def _observe(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.store.observe(seconds)

    async def run(self, sid: str, op: Op[T]) -> T:
        slot = self._locks.setdefault(sid, [asyncio.Lock(), 0])
        slot[1] += 1

        async def locked() -> T:
            try:
                async with slot[0]:
                    for _ in range(COMMIT_ATTEMPTS):
                        done, value = await self._attempt(sid, op)
                        if done:
                            return value
                    raise ServerBusy("this session is being changed from several places at once",
                                     hint="send one session's strokes one at a time, then retry")
            finally:
                slot[1] -= 1
                if slot[1] == 0:
                    self._locks.pop(sid, None)

        return await shielded(locked())

    async def delete(self, sid: str) -> None:
        self._forget(sid)
        if not await self._call("delete the session", self.redis.delete(*keys_of(sid))):
            raise not_found()
        self._on_drop("deleted")

    async def memory_usage(self, sid: str) -> int:
        """Bytes Redis holds for the session (MEMORY USAGE of its keys, samples=0: exact)."""
        total = 0
        for k in keys_of(sid):
            total += int(await self._call("measure", self.redis.memory_usage(k, samples=0)) or 0)
        return total

    async def close(self) -> None:
        self._local.clear()
        try:
            await self.redis.aclose()
        except self._errors:  # pragma: no cover - closing a dead connection
            pass


def make_store(retriever: Retriever, config: ServeConfig, **kwargs: Any) -> SessionStore:
    """The store ``config.session_store`` names: ``memory`` or a ``redis://`` URL."""
    if config.session_store == "memory":
        kwargs.pop("metrics", None)
        return MemoryStore(retriever, config, **kwargs)
    return RedisStore(retriever, config, config.session_store, **kwargs)


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
