"""Dynamic batching of sketch-encoder calls across sessions (Triton's dynamic batcher, in small).

The encoder dominates a stroke's cost and its batch axis is dynamic, so rasters from different
sessions that arrive within ``window_ms`` of the first waiting one run as ONE encoder call (up to
``max_batch``); the head update and the search stay per session. The queue is bounded: when it is
full, :meth:`DynamicBatcher.submit` refuses at once (the server answers 503) instead of letting
latency grow without limit.

The worker is a plain thread, not an asyncio task: it runs the blocking encoder without stalling
the event loop and does not depend on which loop (or test client) submits. ``max_batch=1`` or
``window_ms=0`` with an idle worker gives the unbatched baseline through the same code.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ..backends import Runner
from ..contract import manifest as mf
from .config import ServeConfig
from .errors import ServerBusy


@dataclass
class _Item:
    image: np.ndarray  # (1, 3, H, W)
    future: Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Counters for tests and /healthz (the Prometheus metrics are fed by ``on_batch``)."""

    batches: int = 0
    items: int = 0
    largest: int = 0


class DynamicBatcher:
    """Collects (1, 3, H, W) rasters, runs the encoder on their concatenation, splits the features.

    The limits default to :class:`~.config.ServeConfig`'s (``window_ms`` is its ``batch_window_ms``).
    """

    def __init__(
        self,
        runner: Runner,
        *,
        max_batch: int = ServeConfig.max_batch,
        window_ms: float = ServeConfig.batch_window_ms,
        max_queue: int = ServeConfig.max_queue,
        on_batch: Callable[[int, float], None] | None = None,
        output: str = mf.FEATURES,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.runner = runner
        self.output = output  # the encoder output handed to sessions (features, or ARNet's embeddings)
        self.max_batch = int(max_batch)
        self.window = max(float(window_ms), 0.0) / 1e3
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=max(int(max_queue), 1))
        self._on_batch = on_batch or (lambda _n, _ms: None)
        self.stats = BatchStats()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="dcssa-encoder-batcher", daemon=True)
        self._thread.start()

    # -- client side ---------------------------------------------------------------------------
    def submit(self, image: np.ndarray) -> Future:
        """Queue one raster; the future resolves to ``(feature (1, D), {"queue": ms, "encode": ms}, batch size)``."""
        if self._closed:
            raise ServerBusy("the server is shutting down", hint="retry against the restarted server")
        item = _Item(np.ascontiguousarray(image, dtype=np.float32), Future())
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise ServerBusy(
                f"the encoder queue is full ({self._queue.maxsize} strokes waiting)",
                hint="retry in a moment; the operator can raise --max-batch or add replicas",
            ) from None
        return item.future

    async def encode(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, float], int]:
        """Awaitable :meth:`submit` for asyncio handlers."""
        return await asyncio.wrap_future(self.submit(image))

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the queued work; later submits are refused."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # -- worker --------------------------------------------------------------------------------
    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        """``first`` plus whatever arrives before its window closes (or the batch is full)."""
        batch, stop = [first], False
        deadline = first.enqueued + self.window
        while len(batch) < self.max_batch:
            wait = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._collect(first)
            # a client that went away cancelled its future: do not spend the encoder on it
            batch = [it for it in batch if it.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            start = time.perf_counter()
            try:
                x = np.concatenate([it.image for it in batch]) if len(batch) > 1 else batch[0].image
                features = self.runner.run({mf.IMAGES: x})[self.output]
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting client
                for it in batch:
                    it.future.set_exception(exc)
                continue
            encode_ms = (time.perf_counter() - start) * 1e3
            n = len(batch)
            self.stats.batches += 1
            self.stats.items += n
            self.stats.largest = max(self.stats.largest, n)
            for i, it in enumerate(batch):
                waited = (start - it.enqueued) * 1e3
                it.future.set_result((features[i : i + 1].copy(), {"queue": waited, "encode": encode_ms}, n))
            try:
                self._on_batch(n, encode_ms)
            except Exception:  # noqa: BLE001 - metrics must never break serving
                pass
