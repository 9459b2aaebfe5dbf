"""Calibrated per-stroke confidence: P(the top-1 photo is the one being drawn), P(it is in the top 10).

Seven features per stroke, all at hand in a session after its search (no extra model pass, the
same for every model family): the top-1 score, its margins to the 2nd and to the 10th score, the
stroke count, whether the top-1 photo changed since the previous stroke, for how many strokes it
has held, and the change of the top-1 score since the previous stroke.

A calibrator is one logistic model per target over standardised features, fitted by
``dcssa-rt calibrate-confidence`` (scikit-learn, fitting time only) and stored as plain JSON in the
gallery folder (``confidence.json``) with the rows it was fitted on. Applying it is a few numpy
operations. It belongs to one bundle and one gallery: both are fingerprinted in the file and a
mismatch is refused. Without the file the session reports no confidence at all.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import manifest as mf
from ..errors import DcssaError

CONFIDENCE_FILE = "confidence.json"
SCHEMA = 1
FEATURES = ("top1_score", "margin_2", "margin_10", "strokes", "top1_changed", "top1_held", "score_change")
TARGETS = ("top1", "top10")
#: scores a session needs for the features (the 10th is the second margin's)
FEATURE_DEPTH = 10


def _refit_hint(gallery: Path | str | None) -> str:
    g = gallery if gallery is not None else "GALLERY"
    return (f"refit it with `dcssa-rt calibrate-confidence --dataset D --bundle BUNDLE --gallery {g} --force`, "
            f"or delete {Path(str(g)) / CONFIDENCE_FILE} to run without confidence")


class ConfidenceError(DcssaError):
    """A confidence calibrator that is corrupted or belongs to another bundle or gallery."""


def stroke_features(scores: np.ndarray, top1: int, stroke: int, previous: np.ndarray | None,
                    previous_top1: int | None) -> np.ndarray:
    """The feature row of one stroke.

    ``scores``: this stroke's best scores, best first (the first 10 are used; fewer when the gallery
    is smaller: the margin is then to the last); ``top1``: the gallery row of the best photo;
    ``previous`` / ``previous_top1``: the previous stroke's row and top-1 row (None at the first
    stroke, which counts as a change, held 1, score change 0).
    """
    s = np.asarray(scores, np.float64).reshape(-1)
    best = s[0]
    margin2 = best - s[1] if len(s) > 1 else 0.0
    margin10 = best - s[min(FEATURE_DEPTH, len(s)) - 1]
    if previous is None or previous_top1 is None:
        changed, held, delta = 1.0, 1.0, 0.0
    else:
        changed = float(top1 != previous_top1)
        held = 1.0 if changed else previous[5] + 1.0
        delta = best - previous[0]
    return np.array([best, margin2, margin10, float(stroke), changed, held, delta], np.float64)


def fingerprint(bundle, gallery) -> dict:
    """What a calibrator is valid for: every graph a session runs (sha256) and the gallery's photos."""
    graphs = [mf.SKETCH_ENCODER, mf.PHOTO_ENCODER] + ([bundle.head_graph] if bundle.head_graph else [])
    files = {name: bundle.file_sha256(bundle.graph_entry(name, "fp32")["file"]) for name in graphs}
    ids = hashlib.sha256("\n".join(gallery.ids).encode()).hexdigest()
    return {"graphs": files, "gallery": {"count": len(gallery), "ids_sha256": ids,
                                         "photo_encoder_sha256": gallery.meta.get("photo_encoder_sha256")}}


@dataclass
class LogisticModel:
    """``p = sigmoid(((x - mean) / scale) . coef + intercept)``: sklearn's StandardScaler + LogisticRegression."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.coef + self.intercept
        return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))

    def to_dict(self) -> dict:
        return {"kind": "logistic", "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": float(self.intercept)}

    @classmethod
    def from_dict(cls, d: dict) -> LogisticModel:
        if d.get("kind") != "logistic":
            raise ValueError(f"unknown model kind {d.get('kind')!r}")
        n = len(FEATURES)
        arrays = [np.asarray(d[k], np.float64) for k in ("mean", "scale", "coef")]
        if any(a.shape != (n,) for a in arrays) or not all(np.isfinite(a).all() for a in arrays):
            raise ValueError(f"mean, scale and coef must be {n} finite numbers each")
        if (arrays[1] <= 0).any():
            raise ValueError("scale must be positive")
        intercept = float(d["intercept"])
        if not math.isfinite(intercept):
            raise ValueError("intercept is not finite")
        return cls(*arrays, intercept)


@dataclass
class Calibrator:
    """The fitted models (one per target) with what they were fitted on; ``predict`` per stroke."""

    models: dict[str, LogisticModel]
    doc: dict  # the whole confidence.json (fingerprint, fitted_on, held-out numbers, data)
    path: Path | None = None

    def predict(self, features: np.ndarray) -> dict[str, float]:
        x = np.asarray(features, np.float64).reshape(1, -1)
        return {t: float(m.predict(x)[0]) for t, m in self.models.items()}

    def summary(self) -> dict:
        fitted = self.doc.get("fitted_on", {})
        return {"path": None if self.path is None else str(self.path), "created": self.doc.get("created"),
                "targets": list(self.models), "fitted_on": fitted, "holdout": self.doc.get("holdout", {}).get("summary")}

    @classmethod
    def from_doc(cls, doc: dict, path: Path | None = None) -> Calibrator:
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise ValueError(f"schema {doc.get('schema') if isinstance(doc, dict) else None!r}, expected {SCHEMA}")
        if list(doc.get("features", [])) != list(FEATURES):
            raise ValueError(f"features {doc.get('features')!r} are not this runtime's {list(FEATURES)}")
        models = {t: LogisticModel.from_dict(doc["models"][t]) for t in TARGETS}
        return cls(models, doc, path)


def calibrator_path(gallery_path: str | Path) -> Path:
    return Path(gallery_path) / CONFIDENCE_FILE


def load_calibrator(bundle, gallery) -> Calibrator | None:
    """The gallery folder's calibrator, checked against ``bundle`` and ``gallery``; None when there is none."""
    if gallery is None or gallery.path is None:
        return None
    path = calibrator_path(gallery.path)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        cal = Calibrator.from_doc(doc, path)
        want = doc["fingerprint"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ConfidenceError(f"corrupted confidence calibrator ({what})", path=path,
                              hint=_refit_hint(gallery.path)) from None
    have = fingerprint(bundle, gallery)
    if want.get("graphs") != have["graphs"]:
        diff = sorted(k for k in set(want.get("graphs", {})) | set(have["graphs"])
                      if want.get("graphs", {}).get(k) != have["graphs"].get(k))
        raise ConfidenceError(f"was fitted for another bundle (its {', '.join(diff)} differ from {bundle.path})",
                              path=path, hint=_refit_hint(gallery.path))
    if want.get("gallery") != have["gallery"]:
        raise ConfidenceError(
            f"was fitted on another gallery ({want.get('gallery', {}).get('count')} photos, now {len(gallery)}; "
            "the photo list or encoder differs)", path=path, hint=_refit_hint(gallery.path))
    return cal
