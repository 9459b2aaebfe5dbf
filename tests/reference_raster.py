"""Independent references for raster and preprocessing tests: the authors' steps written out literally
(float32 scaling, the PyPI ``bresenham`` package, ``scipy.ndimage.binary_dilation``, torchvision)."""

from __future__ import annotations

import numpy as np
import pytest

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


# --------------------------------------------------------------------------------------------------
# Reference: the authors' steps, written out literally (slow, per-pixel Python)
# --------------------------------------------------------------------------------------------------


def ref_scale(points: np.ndarray, side: int = 400) -> np.ndarray:
    v = np.asarray(points).astype(np.float32)
    v[:, :2] = v[:, :2] / np.array([256, 256])  # float64 result stored back into float32
    v[:, :2] = v[:, :2] * side  # float32
    return np.round(v)


def ref_rasters(points: np.ndarray, side: int = 400, steps: int | None = None) -> list[np.ndarray]:
    """float64 {0, 255} rasters: partial ones at the sample points (if steps), then the full one."""
    v = ref_scale(points, side)
    raster_image = np.zeros((side, side), dtype=np.float32)
    sample_freq = list(np.round(np.linspace(0, len(v), steps + 1)[1:])) if steps else []
    out = []
    init_x, init_y = int(v[0, 0]), int(v[0, 1])
    for i in range(len(v)):
        if i > 0 and v[i - 1, 2] == 1:
            init_x, init_y = int(v[i, 0]), int(v[i, 1])
        for cx, cy in _bresenham().bresenham(init_x, init_y, int(v[i, 0]), int(v[i, 1])):
            if 0 < cx < side and 0 < cy < side:
                raster_image[cy, cx] = 255.0
        init_x, init_y = int(v[i, 0]), int(v[i, 1])
        if i in sample_freq:
            out.append(_ndimage().binary_dilation(raster_image) * 255.0)
    out.append(_ndimage().binary_dilation(raster_image) * 255.0)
    return out


def ref_raster(points: np.ndarray, side: int = 400) -> np.ndarray:
    return ref_rasters(points, side)[-1]


def torchvision_transform(size=299):
    transforms = pytest.importorskip("torchvision.transforms")
    return transforms.Compose(
        [transforms.Resize(size), transforms.ToTensor(), transforms.Normalize(mean=MEAN, std=STD)]
    )


def random_sketch(rng: np.random.Generator, n_strokes: int | None = None) -> np.ndarray:
    """Random N x 3 sketch with points inside, on and beyond every edge of the 256 frame."""
    n_strokes = n_strokes or int(rng.integers(1, 7))
    rows = []
    for _ in range(n_strokes):
        n = int(rng.integers(1, 12))
        kind = rng.random()
        if kind < 0.25:
            xy = rng.integers(-40, 300, size=(n, 2)).astype(np.float64)  # integers, incl. edges
        elif kind < 0.5:
            xy = rng.uniform(-60.0, 320.0, size=(n, 2))  # fractional, beyond the edges
        else:
            xy = rng.uniform(0.0, 256.0, size=(n, 2))
        edge_vals = np.array([0.0, 256.0, -1.0, 255.0, 257.0, 0.3, 0.32, 0.64, 255.68])
        mask = rng.random((n, 2)) < 0.15
        xy[mask] = rng.choice(edge_vals, size=int(mask.sum()))
        pen = np.zeros((n, 1))
        pen[-1] = 1
        rows.append(np.hstack([xy, pen]))
    pts = np.vstack(rows)
    if rng.random() < 0.2:
        pts[-1, 2] = 0  # sketch whose last stroke is not closed
    return pts




def _bresenham():
    return pytest.importorskip("bresenham")


def _ndimage():
    return pytest.importorskip("scipy.ndimage")
