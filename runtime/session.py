"""Live drawing sessions: one encoder pass and one O(t D) head update per stroke, nothing recomputed.

Per stroke: draw the new stroke onto the kept canvas, preprocess, run the sketch encoder once, run
the causal stroke-head step against the session's K/V cache, search the photo matrix. A server
splits this into ``prepare_stroke`` / encoder / ``finish_stroke`` to batch encoder calls across
sessions; ``add_stroke`` is the same two phases around one encoder call. ``undo``
drops the last canvas stroke, cache row and result, and runs nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from .backends import Backend, Runner, get_backend, thread_safe
from .contract import manifest as mf
from .contract.bundle import Bundle
from .errors import SessionError
from .search.catalogue import Catalogue
from .search.confidence import FEATURE_DEPTH, Calibrator, load_calibrator, stroke_features
from .search.gallery import Gallery
from .stroke.head import CausalHead
from .stroke.parse import as_stroke
from .stroke.pipeline import SketchPipeline

PHASES = ("rasterise", "preprocess", "encode", "head", "search")
#: what a Retriever runs unless told otherwise; the CLIs and the jobs take their defaults from here
DEFAULT_BACKEND = "auto"  # the fastest backend available here (backends.AUTO_ORDER)
DEFAULT_PRECISION = "fp32"
DEFAULT_TOPK = 10  # photos the app shows after each stroke


@dataclass
class QueryResult:
    """What the app shows after a stroke: the top-K photos, their scores, and where the time went."""

    stroke: int  # how many strokes the sketch has now
    ids: list[str]
    indices: np.ndarray
    scores: np.ndarray
    embedding: np.ndarray  # (E,) unit-norm sketch embedding
    feature: np.ndarray = field(repr=False)  # (D,) sketch-encoder output (ARNet: the embedding itself)
    timings: dict[str, float] = field(default_factory=dict)  # ms per phase, plus "total"
    signals: np.ndarray | None = field(default=None, repr=False)  # confidence.FEATURES of this stroke
    confidence: dict[str, float] | None = None  # {"top1": p, "top10": p}; None without a calibrator
    catalogue: str | None = None  # fingerprint of the catalogue that ranked it (Catalogue.fingerprint)

    def to_dict(self) -> dict:
        doc = {
            "stroke": self.stroke,
            "results": [{"id": i, "score": round(float(s), 6)} for i, s in zip(self.ids, self.scores)],
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
        }
        if self.confidence is not None:
            doc["confidence"] = {k: round(v, 6) for k, v in self.confidence.items()}
        return doc


class Retriever:
    """A bundle's graphs loaded on one backend, plus the photo matrix; hands out sessions.

    Graphs are loaded once here and shared by every session, so opening a session is free. Runners
    that are not thread-safe (native TensorRT) are serialised here, so a server's threads may share
    them.
    """

    def __init__(
        self,
        bundle: Bundle,
        gallery: Gallery | None = None,
        *,
        backend: str | Backend = DEFAULT_BACKEND,
        precision: str = DEFAULT_PRECISION,
        topk: int = DEFAULT_TOPK,
        threads: int | None = None,
        max_strokes: int | None = None,
        confidence: Calibrator | str | None = "auto",
    ) -> None:
        self.bundle = bundle
        if gallery is not None:
            gallery.check_compatible(bundle)
        # "auto": the gallery folder's calibrator (checked against bundle and gallery) if it has one
        #: what sessions search; a server replaces it whole (one assignment) to swap catalogues live
        self.catalogue = Catalogue.of(
            gallery, load_calibrator(bundle, gallery) if isinstance(confidence, str) else confidence)
        self.backend = backend if isinstance(backend, Backend) else get_backend(
            backend, threads=threads, cache_dir=bundle.path / ".cache", precision=precision)
        self.precision = precision
        self.topk = topk
        self.max_strokes = max_strokes or bundle.max_strokes
        self.pipeline = SketchPipeline(bundle.sketch_recipe)
        self.encoder = self.load(mf.SKETCH_ENCODER)
        self.encoder_output = bundle.sketch_output  # features for the head, or the embeddings (ARNet)
        self.head = None if bundle.head_graph is None else self.load(bundle.head_graph)

    @property
    def gallery(self) -> Gallery | None:
        return self.catalogue.gallery

    @gallery.setter
    def gallery(self, gallery: Gallery | None) -> None:
        self.catalogue = Catalogue.of(gallery, self.catalogue.confidence)

    @property
    def confidence(self) -> Calibrator | None:
        return self.catalogue.confidence

    @confidence.setter
    def confidence(self, confidence: Calibrator | None) -> None:
        self.catalogue = Catalogue.of(self.catalogue.gallery, confidence)

    def load(self, name: str) -> Runner:
        """Graph ``name`` at this retriever's precision on its backend.

        bf16 (an execution mode over the fp32 file) applies to the heavy graphs only; a graph with
        no file of the precision (the head, say) runs in fp32, but the sketch encoder must have it.
        """
        mode = None
        if self.precision in self.backend.execution_precisions:
            file_precision = "fp32"
            mode = self.precision if self.bundle.graph_spec(name).heavy else None
        elif self.precision in self.bundle.precisions(name) or name == mf.SKETCH_ENCODER:
            file_precision = self.precision  # graph_entry raises, naming what is available
        else:
            file_precision = "fp32"
        path = self.backend.artifact(self.bundle, name, file_precision)
        return thread_safe(self.backend.load(path, self.bundle.graph_spec(name, file_precision), precision=mode))

    def session(self) -> StrokeSession:
        return StrokeSession(self)

    def describe(self) -> dict:
        return {
            **self.backend.describe(),
            "precision": self.precision,
            "family": self.bundle.family,
            "phase": self.bundle.phase,
            "gallery": None if self.gallery is None else len(self.gallery),
            "confidence": self.confidence is not None,
        }


class StrokeSession:
    """One person drawing one sketch. Not thread-safe: serialise calls per session."""

    def __init__(self, retriever: Retriever) -> None:
        self.r = retriever
        self.canvas = retriever.pipeline.canvas()
        self.head = CausalHead(retriever.head, retriever.bundle.feature_dim, retriever.max_strokes)
        self._results: list[QueryResult] = []
        self._strokes: list[np.ndarray] = []  # (n, 2) float64 model-frame points, one per kept stroke
        self._pending: dict[str, float] | None = None  # timings of a prepared, unfinished stroke
        self._pending_xy: np.ndarray | None = None
        self._pending_catalogue: Catalogue | None = None  # the catalogue a prepared stroke will rank on

    @property
    def num_strokes(self) -> int:
        return len(self._results)

    @property
    def result(self) -> QueryResult | None:
        return self._results[-1] if self._results else None

    def add_stroke(self, points) -> QueryResult:
        """Add one stroke ((n, 2) points in the model's 256 frame, or a JSON stroke ``[[x, y], ...]``)."""
        image = self.prepare_stroke(points)
        try:
            t0 = time.perf_counter()
            feature = self.r.encoder.run({mf.IMAGES: image})[self.r.encoder_output]
            encode_ms = (time.perf_counter() - t0) * 1e3
        except BaseException:
            self.abort_stroke()  # keep canvas, cache and results in step
            raise
        return self.finish_stroke(feature, {"encode": encode_ms})

    def prepare_stroke(self, points) -> np.ndarray:
        """Phase 1 of a stroke: validate, draw onto the canvas, preprocess -> (1, 3, H, W).

        Split from :meth:`add_stroke` so a server can run the encoder on rasters of many sessions as
        one batch. Exactly one of :meth:`finish_stroke` or :meth:`abort_stroke` must follow.
        """
        if self._pending is not None:
            raise SessionError(
                "a stroke is already being processed in this session",
                hint="finish_stroke or abort_stroke it first (serialise calls per session)",
            )
        if self.num_strokes >= self.r.max_strokes:
            raise SessionError(
                f"the session holds {self.num_strokes} strokes, its bound",
                hint="undo or reset, or raise max_strokes (memory grows by 2 x 2048 floats per stroke)",
            )
        xy = as_stroke(points)  # the one validation (none for a parser's CheckedStroke); the canvas trusts it
        catalogue = self.refresh()  # taken once: a catalogue swapped meanwhile applies from the next stroke
        t0 = time.perf_counter()
        self.canvas.add_stroke(xy)
        t1 = time.perf_counter()
        try:
            image = self.r.pipeline.preprocess(self.canvas.image)
        except BaseException:
            self.canvas.undo()
            raise
        self._pending = {"rasterise": (t1 - t0) * 1e3, "preprocess": (time.perf_counter() - t1) * 1e3}
        self._pending_xy = np.asarray(xy, np.float64)
        self._pending_catalogue = catalogue
        return image

    def abort_stroke(self) -> None:
        """Drop the stroke :meth:`prepare_stroke` drew (the encoder failed or was cancelled)."""
        if self._pending is not None:
            self._pending = self._pending_catalogue = None
            self._pending_xy = None
            self.canvas.undo()

    def _search(self, catalogue: Catalogue, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gallery = catalogue.gallery
        if gallery is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return gallery.search(embedding, max(self.r.topk, FEATURE_DEPTH))  # the features need 10

    def _ranked(self, catalogue: Catalogue, result: QueryResult, idx: np.ndarray, scores: np.ndarray,
                prev: QueryResult | None) -> QueryResult:
        """``result`` with the ranking ``idx``/``scores`` of ``catalogue`` and the confidence it implies."""
        k = self.r.topk
        signals = confidence = None
        if len(idx):
            signals = stroke_features(scores, int(idx[0]), result.stroke, None if prev is None else prev.signals,
                                      None if prev is None or not len(prev.indices) else int(prev.indices[0]))
            if catalogue.confidence is not None:
                confidence = catalogue.confidence.predict(signals)
        ids = [] if catalogue.gallery is None else [catalogue.gallery.ids[i] for i in idx[:k]]
        return replace(result, ids=ids, indices=idx[:k], scores=scores[:k], signals=signals, confidence=confidence,
                       catalogue=catalogue.fingerprint)

    def refresh(self) -> Catalogue:
        """Re-rank the kept results on the retriever's current catalogue if another one ranked them.

        After a live catalogue swap the session continues as if it had been drawn on the new one:
        every kept result (what undo shows, what the next stroke's confidence features build on) is
        searched again from its stored embedding; no graph runs. Returns that catalogue.
        """
        catalogue = self.r.catalogue
        stale = next((i for i, res in enumerate(self._results) if res.catalogue != catalogue.fingerprint), None)
        if stale is not None and self._pending is None:
            for i in range(stale, len(self._results)):
                idx, scores = self._search(catalogue, self._results[i].embedding)
                prev = self._results[i - 1] if i else None
                self._results[i] = self._ranked(catalogue, self._results[i], idx, scores, prev)
        return catalogue

    def finish_stroke(self, feature: np.ndarray, timings: dict[str, float] | None = None) -> QueryResult:
        """Phase 2 of a stroke: the encoder's (1, D) output -> head step (if any), search, the new result.

        ``timings`` (ms) are merged into the result's, e.g. ``encode`` or a batcher's ``queue``;
        ``total`` is the sum of all phases. On failure the prepared stroke is dropped.
        """
        if self._pending is None:
            raise SessionError("finish_stroke without prepare_stroke", hint="call prepare_stroke first")
        feature = np.asarray(feature, np.float32).reshape(1, -1)
        try:
            t0 = time.perf_counter()
            self.head.length = self.num_strokes  # cache rows past the kept strokes are dropped (undo)
            embedding = self.head.step(feature)
            t1 = time.perf_counter()
            catalogue = self._pending_catalogue or self.r.catalogue
            idx, scores = self._search(catalogue, embedding)
            t2 = time.perf_counter()
        except BaseException:
            self.head.length = self.num_strokes  # a failed search drops the row the step appended
            self.abort_stroke()
            raise
        ms = {**self._pending, **(timings or {}), "head": (t1 - t0) * 1e3, "search": (t2 - t1) * 1e3}
        ms["total"] = float(sum(ms.values()))
        self._pending = self._pending_catalogue = None
        bare = QueryResult(self.num_strokes + 1, [], idx, scores, embedding.copy(), feature[0].copy(), ms)
        result = self._ranked(catalogue, bare, idx, scores, self.result)
        self._results.append(result)
        self._strokes.append(self._pending_xy)
        self._pending_xy = None
        return result

    def undo(self) -> QueryResult | None:
        """Remove the last stroke; returns the result as it was before that stroke (None if empty)."""
        if self._pending is not None:
            raise SessionError("a stroke is being processed: undo after it finishes")
        if not self._results:
            raise SessionError("nothing to undo: the session has no strokes")
        self.canvas.undo()
        self._results.pop()
        self._strokes.pop()
        self.head.pop()
        return self.result

    def reset(self) -> None:
        self._pending = self._pending_catalogue = None
        self._pending_xy = None
        self.canvas.reset()
        self.head.reset()
        self._results.clear()
        self._strokes.clear()

    # -- state a shared session store keeps (see dcssa.runtime.serve.sessions) ----------------------
    @property
    def strokes(self) -> list[np.ndarray]:
        """The kept strokes as drawn, (n, 2) float64 in the model frame, oldest first."""
        return list(self._strokes)

    def kv_rows(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The stroke head's cached key and value rows ``start:stop`` (zero rows without a step head)."""
        n = self.head.length if self.head.stateful else 0
        stop = n if stop is None else min(stop, n)
        return self.head.keys[start:stop], self.head.values[start:stop]

    def results(self, start: int = 0) -> list[QueryResult]:
        return self._results[start:]

    @classmethod
    def restore(cls, retriever: Retriever, strokes: list[np.ndarray], keys: np.ndarray, values: np.ndarray,
                results: list[QueryResult]) -> StrokeSession:
        """A session equal to one that drew ``strokes``, without running any graph.

        The canvas is re-rasterised from the strokes (the only part that cannot be stored compactly);
        the head's cache rows and the per-stroke results are taken as given, so the next stroke gives
        exactly what the original session would have given.
        """
        if len(results) != len(strokes):
            raise SessionError(f"restore: {len(strokes)} strokes but {len(results)} results")
        s = cls(retriever)
        if len(strokes) > s.r.max_strokes:
            raise SessionError(f"restore: {len(strokes)} strokes, over the bound of {s.r.max_strokes}")
        for xy in strokes:
            s.canvas.add_stroke(xy)
        if s.head.stateful:
            t = len(strokes)
            if len(keys) != t or len(values) != t:
                raise SessionError(f"restore: {len(keys)} cache rows for {t} strokes")
            s.head.keys[:t] = keys
            s.head.values[:t] = values
            s.head.length = t
        s._strokes = [np.asarray(xy, np.float64) for xy in strokes]
        s._results = list(results)
        return s

    def features(self) -> np.ndarray:
        """Step features of every partial sketch so far (t, D), oldest first."""
        if not self._results:
            return np.zeros((0, self.r.bundle.feature_dim), np.float32)
        return np.stack([r.feature for r in self._results])
