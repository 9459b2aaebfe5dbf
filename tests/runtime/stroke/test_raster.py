"""The rasteriser must reproduce the DC-SSA authors' pipeline pixel for pixel.

Every expectation here comes from an independent path: a literal re-statement of the authors' steps
(float32 scaling, the PyPI ``bresenham`` package, ``scipy.ndimage.binary_dilation``, Pillow
``fromarray(float64).convert('RGB')``, torchvision ``Resize/ToTensor/Normalize``), or hand-counted
pixels. Nothing is compared against the module's own helpers.
"""

from __future__ import annotations

import numpy as np
import pytest

bresenham_pkg = pytest.importorskip("bresenham")
ndimage = pytest.importorskip("scipy.ndimage")

from reference_raster import random_sketch, ref_raster, ref_rasters, ref_scale  # noqa: E402

from dcssa.runtime.errors import StrokeError  # noqa: E402
from dcssa.runtime.stroke import raster  # noqa: E402
from dcssa.runtime.stroke.parse import as_stroke  # noqa: E402
from dcssa.runtime.stroke.raster import Canvas, bresenham_segment, rasterize, rasterize_steps, scale_points  # noqa: E402


def strokes_of(points: np.ndarray) -> list[np.ndarray]:
    ends = np.nonzero(points[:, 2] == 1)[0] + 1
    return [p[:, :2] for p in np.split(points, ends) if len(p)]


# --------------------------------------------------------------------------------------------------
# Bresenham
# --------------------------------------------------------------------------------------------------


def test_bresenham_segment_matches_package_on_random_segments():
    rng = np.random.default_rng(1)
    segs = [tuple(int(v) for v in rng.integers(-60, 61, size=4)) for _ in range(3000)]
    segs += [tuple(int(v) for v in rng.integers(-3, 4, size=4)) for _ in range(500)]  # many ties/zero
    for x0, y0 in rng.integers(-30, 31, size=(300, 2)):  # exact diagonals, all four directions
        d = int(rng.integers(0, 40))
        sx, sy = rng.choice([-1, 1], size=2)
        segs.append((int(x0), int(y0), int(x0 + sx * d), int(y0 + sy * d)))
    segs += [(5, 5, 5, 5), (0, 0, 0, 0), (-3, 7, -3, 7), (0, 0, 7, 0), (0, 0, -7, 0), (0, 0, 0, 7), (0, 0, 0, -7)]
    for seg in segs:
        expected = np.array(list(bresenham_pkg.bresenham(*seg)), dtype=np.int64).reshape(-1, 2)
        got = bresenham_segment(*seg)
        assert got.shape == expected.shape, seg
        assert np.array_equal(got, expected), seg


def test_bresenham_segment_huge_coordinates_do_not_overflow():
    base = 3 * 2**40
    for seg in [(base, base, base + 17, base - 5), (-base, 4, -base - 3, 11), (base, -base, base + 2, -base + 9)]:
        expected = np.array(list(bresenham_pkg.bresenham(*seg)))
        assert np.array_equal(bresenham_segment(*seg).astype(object), expected.astype(object))


def test_clipped_segment_helpers_match_package_filtered_to_canvas():
    """The internal clipped forms keep exactly the package's pixels with 0 < x, y < side."""
    rng = np.random.default_rng(2)
    side = 50
    segs = rng.integers(-80, 130, size=(1500, 4))
    exp_x, exp_y = [], []
    for seg in segs:
        for cx, cy in bresenham_pkg.bresenham(*(int(v) for v in seg)):
            if 0 < cx < side and 0 < cy < side:
                exp_x.append(cx)
                exp_y.append(cy)
    xs, ys = raster._segments_in_canvas(segs[:, 0], segs[:, 1], segs[:, 2], segs[:, 3], side)
    assert xs.tolist() == exp_x and ys.tolist() == exp_y  # same pixels, same order
    ex, ey = [], []
    for seg in segs:
        px, py = raster._segment_in_canvas_exact(*(int(v) for v in seg), side)
        ex += px
        ey += py
    assert ex == exp_x and ey == exp_y


# --------------------------------------------------------------------------------------------------
# Scaling and rasterize
# --------------------------------------------------------------------------------------------------


def test_scale_points_is_float32_round_half_even():
    pts = np.array([[155.84, 16.0, 0], [0.32, 0.96, 0], [256.0, -0.32, 1]])
    got = scale_points(pts)
    assert got.dtype == np.float32
    # 155.84 * 400 / 256 is 243.4999... in float64 but exactly 243.5 in float32 -> even 244
    assert got[0, 0] == 244.0 and got[0, 1] == 25.0
    assert got[1, 0] == 0.0  # 0.5 -> 0 (half to even)
    assert got[1, 1] == 2.0  # 1.5 -> 2
    assert got[2, 0] == 400.0 and got[2, 1] == -0.0
    assert got[:, 2].tolist() == [0, 0, 1]
    assert np.array_equal(got, ref_scale(pts))
    assert scale_points(np.array([[128.0, 64.0, 1]]), frame=128, canvas=100).tolist() == [[100.0, 50.0, 1.0]]


def test_rasterize_matches_reference_on_random_sketches():
    rng = np.random.default_rng(3)
    for _ in range(150):
        pts = random_sketch(rng)
        got = rasterize(pts)
        assert got.dtype == np.uint8 and got.shape == (400, 400)
        assert np.array_equal(got, ref_raster(pts).astype(np.uint8))


def test_rasterize_with_far_away_points_matches_reference():
    # 700000 in the 256 frame is 1093750 on the canvas: beyond the int64 fast path's bound
    pts = np.array(
        [
            [10.0, 10.0, 0],
            [700000.0, 90000.0, 1],
            [-700000.0, 128.0, 0],
            [700000.0, 129.0, 1],
            [50.0, 50.0, 0],
            [-3000.0, 200.0, 1],
        ]
    )
    got = rasterize(pts)
    assert np.array_equal(got, ref_raster(pts).astype(np.uint8))
    assert got.any()


def test_rasterize_hand_checked_pixels():
    # (0, 0) maps to pixel (0, 0): row/column 0 is never drawn, so nothing at all appears
    assert not rasterize(np.array([[0.0, 0.0, 1]])).any()
    # 0.64 -> 1.0: pixel (1, 1) plus its cross, which does reach row/column 0
    img = rasterize(np.array([[0.64, 0.64, 1]]))
    assert sorted(zip(*np.nonzero(img))) == [(0, 1), (1, 0), (1, 1), (1, 2), (2, 1)]
    assert set(np.unique(img)) == {0, 255}
    # 256 maps to 400: outside, not drawn, not an error
    assert not rasterize(np.array([[256.0, 100.0, 1]])).any()
    assert not rasterize(np.zeros((0, 3))).any()


def test_rasterize_rejects_non_finite_points():
    with pytest.raises(StrokeError, match="point 1"):
        rasterize(np.array([[1.0, 2.0, 0], [np.nan, 3.0, 1]]))


def test_rasterize_steps_hand_checked():
    # canvas coords: (25,25)->(50,25) | (100,100) | (25,100)->(25,150)
    pts = np.array([[16, 16, 0], [32, 16, 1], [64, 64, 1], [16, 64, 0], [16, 96, 1]], dtype=np.float64)
    out = rasterize_steps(pts, steps=20)
    # round(linspace(0, 5, 21)[1:]) hits 0..5; 5 is never reached -> 5 partial rasters + the full one
    assert len(out) == 6
    counts = [int((im == 255).sum()) for im in out]
    # point: 5; 26-pixel line: 26 * 3 + 2 = 80; +point 5; +point 5; 51-pixel line: 51 * 3 + 2 = 155
    assert counts == [5, 80, 85, 90, 240, 240]
    assert out[1][25, 24] == 255 and out[1][25, 23] == 0 and out[1][24, 50] == 255 and out[1][25, 52] == 0
    assert np.array_equal(out[-1], rasterize(pts))
    # steps=2: round([2.5, 5]) = [2, 5] -> one partial raster (after point 2) + the full one
    two = rasterize_steps(pts, steps=2)
    assert len(two) == 2 and int((two[0] == 255).sum()) == 85


def test_rasterize_steps_matches_reference():
    rng = np.random.default_rng(4)
    for steps in (20, 7, 3):
        for _ in range(10):
            pts = random_sketch(rng)
            got = rasterize_steps(pts, steps=steps)
            expected = ref_rasters(pts, steps=steps)
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                assert np.array_equal(g, e.astype(np.uint8))


# --------------------------------------------------------------------------------------------------
# Incremental canvas
# --------------------------------------------------------------------------------------------------


def test_canvas_incremental_equals_rasterize_and_undo_is_exact():
    rng = np.random.default_rng(5)
    for _ in range(25):
        pts = random_sketch(rng, n_strokes=int(rng.integers(2, 9)))
        strokes = strokes_of(pts)
        canvas = Canvas()
        snapshots = [canvas.image.copy()]
        for k, stroke in enumerate(strokes, start=1):
            before = canvas.image.copy()
            added = canvas.add_stroke(stroke)
            prefix = np.vstack([np.hstack([s, np.r_[np.zeros(len(s) - 1), 1.0][:, None]]) for s in strokes[:k]])
            assert np.array_equal(canvas.image, ref_raster(prefix).astype(np.uint8))
            assert added == int(((before == 0) & (canvas.image == 255)).sum())
            assert canvas.num_strokes == k
            # undo right away, then redo
            canvas.undo()
            assert np.array_equal(canvas.image, before)
            canvas.add_stroke(stroke)
            snapshots.append(canvas.image.copy())
        for k in range(len(strokes), 0, -1):
            canvas.undo()
            assert np.array_equal(canvas.image, snapshots[k - 1])
        assert not canvas.image.any() and canvas.num_strokes == 0


def test_canvas_reset_readonly_and_errors():
    canvas = Canvas()
    assert canvas.add_stroke(np.array([[-50.0, -50.0], [-10.0, -20.0]])) == 0  # fully off-canvas
    n = canvas.add_stroke(np.array([[16.0, 16.0], [32.0, 16.0]]))
    assert n == 80
    assert canvas.add_stroke(np.array([[16.0, 16.0], [32.0, 16.0]])) == 0  # same stroke again: nothing new
    assert canvas.num_strokes == 3
    assert canvas.undo() == 0 and (canvas.image == 255).sum() == 80
    with pytest.raises(ValueError):
        canvas.image[0, 0] = 1
    canvas.reset()
    assert canvas.num_strokes == 0 and not canvas.image.any()
    with pytest.raises(StrokeError):
        canvas.undo()
    # strokes are checked once, where they enter (as_stroke); the canvas trusts what it is given
    with pytest.raises(StrokeError):
        as_stroke(np.zeros((0, 2)))
    with pytest.raises(StrokeError, match="point 1"):
        as_stroke(np.array([[1.0, 1.0], [np.inf, 2.0]]))
    small = Canvas(canvas=100, frame=128)
    small.add_stroke(np.array([[64.0, 64.0]]))
    assert small.image.shape == (100, 100) and small.image[50, 50] == 255
