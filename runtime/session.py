"""Live drawing sessions: one encoder pass and one O(t D) head update per stroke, nothing recomputed.

Per stroke: draw the new stroke onto the kept canvas, preprocess, run the sketch encoder once, run
the causal stroke-head step against the session's K/V cache, search the photo matrix. A server
splits this into ``prepare_stroke`` / encoder / ``finish_stroke`` to batch encoder calls across
sessions; ``add_stroke`` is the same two phases around one encoder call. ``undo``
drops the last canvas stroke, cache row and result, and runs nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import manifest as mf
from .backends import Backend, get_backend
from .bundle import Bundle
from .errors import SessionError
from .gallery import Gallery
from .raster import Canvas
from .strokes import parse_stroke

PHASES = ("rasterise", "preprocess", "encode", "head", "search")


@dataclass
class QueryResult:
    """What the app shows after a stroke: the top-K photos, their scores, and where the time went."""

    stroke: int  # how many strokes the sketch has now
    ids: list[str]
    indices: np.ndarray
    scores: np.ndarray
    embedding: np.ndarray  # (E,) unit-norm sketch embedding
    feature: np.ndarray = field(repr=False)  # (D,) step feature of this partial sketch
    timings: dict[str, float] = field(default_factory=dict)  # ms per phase, plus "total"

    def to_dict(self) -> dict:
        return {
            "stroke": self.stroke,
            "results": [{"id": i, "score": round(float(s), 6)} for i, s in zip(self.ids, self.scores)],
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
        }


class Retriever:
    """A bundle's graphs loaded on one backend, plus the photo matrix; hands out sessions.

    Graphs are loaded once here and shared by every session, so opening a session is free.
    """

    def __init__(
        self,
        bundle: Bundle,
        gallery: Gallery | None = None,
        *,
        backend: str | Backend = "auto",
        precision: str = "fp32",
        topk: int = 10,
        threads: int | None = None,
        max_strokes: int | None = None,
    ) -> None:
        self.bundle = bundle
        self.gallery = gallery
        if gallery is not None:
            gallery.check_compatible(bundle)
        self.backend = backend if isinstance(backend, Backend) else get_backend(
            backend, threads=threads, cache_dir=bundle.path / ".cache", precision=precision)
        self.precision = precision
        self.topk = topk
        self.max_strokes = max_strokes or bundle.max_strokes
        self.preprocessor = bundle.sketch_preprocessor()
        sketch = bundle.manifest["preprocessing"]["sketch"]
        self.canvas_size = int(sketch.get("canvas", 400))
        self.frame = float(sketch.get("frame", 256))
        self.encoder = self._load(mf.SKETCH_ENCODER)
        if bundle.phase == 2:
            self.head = self._load(mf.HEAD_STEP)
        else:
            self.head = self._load(mf.SKETCH_PROJECTION)

    def _load(self, name: str):
        if self.precision in self.backend.execution_precisions:
            # bf16 is an execution mode of the fp32 file; only the encoder needs the speed
            mode = {"precision": self.precision} if name == mf.SKETCH_ENCODER else {}
            return self.backend.load(self.bundle.graph_path(name, "fp32"), label=name, **mode)
        # A graph without a reduced-precision version (the head, say) runs in fp32.
        precision = self.precision if self.precision in self.bundle.precisions(name) else "fp32"
        if name == mf.SKETCH_ENCODER and self.precision not in self.bundle.precisions(name):
            self.bundle.graph_entry(name, self.precision)  # raises: names what is available
        return self.backend.load(self.bundle.graph_path(name, precision), label=name)

    def session(self) -> StrokeSession:
        return StrokeSession(self)

    def describe(self) -> dict:
        return {
            **self.backend.describe(),
            "precision": self.precision,
            "phase": self.bundle.phase,
            "gallery": None if self.gallery is None else len(self.gallery),
        }


class StrokeSession:
    """One person drawing one sketch. Not thread-safe: serialise calls per session."""

    def __init__(self, retriever: Retriever) -> None:
        self.r = retriever
        d = retriever.bundle.feature_dim
        self.canvas = Canvas(canvas=retriever.canvas_size, frame=retriever.frame)
        self._keys = np.zeros((retriever.max_strokes, d), np.float32)
        self._values = np.zeros((retriever.max_strokes, d), np.float32)
        self._results: list[QueryResult] = []
        self._pending: dict[str, float] | None = None  # timings of a prepared, unfinished stroke

    @property
    def num_strokes(self) -> int:
        return len(self._results)

    @property
    def result(self) -> QueryResult | None:
        return self._results[-1] if self._results else None

    def add_stroke(self, points) -> QueryResult:
        """Add one stroke ((n, 2) points in the model's 256 frame, or any stroke JSON form)."""
        image = self.prepare_stroke(points)
        try:
            t0 = time.perf_counter()
            feature = self.r.encoder.run({"images": image})["features"]
            encode_ms = (time.perf_counter() - t0) * 1e3
        except BaseException:
            self.abort_stroke()  # keep canvas, cache and results in step
            raise
        return self.finish_stroke(feature, {"encode": encode_ms})

    def prepare_stroke(self, points) -> np.ndarray:
        """Phase 1 of a stroke: validate, draw onto the canvas, preprocess -> (1, 3, 299, 299).

        Split from :meth:`add_stroke` so a server can run the encoder on rasters of many sessions as
        one batch. Exactly one of :meth:`finish_stroke` or :meth:`abort_stroke` must follow.
        """
        if self._pending is not None:
            raise SessionError(
                "a stroke is already being processed in this session",
                hint="finish_stroke or abort_stroke it first (serialise calls per session)",
            )
        t = self.num_strokes
        if t >= self.r.max_strokes:
            raise SessionError(
                f"the session holds {t} strokes, its bound",
                hint="undo or reset, or raise max_strokes (memory grows by 2 x 2048 floats per stroke)",
            )
        xy = points if isinstance(points, np.ndarray) and points.ndim == 2 and points.shape[1] == 2 else None
        xy = parse_stroke(points) if xy is None else xy
        if not np.isfinite(xy).all() or len(xy) == 0:
            xy = parse_stroke(xy.tolist())  # raises with the offending point named
        t0 = time.perf_counter()
        self.canvas.add_stroke(xy)
        t1 = time.perf_counter()
        try:
            image = self.r.preprocessor(self.canvas.image)
        except BaseException:
            self.canvas.undo()
            raise
        t2 = time.perf_counter()
        self._pending = {"rasterise": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3}
        return image

    def abort_stroke(self) -> None:
        """Drop the stroke :meth:`prepare_stroke` drew (the encoder failed or was cancelled)."""
        if self._pending is not None:
            self._pending = None
            self.canvas.undo()

    def finish_stroke(self, feature: np.ndarray, timings: dict[str, float] | None = None) -> QueryResult:
        """Phase 2 of a stroke: the encoder's (1, D) feature -> head step, search, the new result.

        ``timings`` (ms) are merged into the result's, e.g. ``encode`` or a batcher's ``queue``;
        ``total`` is the sum of all phases. On failure the prepared stroke is dropped.
        """
        if self._pending is None:
            raise SessionError("finish_stroke without prepare_stroke", hint="call prepare_stroke first")
        r = self.r
        t = self.num_strokes
        feature = np.asarray(feature, np.float32).reshape(1, -1)
        try:
            t3 = time.perf_counter()
            if r.bundle.phase == 2:
                out = r.head.run({"feature": feature, "past_keys": self._keys[:t], "past_values": self._values[:t]})
                self._keys[t] = out["key"][0]
                self._values[t] = out["value"][0]
                embedding = out["embedding"][0]
            else:
                embedding = r.head.run({"features": feature})["embeddings"][0]
            t4 = time.perf_counter()
            if r.gallery is not None:
                idx, scores = r.gallery.search(embedding, r.topk)
                ids = [r.gallery.ids[i] for i in idx]
            else:
                idx, scores, ids = np.zeros(0, np.int64), np.zeros(0, np.float32), []
            t5 = time.perf_counter()
        except BaseException:
            self.abort_stroke()
            raise
        ms = {**self._pending, **(timings or {}), "head": (t4 - t3) * 1e3, "search": (t5 - t4) * 1e3}
        ms["total"] = float(sum(ms.values()))
        self._pending = None
        result = QueryResult(t + 1, ids, idx, scores, embedding.copy(), feature[0].copy(), ms)
        self._results.append(result)
        return result

    def undo(self) -> QueryResult | None:
        """Remove the last stroke; returns the result as it was before that stroke (None if empty)."""
        if self._pending is not None:
            raise SessionError("a stroke is being processed: undo after it finishes")
        if not self._results:
            raise SessionError("nothing to undo: the session has no strokes")
        self.canvas.undo()
        self._results.pop()
        # the K/V rows past num_strokes are simply ignored and overwritten by the next stroke
        return self.result

    def reset(self) -> None:
        self._pending = None
        self.canvas.reset()
        self._results.clear()

    def features(self) -> np.ndarray:
        """Step features of every partial sketch so far (t, D), oldest first."""
        return np.stack([r.feature for r in self._results]) if self._results else np.zeros((0, self.r.bundle.feature_dim), np.float32)
