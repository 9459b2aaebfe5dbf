"""Turning one dataset sketch into per-step embeddings, the live way or the published way.

``causal``: the answer at step t is what a live session shows after step t, the last row of the
stroke head over steps 1..t. With ``--steps strokes`` this IS the runtime's
:class:`~dcssa.runtime.session.StrokeSession` (one ``add_stroke`` per stroke), the code path of
``dcssa-rt query``; with ``points20`` the same encoder and head-step runners are fed the authors'
point-sliced rasters instead of strokes.

``paper``: the authors' protocol, 20-step point slicing and the ``stroke_head_full`` graph over the
whole sequence, so step t also attends to later steps (non-causal, SPEC section 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract import manifest as mf
from ..data.qmul import Sketch
from ..errors import BackendError
from ..session import Retriever
from ..stroke.head import CausalHead
from ..stroke.parse import points_to_strokes
from . import PROTOCOLS, STEP_KINDS
from .metrics import step_ranks

PAPER_STEPS = 20


def points20_marks(n: int, steps: int = PAPER_STEPS) -> list[int]:
    """Point indices after which the authors keep a partial raster (see ``rasterize_steps``)."""
    return sorted({int(v) for v in np.round(np.linspace(0, n, steps + 1)[1:]) if v < n})


def completion(points: np.ndarray, kind: str) -> np.ndarray:
    """Share of the sketch's points drawn at each step (the x axis of the progress plot)."""
    n = len(points)
    if kind == "strokes":
        return np.cumsum([len(s) for s in points_to_strokes(points)]) / n
    return np.array([(i + 1) / n for i in points20_marks(n)] + [1.0])


@dataclass
class SketchOutcome:
    """One sketch's run: target rank and the top-k gallery rows after every step."""

    key: str
    photo: str
    ranks: np.ndarray  # (T,) 1-based
    completion: np.ndarray  # (T,) in (0, 1]
    top: np.ndarray  # (T, k) gallery row indices, best first

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "target": self.photo,
            "steps": len(self.ranks),
            "ranks": self.ranks.tolist(),
            "completion": [round(float(c), 4) for c in self.completion],
        }


class SketchEvaluator:
    """Runs sketches through one :class:`Retriever` (one backend and precision) under a protocol."""

    def __init__(self, retriever: Retriever, protocol: str = "causal", steps: str = "strokes") -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if steps not in STEP_KINDS:
            raise ValueError(f"steps must be one of {STEP_KINDS}, got {steps!r}")
        if protocol == "paper" and steps != "points20":
            raise ValueError("the paper protocol slices by points (points20)")
        if retriever.gallery is None:
            raise ValueError("the retriever needs the evaluation gallery")
        self.r = retriever
        self.protocol = protocol
        self.steps = steps
        # the non-causal head exists only for phase 2; phase-1 and ARNet steps are independent anyway
        has_full = mf.HEAD_FULL in retriever.bundle.manifest["graphs"]
        self.full_head = retriever.load(mf.HEAD_FULL) if protocol == "paper" and has_full else None

    def __call__(self, sketch: Sketch, target: int) -> SketchOutcome:
        if self.protocol == "causal" and self.steps == "strokes":
            emb, top = self._session(sketch)
        else:
            rasters = self.r.pipeline.point_steps(sketch.points, PAPER_STEPS)
            feats = self._features(rasters)
            emb = self._causal(feats) if self.protocol == "causal" else self._paper(feats)
            top = np.stack([self.r.gallery.search(e, self.r.topk)[0] for e in emb])
        if not np.isfinite(emb).all():
            step = int(np.nonzero(~np.isfinite(emb).all(axis=1))[0][0]) + 1
            raise BackendError(
                f"{self.r.backend.name}/{self.r.precision} gave a non-finite embedding for sketch {sketch.key!r} at step {step}",
                hint="this precision or backend is broken for this input: re-export or calibrate it, or compare with fp32",
            )
        ranks = step_ranks(emb, self.r.gallery.embeddings, target)
        return SketchOutcome(sketch.key, sketch.photo, ranks, completion(sketch.points, self.steps), top)

    def _session(self, sketch: Sketch) -> tuple[np.ndarray, np.ndarray]:
        """Exactly what ``dcssa-rt query`` does: one session, one ``add_stroke`` per stroke."""
        session = self.r.session()
        results = [session.add_stroke(stroke) for stroke in points_to_strokes(sketch.points)]
        return np.stack([res.embedding for res in results]), np.stack([res.indices for res in results])

    def _features(self, rasters: list[np.ndarray]) -> np.ndarray:
        """Sketch-encoder features, one raster per call as a session runs it."""
        pre, enc = self.r.pipeline.preprocess, self.r.encoder
        out = self.r.encoder_output
        return np.concatenate([enc.run({mf.IMAGES: pre(raster)})[out] for raster in rasters])

    def _causal(self, feats: np.ndarray) -> np.ndarray:
        """The session's head recurrence over step features (K/V cache, last row)."""
        return CausalHead.embed_sequence(self.r.head, feats)

    def _paper(self, feats: np.ndarray) -> np.ndarray:
        """The authors' evaluation: the full (non-causal) head over every step at once."""
        head = self.r.head if self.full_head is None else self.full_head
        if head is None:  # no head: the encoder's outputs are the embeddings
            return feats
        return head.run({mf.FEATURES: feats})[mf.EMBEDDINGS]
