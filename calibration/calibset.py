"""Calibration and held-out sets built from what the runtime really sees: every stroke prefix.

A live session encodes the canvas after each stroke, so quantisation ranges must come from partial
sketches, not only finished ones. Sketches come from a QMUL coordinate pickle, a folder of strokes
JSON files, a dataset root written by ``dcssa-rt make-dataset`` (or laid out like QMUL), or the
synthetic generator; prefixes are drawn and preprocessed by the bundle's
:class:`~dcssa.runtime.stroke.pipeline.SketchPipeline`, the object a live session uses. Canvases are kept
as uint8 (160 kB each) and preprocessed on demand, so a few hundred prefixes fit.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcssa.calibration.options import CalibrationOptions
from dcssa.runtime.contract.bundle import Bundle
from dcssa.runtime.data.synthetic import random_shape, tracing
from dcssa.runtime.errors import DcssaError, StrokeError
from dcssa.runtime.stroke.parse import load_strokes_file, points_to_strokes
from dcssa.runtime.stroke.pipeline import SketchPipeline

DATA_HINT = (
    "pass --data as a QMUL *_Coordinate pickle, a folder of strokes JSON files, a dataset folder "
    "from `dcssa-rt make-dataset`, or synthetic:N[:SEED]"
)
PICKLE_SUFFIXES = {".pkl", ".pickle", ".p"}


class CalibrationDataError(DcssaError):
    """Calibration data that cannot be read or is too small to use."""


@dataclass
class Sketch:
    """One sketch: its strokes in the 256 frame, the photo it depicts (if known), its split tag."""

    name: str
    strokes: list[np.ndarray]
    target: str | None = None  # photo stem, e.g. "shape0003"
    split: str | None = None  # "train" / "test" from QMUL keys, None otherwise


@dataclass
class SketchData:
    """Sketches plus where photos for a retrieval gallery live, if the source says."""

    sketches: list[Sketch]
    photos: Path | None = None
    source: str = ""


# -- reading sources -----------------------------------------------------------------------------


def _qmul_target(key: str) -> str:
    """``/test/shape0003_1`` -> ``shape0003`` (the sketch name minus its last ``_suffix``)."""
    stem = key.rstrip("/").rsplit("/", 1)[-1]
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def read_qmul_pickle(path: Path) -> list[Sketch]:
    """The authors' coordinate pickle: ``{"/split/name_n": N x 3 (x, y, pen_up)}``."""
    try:
        with open(path, "rb") as f:
            coords = pickle.load(f)  # noqa: S301 - the user's own dataset file
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
        raise CalibrationDataError(f"cannot read the coordinate pickle ({exc})", path=path, hint=DATA_HINT) from None
    if not isinstance(coords, dict) or not coords:
        raise CalibrationDataError("the pickle is not a non-empty {name: points} dict", path=path, hint=DATA_HINT)
    out = []
    for key in sorted(coords):
        pts = np.asarray(coords[key], dtype=np.float64)
        try:
            strokes = points_to_strokes(pts)
        except StrokeError as exc:
            raise CalibrationDataError(f"sketch {key!r}: {exc.message}", path=path, hint=DATA_HINT) from None
        parts = str(key).strip("/").split("/")
        split = parts[0] if len(parts) > 1 else None
        out.append(Sketch(str(key), strokes, _qmul_target(str(key)), split))
    return out


def read_strokes_folder(folder: Path) -> list[Sketch]:
    """Every ``*.json`` below ``folder`` (sorted); the target is read from ``"target"`` or the name."""
    import json

    files = sorted(p for p in folder.rglob("*.json") if p.is_file())
    out = []
    for p in files:
        strokes = load_strokes_file(p)  # raises StrokeError naming the file
        target = None
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("target"), str):
                target = Path(doc["target"]).stem
        except (OSError, ValueError):  # already parsed above; a failure here only loses the target
            pass
        out.append(Sketch(p.relative_to(folder).as_posix(), strokes, target or _qmul_target(p.stem), None))
    return out


def synthetic_sketches(count: int, seed: int = 0) -> list[Sketch]:
    """``count`` tracings of random shapes (SYNTHETIC: for tests and demos only)."""
    rng = np.random.default_rng(seed)
    return [Sketch(f"synthetic{i:04d}", tracing(random_shape(rng), rng), None, None) for i in range(count)]


def _parse_synthetic(spec: str) -> tuple[int, int]:
    parts = spec.split(":")[1:]
    try:
        count = int(parts[0]) if parts and parts[0] else 24
        seed = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise CalibrationDataError(f"bad synthetic spec {spec!r}", hint="write synthetic:N or synthetic:N:SEED") from None
    if count < 1:
        raise CalibrationDataError(f"bad synthetic spec {spec!r}: N must be >= 1", hint="write synthetic:N[:SEED]")
    return count, seed


def load_sketch_data(data: str | Path) -> SketchData:
    """Read sketches (and the photo folder, when the layout has one) from ``data``."""
    text = str(data)
    if _is_synthetic(text):
        count, seed = _parse_synthetic(text)
        return SketchData(synthetic_sketches(count, seed), None, text)
    path = Path(data)
    photos = data_photo_dir(data)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return SketchData([Sketch(path.stem, load_strokes_file(path), _qmul_target(path.stem))], None, text)
        return SketchData(read_qmul_pickle(path), photos, text)
    if not path.is_dir():
        raise CalibrationDataError("no such file or folder", path=path, hint=DATA_HINT)
    pickles = sorted(p for p in path.glob("*_Coordinate")) + sorted(
        p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES
    )
    if pickles:
        return SketchData(read_qmul_pickle(pickles[0]), photos, text)
    folder = path / "strokes" if (path / "strokes").is_dir() else path
    sketches = read_strokes_folder(folder)
    if not sketches:
        raise CalibrationDataError("no sketches found (no *_Coordinate pickle, no *.json)", path=path, hint=DATA_HINT)
    return SketchData(sketches, photos, text)


def _is_synthetic(text: str) -> bool:
    return text == "synthetic" or text.startswith("synthetic:")


def data_photo_dir(data: str | Path) -> Path | None:
    """The photo folder :func:`load_sketch_data` would find beside ``data``, without reading the sketches.

    Lets a command refuse data without photos before it spends a minute exporting.
    """
    text = str(data)
    path = Path(data)
    if _is_synthetic(text) or (path.is_file() and path.suffix.lower() == ".json"):
        return None
    if path.is_file():
        return _photo_dir(path.parent)
    return _photo_dir(path) if path.is_dir() else None


def _photo_dir(root: Path) -> Path | None:
    """The fidelity gallery's photos: QMUL's photo/, or ARNet's testB/ (the held-out sketches' photos)."""
    for name in ("photo", "photos", "testB"):
        if (root / name).is_dir():
            return root / name
    return None


# -- split ---------------------------------------------------------------------------------------


def _stable_unit(name: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def split_heldout(sketches: Sequence[Sketch], share: float = CalibrationOptions.heldout_share,
                  seed: int = 0) -> tuple[list[Sketch], list[Sketch]]:
    """(calibration, held-out), split by SKETCH so no prefix of a held-out sketch is calibrated on.

    When the source has a QMUL train/test split, calibration uses train and the held-out set is
    test (what a deployed model meets); otherwise a stable hash of the name decides.
    """
    splits = {s.split for s in sketches}
    if "train" in splits and "test" in splits:
        calib = [s for s in sketches if s.split == "train"]
        held = [s for s in sketches if s.split == "test"]
    else:
        calib = [s for s in sketches if _stable_unit(s.name, seed) >= share]
        held = [s for s in sketches if _stable_unit(s.name, seed) < share]
        if not held and len(calib) > 1:
            held.append(calib.pop())
        if not calib and len(held) > 1:
            calib.append(held.pop())
    if not calib or not held:
        raise CalibrationDataError(
            f"{len(sketches)} sketch(es) cannot be split into calibration and held-out sets",
            hint="give at least 2 sketches (a dozen or more for a meaningful report)",
        )
    return calib, held


def spread_sketches(sketches: Sequence[Sketch], max_prefixes: int | None) -> list[Sketch]:
    """Whole sketches, spread evenly over ``sketches``, with at most ``max_prefixes`` stroke prefixes in
    all (at least one sketch).

    Held-out prefixes go through the causal stroke head sketch by sketch: dropping single prefixes
    would leave their strokes out of the head's K/V cache, giving embeddings no live session shows.
    """
    counts = [len(s.strokes) for s in sketches]
    if max_prefixes is None or sum(counts) <= max_prefixes:
        return list(sketches)
    n = len(sketches)
    for k in range(n, 0, -1):
        idx = np.unique(np.linspace(0, n - 1, k).round().astype(int))
        if k == 1 or sum(counts[i] for i in idx) <= max_prefixes:
            return [sketches[i] for i in idx]
    return []  # pragma: no cover - no sketches at all


# -- prefix rasters --------------------------------------------------------------------------------


@dataclass
class PrefixSet:
    """The canvas after every stroke of every sketch, with which sketch and stroke each one is."""

    canvases: np.ndarray  # (N, C, C) uint8
    sketch: np.ndarray  # (N,) index into ``sketches``
    stroke: np.ndarray  # (N,) 1-based stroke count of the prefix
    sketches: list[Sketch]
    pipeline: SketchPipeline = field(repr=False)

    def __len__(self) -> int:
        return len(self.canvases)

    def images(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Preprocessed network inputs (n, 3, H, W) float32 for prefixes ``start:stop``."""
        return np.concatenate([self.pipeline.preprocess(c) for c in self.canvases[start:stop]])

    def batches(self, batch_size: int = 8) -> Iterator[np.ndarray]:
        for i in range(0, len(self), batch_size):
            yield self.images(i, i + batch_size)

    def sequences(self) -> list[np.ndarray]:
        """Indices of each sketch's prefixes, in stroke order (for the causal stroke head)."""
        return [np.nonzero(self.sketch == k)[0] for k in range(len(self.sketches))]

    def only(self, sketches: Sequence[int]) -> PrefixSet:
        """The prefixes of the listed sketches (whole sketches, in the listed order)."""
        keep = [int(k) for k in sketches]
        rows = np.concatenate([np.nonzero(self.sketch == k)[0] for k in keep]) if keep else np.zeros(0, int)
        remap = {k: i for i, k in enumerate(keep)}
        return PrefixSet(self.canvases[rows], np.asarray([remap[int(k)] for k in self.sketch[rows]], int),
                         self.stroke[rows], [self.sketches[k] for k in keep], self.pipeline)

    def subsample(self, limit: int | None, seed: int = 0) -> PrefixSet:
        """At most ``limit`` prefixes, spread evenly over the set (keeps early and late strokes)."""
        if limit is None or len(self) <= limit:
            return self
        idx = np.unique(np.linspace(0, len(self) - 1, limit).round().astype(int))
        return PrefixSet(self.canvases[idx], self.sketch[idx], self.stroke[idx], self.sketches, self.pipeline)


def prefix_set(sketches: Sequence[Sketch], pipeline: SketchPipeline | None = None, *,
               max_strokes: int | None = None) -> PrefixSet:
    """Draw every stroke prefix of every sketch as a live session would (incremental canvas).

    ``pipeline`` defaults to the default sketch recipe; :func:`bundle_prefix_set` uses the bundle's.
    """
    pipe = pipeline or SketchPipeline()
    canvases, sk, st = [], [], []
    for k, s in enumerate(sketches):
        for t, canvas in enumerate(pipe.prefixes(s.strokes[:max_strokes])):
            canvases.append(canvas)
            sk.append(k)
            st.append(t + 1)
    if not canvases:
        raise CalibrationDataError("the sketches have no strokes", hint=DATA_HINT)
    return PrefixSet(np.stack(canvases), np.asarray(sk), np.asarray(st), list(sketches), pipe)


def bundle_prefix_set(bundle: Bundle, sketches: Sequence[Sketch], *, max_strokes: int | None = None) -> PrefixSet:
    """:func:`prefix_set` through the bundle's sketch pipeline (its canvas, frame and preprocessing)."""
    return prefix_set(sketches, SketchPipeline(bundle.sketch_recipe), max_strokes=max_strokes)
