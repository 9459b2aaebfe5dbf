"""Pixel-exact sketch rasteriser.

The model was trained on sketches drawn by the DC-SSA authors' reference rasteriser (float32 scaling
to a 400 x 400 canvas, ``bresenham==0.2.1`` lines, one 4-neighbour binary dilation, PIL bilinear
resize to 299, ImageNet normalisation). Any deviation, even a pixel, shifts the embedding, so this
module reproduces the drawing exactly -- with numpy instead of per-pixel Python loops, and with an
incremental :class:`Canvas` so a live session only draws the newest stroke. Turning a raster into a
network input is :mod:`dcssa.runtime.stroke.pipeline`'s job. Strokes reach this module already validated
(:mod:`dcssa.runtime.stroke.parse`); only whole-sketch entry points check their ``N x 3`` points.

Only numpy, Pillow and the standard library are imported here: this runs on the serving box.
"""

from __future__ import annotations

import numpy as np

from ..contract.recipes import SketchRecipe
from ..errors import StrokeError
from .parse import check_points

__all__ = ["Canvas", "bresenham_segment", "rasterize", "rasterize_steps", "scale_points"]

_DEFAULT = SketchRecipe()  # the one place the frame and canvas defaults come from

# Coordinates (after scaling) up to this magnitude are handled in int64 without overflow:
# 2*m*k + n stays below 2**43. Larger ones (absurd but legal input) take an exact Python-int path.
_INT64_SAFE = 1 << 20
# Same bound for the unclipped public bresenham_segment: 8 * B**2 < 2**63.
_INT64_SAFE_FULL = 1 << 29


# --------------------------------------------------------------------------------------------------
# Bresenham (bresenham==0.2.1 semantics)
# --------------------------------------------------------------------------------------------------


def _octant(x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, bool, int, int]:
    """Step signs, whether x is the major axis (y wins ties, as bresenham 0.2.1), major and minor lengths."""
    dx, dy = x1 - x0, y1 - y0
    adx, ady = abs(dx), abs(dy)
    x_major = adx > ady
    n, m = (adx, ady) if x_major else (ady, adx)
    return (1 if dx > 0 else -1), (1 if dy > 0 else -1), x_major, n, m


def bresenham_segment(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """All pixels of the segment, in the exact order and choice of ``bresenham.bresenham`` 0.2.1.

    The package's error-term loop is equivalent to a closed form: with ``n`` the major-axis length
    (y is major on ties) and ``m`` the minor one, step ``k`` moves ``k`` along the major axis and
    ``floor((2*m*k + n) / (2*n))`` along the minor one. Computing it for all ``k`` at once avoids a
    Python loop per pixel. Returns a ``(n + 1, 2)`` int64 array of ``(x, y)``.
    """
    x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
    sx, sy, x_major, n, m = _octant(x0, y0, x1, y1)
    big = max(abs(x0), abs(y0), abs(x1), abs(y1)) >= _INT64_SAFE_FULL
    dtype = object if big else np.int64
    k = np.arange(n + 1, dtype=np.int64).astype(dtype)
    minor = (2 * m * k + n) // (2 * max(n, 1))
    if x_major:
        xs, ys = x0 + sx * k, y0 + sy * minor
    else:
        xs, ys = x0 + sx * minor, y0 + sy * k
    return np.stack([xs, ys], axis=1)


def _segments_in_canvas(
    x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, canvas: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of many segments that land on the drawable area ``0 < x, y < canvas``.

    Vectorised over segments and pixels. The major coordinate is monotone in ``k``, so each segment
    is first clipped to the ``k`` range whose major coordinate is drawable: work is bounded by the
    canvas size even for far-away points. Inputs are int64 with magnitude below ``_INT64_SAFE``.
    """
    dx, dy = x1 - x0, y1 - y0
    sx = np.where(dx > 0, 1, -1)
    sy = np.where(dy > 0, 1, -1)
    adx, ady = np.abs(dx), np.abs(dy)
    x_major = adx > ady
    n = np.where(x_major, adx, ady)
    m = np.where(x_major, ady, adx)
    a0 = np.where(x_major, x0, y0)  # major-axis start
    sa = np.where(x_major, sx, sy)
    b0 = np.where(x_major, y0, x0)  # minor-axis start
    sb = np.where(x_major, sy, sx)

    hi_edge = canvas - 1
    k_lo = np.where(sa > 0, np.maximum(0, 1 - a0), np.maximum(0, a0 - hi_edge))
    k_hi = np.where(sa > 0, np.minimum(n, hi_edge - a0), np.minimum(n, a0 - 1))
    counts = np.maximum(k_hi - k_lo + 1, 0)
    total = int(counts.sum())
    if total == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty

    seg = np.repeat(np.arange(counts.size), counts)
    first = np.cumsum(counts) - counts
    k = np.arange(total, dtype=np.int64) - first[seg] + k_lo[seg]
    minor = (2 * m[seg] * k + n[seg]) // (2 * np.maximum(n[seg], 1))
    major_v = a0[seg] + sa[seg] * k
    minor_v = b0[seg] + sb[seg] * minor
    keep = (minor_v > 0) & (minor_v < canvas)
    xm = x_major[seg]
    xs = np.where(xm, major_v, minor_v)[keep]
    ys = np.where(xm, minor_v, major_v)[keep]
    return xs, ys


def _segment_in_canvas_exact(x0: int, y0: int, x1: int, y1: int, canvas: int) -> tuple[list, list]:
    """Python-int version of :func:`_segments_in_canvas` for one segment with huge coordinates."""
    sx, sy, x_major, n, m = _octant(x0, y0, x1, y1)
    a0, sa, b0, sb = (x0, sx, y0, sy) if x_major else (y0, sy, x0, sx)
    if sa > 0:
        k_lo, k_hi = max(0, 1 - a0), min(n, canvas - 1 - a0)
    else:
        k_lo, k_hi = max(0, a0 - (canvas - 1)), min(n, a0 - 1)
    xs: list[int] = []
    ys: list[int] = []
    for k in range(k_lo, k_hi + 1):
        b = b0 + sb * ((2 * m * k + n) // (2 * max(n, 1)))
        if 0 < b < canvas:
            a = a0 + sa * k
            xs.append(a if x_major else b)
            ys.append(b if x_major else a)
    return xs, ys


# --------------------------------------------------------------------------------------------------
# Scaling, drawing, dilation
# --------------------------------------------------------------------------------------------------


def scale_points(points: np.ndarray, frame: float = _DEFAULT.frame, canvas: int = _DEFAULT.canvas) -> np.ndarray:
    """Map ``N x 3`` points from the ``frame`` square to integer canvas coordinates, as float32.

    Mirrors the reference literally: the array is float32; ``x / frame`` is computed (in float64,
    because the reference divides by an int array) and stored back into float32, then ``* canvas``
    in float32, then numpy's round-half-to-even over the whole array (the pen column is 0/1, so it
    is unchanged). Doing the product in float64 instead flips a few ``.5`` cases, e.g. 155.84.
    """
    if not (frame > 0 and canvas > 0):
        raise StrokeError(f"frame and canvas must be positive, got frame={frame}, canvas={canvas}")
    pts = np.array(points, dtype=np.float32, copy=True)
    pts[:, :2] = pts[:, :2].astype(np.float64) / float(frame)
    pts[:, :2] = pts[:, :2] * np.float32(canvas)
    return np.round(pts)


def _point_pixels(pts: np.ndarray, lo: int, hi: int, canvas: int) -> tuple[np.ndarray, np.ndarray]:
    """Drawable pixels ``(xs, ys)`` of the segments ending at points ``lo .. hi-1`` of scaled ``pts``.

    Point ``i``'s segment starts at ``i-1`` unless ``i`` begins a stroke (``i == 0`` or the previous
    point has ``pen == 1``), in which case it is the single pixel ``i``. May contain duplicates.
    """
    if hi <= lo:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    idx = np.arange(lo, hi)
    prev = np.maximum(idx - 1, 0)
    new_stroke = (idx == 0) | (pts[prev, 2] == 1)
    start = np.where(new_stroke, idx, prev)

    coords = pts[:, :2]
    x0, y0 = coords[start, 0], coords[start, 1]
    x1, y1 = coords[idx, 0], coords[idx, 1]
    huge = np.maximum.reduce([np.abs(x0), np.abs(y0), np.abs(x1), np.abs(y1)]) >= _INT64_SAFE
    ok = ~huge
    xs, ys = _segments_in_canvas(
        x0[ok].astype(np.int64), y0[ok].astype(np.int64), x1[ok].astype(np.int64), y1[ok].astype(np.int64), canvas
    )
    if huge.any():
        ex: list[int] = []
        ey: list[int] = []
        for a, b, c, d in zip(x0[huge], y0[huge], x1[huge], y1[huge]):
            px, py = _segment_in_canvas_exact(int(a), int(b), int(c), int(d), canvas)
            ex += px
            ey += py
        xs = np.concatenate([xs, np.asarray(ex, dtype=np.int64)])
        ys = np.concatenate([ys, np.asarray(ey, dtype=np.int64)])
    return xs, ys


def _draw_points(img: np.ndarray, pts: np.ndarray, lo: int, hi: int) -> None:
    """Set the pixels of points ``lo .. hi-1`` (see :func:`_point_pixels`) in the bool canvas."""
    xs, ys = _point_pixels(pts, lo, hi, img.shape[0])
    img[ys, xs] = True


def _dilate(mask: np.ndarray, iterations: int = _DEFAULT.dilation) -> np.ndarray:
    """Binary dilations with the 3 x 3 cross, zero outside (scipy.ndimage defaults).

    ``iterations`` cross dilations grow every pixel into a diamond of that radius: a line of width
    ``2 * iterations + 1`` (DC-SSA: one, width 3).
    """
    out = mask
    for _ in range(iterations):
        prev, out = out, out.copy()
        out[1:, :] |= prev[:-1, :]
        out[:-1, :] |= prev[1:, :]
        out[:, 1:] |= prev[:, :-1]
        out[:, :-1] |= prev[:, 1:]
    return out if iterations else mask.copy()


def _diamond(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets ``(dx, dy)`` with ``|dx| + |dy| <= radius``: what ``radius`` cross dilations add to a pixel."""
    r = np.arange(-radius, radius + 1)
    dx, dy = np.meshgrid(r, r, indexing="xy")
    keep = np.abs(dx) + np.abs(dy) <= radius
    return dx[keep].astype(np.int64), dy[keep].astype(np.int64)


def _to_uint8(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * np.uint8(255)


def rasterize(points: np.ndarray, *, frame: float = _DEFAULT.frame, canvas: int = _DEFAULT.canvas,
              dilation: int = _DEFAULT.dilation) -> np.ndarray:
    """Whole ``N x 3`` sketch -> dilated ``canvas x canvas`` uint8 raster, strokes 255 on 0."""
    pts = scale_points(check_points(points), frame, canvas)
    img = np.zeros((canvas, canvas), dtype=bool)
    _draw_points(img, pts, 0, len(pts))
    return _to_uint8(_dilate(img, dilation))


def rasterize_steps(
    points: np.ndarray, steps: int = 20, *, frame: float = _DEFAULT.frame, canvas: int = _DEFAULT.canvas,
    dilation: int = _DEFAULT.dilation,
) -> list[np.ndarray]:
    """Partial rasters the way the authors evaluate on-the-fly retrieval.

    After drawing point ``i`` a raster is kept when ``i`` is one of
    ``round(linspace(0, N, steps + 1)[1:])`` (each index at most once; ``N`` itself is never hit),
    and the full sketch is always appended last -- so the count can be below ``steps + 1``.
    """
    pts = scale_points(check_points(points), frame, canvas)
    n = len(pts)
    marks = np.round(np.linspace(0, n, steps + 1)[1:])
    keep = sorted({int(v) for v in marks if v < n})
    img = np.zeros((canvas, canvas), dtype=bool)
    out: list[np.ndarray] = []
    drawn = 0
    for i in keep:
        _draw_points(img, pts, drawn, i + 1)
        drawn = i + 1
        out.append(_to_uint8(_dilate(img, dilation)))
    _draw_points(img, pts, drawn, n)
    out.append(_to_uint8(_dilate(img, dilation)))
    return out


# --------------------------------------------------------------------------------------------------
# Incremental canvas
# --------------------------------------------------------------------------------------------------


class Canvas:
    """Dilated raster of a live sketch, updated one stroke at a time with exact undo.

    No segment joins two strokes and dilation distributes over union, so drawing only the new
    stroke (and its dilation) onto the kept canvas equals re-rasterising the whole sketch. Undo data
    is the flat indices the stroke turned on, a few hundred ints instead of a canvas copy.
    """

    def __init__(self, canvas: int = _DEFAULT.canvas, frame: float = _DEFAULT.frame,
                 dilation: int = _DEFAULT.dilation):
        self.canvas = int(canvas)
        self.frame = frame
        self._dx, self._dy = _diamond(int(dilation))
        self._img = np.zeros((self.canvas, self.canvas), dtype=np.uint8)
        self._history: list[np.ndarray] = []

    @property
    def image(self) -> np.ndarray:
        """The uint8 raster (read-only view; copy it to keep a snapshot)."""
        view = self._img.view()
        view.flags.writeable = False
        return view

    @property
    def num_strokes(self) -> int:
        return len(self._history)

    def add_stroke(self, xy: np.ndarray) -> int:
        """Draw one checked stroke (``(n, 2)`` finite points in the frame, see
        :func:`~dcssa.runtime.stroke.parse.as_stroke`); returns how many pixels it turned on."""
        arr = np.asarray(xy, dtype=np.float64)
        pts = np.zeros((arr.shape[0], 3), dtype=np.float64)
        pts[:, :2] = arr
        pts[-1, 2] = 1.0
        scaled = scale_points(pts, self.frame, self.canvas)
        xs, ys = _point_pixels(scaled, 0, len(scaled), self.canvas)
        c = self.canvas
        nx = (xs[None, :] + self._dx[:, None]).reshape(-1)
        ny = (ys[None, :] + self._dy[:, None]).reshape(-1)
        inside = (nx >= 0) & (nx < c) & (ny >= 0) & (ny < c)
        flat = np.unique(ny[inside] * c + nx[inside])
        plane = self._img.reshape(-1)
        new = flat[plane[flat] == 0]
        plane[new] = 255
        self._history.append(new.astype(np.int32))
        return int(new.size)

    def undo(self) -> int:
        """Remove the last stroke exactly; returns how many pixels went back to 0."""
        if not self._history:
            raise StrokeError("nothing to undo: the canvas has no strokes")
        new = self._history.pop()
        self._img.reshape(-1)[new] = 0
        return int(new.size)

    def reset(self) -> None:
        """Clear the canvas and the undo history."""
        self._img.fill(0)
        self._history.clear()
