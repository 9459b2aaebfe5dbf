"""Per-client limits: strokes per second (a token bucket) and live sessions per client.

The stroke limit is checked before a stroke is rasterised or queued for the encoder, so a refused
stroke costs microseconds and the batcher only ever sees admitted work: a client over its rate
cannot take the cores from the others. A client is its principal (with ``--api-keys``) or its
address (uvicorn takes it from X-Forwarded-For when the proxy is on loopback). Buckets are per
replica: behind N replicas a client gets up to N times the rate; nginx ``limit_req`` (deploy/)
bounds it at the edge.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .errors import RateLimited, TooManySessions

MAX_CLIENTS = 100_000  # buckets kept; the longest idle go first (a full bucket holds no state worth keeping)


class TokenBucket:
    """Buckets of ``burst`` tokens per client, refilled at ``rate`` per second.

    A request is admitted when its client has at least one token; it then costs ``cost`` tokens,
    possibly more than it had (a session rebuilt with its 20 strokes is admitted and the debt is
    paid before the next stroke), so a legitimate rebuild is never refused for its size.
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("TokenBucket: rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.clock, self.max_clients = float(rate), float(burst), clock, max_clients
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # client -> [tokens, at]

    def _tokens(self, client: str, now: float) -> list[float]:
        b = self._buckets.get(client)
        if b is None:
            b = self._buckets[client] = [self.burst, now]
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
            self._buckets.move_to_end(client)
        return b

    def wait(self, client: str) -> float:
        """Seconds until ``client`` may send again (0: now)."""
        b = self._tokens(client, self.clock())
        return 0.0 if b[0] >= 1 else (1 - b[0]) / self.rate

    def take(self, client: str, cost: float = 1.0) -> None:
        """Admit one request of ``client`` costing ``cost`` tokens, or raise :class:`RateLimited`."""
        b = self._tokens(client, self.clock())
        if b[0] < 1:
            wait = (1 - b[0]) / self.rate
            raise RateLimited(f"over the stroke rate limit of {self.rate:g}/s (burst {self.burst:g})",
                              retry_after=math.ceil(wait),
                              hint=f"retry after {math.ceil(wait)} s (the Retry-After header); "
                                   "draw more slowly or ask the operator for a higher --rate-limit")
        b[0] -= cost


def too_many_sessions(limit: int) -> TooManySessions:
    return TooManySessions(f"this client already holds {limit} live sessions (--max-sessions-per-client)",
                       retry_after=30,
                       hint="delete a session you no longer need (DELETE /v1/sessions/ID) or let one expire")


class LocalQuota:
    """Live sessions per client in this process (the in-memory store): ids pruned when the store lost them."""

    def __init__(self, limit: int, alive: Callable[[str], bool]) -> None:
        self.limit, self.alive = int(limit), alive
        self._held: dict[str, OrderedDict[str, None]] = {}

    async def admit(self, client: str) -> None:
        held = self._held.get(client)
        if held is None:
            return
        for sid in [s for s in held if not self.alive(s)]:
            del held[sid]
        if not held:
            del self._held[client]
        elif len(held) >= self.limit:
            raise too_many_sessions(self.limit)

    async def opened(self, client: str, sid: str) -> None:
        self._held.setdefault(client, OrderedDict())[sid] = None

    async def closed(self, client: str, sid: str) -> None:
        held = self._held.get(client)
        if held is not None:
            held.pop(sid, None)


# KEYS: the client's set. ARGV: the key prefix of a session's meta key, its suffix.
# Drops the sessions whose meta key is gone (expired, deleted) and returns how many are left.
_LIVE = """
local n = 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. sid .. ARGV[2]) == 1 then n = n + 1 else redis.call('SREM', KEYS[1], sid) end
end
return n
"""


class RedisQuota:
    """Live sessions per client across every replica (a Redis set per client, pruned on each check).

    Two creates racing past the check may both be admitted: the bound can be passed by the number
    of a client's concurrent creates, never by more.
    """

    def __init__(self, limit: int, store: Any, ttl_ms: int, meta_key: Callable[[str], str]) -> None:
        """``meta_key(sid)``: the Redis key that exists as long as session ``sid`` does."""
        self.limit, self.store, self.ttl_ms = int(limit), store, int(ttl_ms)
        prefix, suffix = meta_key("\0").split("\0")
        self._affix = [prefix, suffix]
        self._live = store.redis.register_script(_LIVE)

    @staticmethod
    def key(client: str) -> str:
        return f"dcssa:clients:{{{client}}}"

    async def admit(self, client: str) -> None:
        n = await self.store.call("count the client's sessions", self._live(keys=[self.key(client)], args=self._affix))
        if int(n) >= self.limit:
            raise too_many_sessions(self.limit)

    async def opened(self, client: str, sid: str) -> None:
        async def add():
            async with self.store.redis.pipeline(transaction=True) as p:
                p.sadd(self.key(client), sid)
                p.pexpire(self.key(client), self.ttl_ms)
                return await p.execute()

        await self.store.call("record the client's session", add())

    async def closed(self, client: str, sid: str) -> None:
        await self.store.call("forget the client's session", self.store.redis.srem(self.key(client), sid))
