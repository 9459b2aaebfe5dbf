"""Synthetic sketches and photos: outlined shapes, their line drawings, and users' tracings of them.

SYNTHETIC DATA, for tests, demos, BatchNorm recalibration and parity checks. It makes no claim to
resemble any real catalogue; it exists so every path can run on a fresh machine with nothing
downloaded.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..contract.recipes import SketchRecipe

FRAME = SketchRecipe().frame


def _polyline(points: np.ndarray) -> np.ndarray:
    return np.clip(points, 4.0, FRAME - 4.0).astype(np.float64)


def _polygon(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    k = int(rng.integers(3, 8))
    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
    rad = r * rng.uniform(0.6, 1.0, k)
    pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
    return np.vstack([pts, pts[:1]])


def _ellipse_arc(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    a, b = r * rng.uniform(0.4, 1.0, 2)
    start = rng.uniform(0, 2 * np.pi)
    span = rng.uniform(np.pi, 2 * np.pi)
    t = np.linspace(start, start + span, int(rng.integers(12, 28)))
    return np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], 1)


def _zigzag(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    k = int(rng.integers(3, 7))
    xs = np.linspace(cx - r, cx + r, k)
    ys = cy + rng.uniform(-r, r, k) * 0.5
    return np.stack([xs, ys], 1)


def _spiral(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    t = np.linspace(0, rng.uniform(2, 4) * np.pi, 30)
    rad = r * t / t[-1]
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1)


_PARTS = (_polygon, _ellipse_arc, _zigzag, _spiral)


def random_shape(rng: np.random.Generator, parts: int | None = None) -> list[np.ndarray]:
    """An outlined shape: a few primitives (polygons, arcs, zigzags, spirals) -> list of strokes."""
    parts = int(rng.integers(4, 9)) if parts is None else parts
    strokes = []
    for i in range(parts):
        r = rng.uniform(25, 90) if i == 0 else rng.uniform(10, 50)
        cx, cy = rng.uniform(60, 196, 2)
        fn = _PARTS[0] if i == 0 else _PARTS[int(rng.integers(0, len(_PARTS)))]
        strokes.append(_polyline(fn(rng, cx, cy, r)))
    return strokes


def tracing(
    strokes: list[np.ndarray], rng: np.random.Generator, *, jitter: float = 1.0, shuffle: bool = True
) -> list[np.ndarray]:
    """A user's tracing of a shape: the same strokes, in random order, with a little hand jitter."""
    order = rng.permutation(len(strokes)) if shuffle else np.arange(len(strokes))
    out = []
    for i in order:
        s = strokes[i] + rng.normal(0, jitter, strokes[i].shape) + rng.normal(0, jitter, (1, 2))
        if rng.random() < 0.5:
            s = s[::-1]
        out.append(np.clip(s, 0.0, FRAME))
    return out


def random_sketch(rng: np.random.Generator, strokes: int) -> list[np.ndarray]:
    """A sketch with exactly ``strokes`` strokes (shape parts, then random scribbles if more)."""
    base = random_shape(rng, parts=min(strokes, 8))
    while len(base) < strokes:
        start = rng.uniform(10, 246, 2)
        steps = rng.normal(0, 12, (int(rng.integers(3, 12)), 2)).cumsum(0)
        base.append(_polyline(start + steps))
    return base


def line_drawing(strokes: list[np.ndarray], size: int = SketchRecipe().canvas) -> Image.Image:
    """The 'photo' of a shape: its clean line drawing, white on black, RGB."""
    from ..stroke.parse import strokes_to_points
    from ..stroke.raster import rasterize

    canvas = rasterize(strokes_to_points(strokes), canvas=size)
    return Image.fromarray(canvas).convert("RGB")


def textured_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A colourful image (gradient, blobs, noise) so photo-trunk statistics see natural-ish input."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        a, b = rng.normal(0, 1, 2)
        img[..., c] = 0.5 + 0.3 * np.sin(a * xx / width * 6 + b * yy / height * 6 + rng.uniform(0, 6))
    for _ in range(int(rng.integers(3, 8))):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, min(width, height) / 3)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img[mask] = rng.uniform(0, 1, 3)
    img += rng.normal(0, 0.05, img.shape).astype(np.float32)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
