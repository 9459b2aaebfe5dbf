"""The stroke pipeline and the photo pipeline, each built once from its recipe.

Sessions, calibration sets, export parity, evaluation and the server all draw strokes and
preprocess rasters and photos through these two objects, so what reaches an encoder is decided in
exactly one place: the bundle's :mod:`~dcssa.runtime.contract.recipes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from PIL import Image

from ..contract.recipes import PhotoRecipe, SketchRecipe
from ..errors import StrokeError
from .raster import Canvas, rasterize, rasterize_steps

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _normalise_lut(mean, std) -> np.ndarray:
    """``(3, 256)`` float32 table of ``(v / 255 - mean) / std``.

    Each entry is computed with the same float32 operations as ToTensor + Normalize, so a table
    lookup is bit-identical to doing the arithmetic per pixel, and much cheaper.
    """
    v = np.arange(256, dtype=np.float32) / np.float32(255)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    return ((v[None, :] - m) / s).astype(np.float32)


def _to_tensor(lut: np.ndarray, planes: Iterable[np.ndarray], height: int, width: int) -> np.ndarray:
    out = np.empty((1, 3, height, width), dtype=np.float32)
    for c, plane in enumerate(planes):
        np.take(lut[c], plane, out=out[0, c])
    return out


class SketchPipeline:
    """Strokes -> incremental canvas -> normalised ``(1, 3, H, W)`` float32, as the authors' transform.

    The raster is grey, so the resize runs once on the single band (Pillow resamples RGB bands
    independently with the same kernel, so this is identical and 3x cheaper) and the channels come
    from per-channel lookup tables.
    """

    def __init__(self, recipe: SketchRecipe | None = None) -> None:
        self.recipe = recipe or SketchRecipe()
        self.height, self.width = (int(s) for s in self.recipe.size)
        self._resample = _RESAMPLE[self.recipe.resample]
        self._lut = _normalise_lut(self.recipe.mean, self.recipe.std)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.height, self.width)

    def canvas(self) -> Canvas:
        """A new, empty incremental canvas of the recipe's size, frame and line width."""
        return Canvas(canvas=self.recipe.canvas, frame=self.recipe.frame, dilation=self.recipe.dilation)

    def render(self, raster: np.ndarray) -> np.ndarray:
        """An ink mask (ink 255, as canvases hold it) -> the grey picture the family trained on."""
        gray = np.ascontiguousarray(raster, dtype=np.uint8)
        if gray.ndim != 2:
            raise StrokeError(f"expected a 2-D grey raster, got shape {gray.shape}")
        return np.subtract(255, gray, dtype=np.uint8) if self.recipe.ink == "black" else gray

    def preprocess(self, raster: np.ndarray) -> np.ndarray:
        """A ``canvas x canvas`` uint8 ink mask -> the encoder's input."""
        gray = self.render(raster)
        if gray.shape != (self.height, self.width):
            gray = np.asarray(Image.fromarray(gray).resize((self.width, self.height), self._resample))
        return _to_tensor(self._lut, (gray, gray, gray), self.height, self.width)

    __call__ = preprocess

    def prefixes(self, strokes: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The uint8 canvas after each stroke (a copy each), drawn as a live session draws it."""
        canvas = self.canvas()
        for stroke in strokes:
            canvas.add_stroke(stroke)
            yield canvas.image.copy()

    def prefix_images(self, strokes: Iterable[np.ndarray]) -> np.ndarray:
        """Encoder inputs after each stroke: ``(T, 3, H, W)``."""
        return np.concatenate([self.preprocess(c) for c in self.prefixes(strokes)])

    def rasterize(self, points: np.ndarray) -> np.ndarray:
        """A whole ``N x 3`` (x, y, pen_up) sketch -> uint8 raster."""
        return rasterize(points, frame=self.recipe.frame, canvas=self.recipe.canvas, dilation=self.recipe.dilation)

    def point_steps(self, points: np.ndarray, steps: int = 20) -> list[np.ndarray]:
        """The authors' point-sliced partial rasters (see :func:`~dcssa.runtime.stroke.raster.rasterize_steps`)."""
        return rasterize_steps(points, steps, frame=self.recipe.frame, canvas=self.recipe.canvas,
                               dilation=self.recipe.dilation)


def photo_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(new_w, new_h)`` exactly as torchvision's ``Resize(short_side)`` (no max_size) computes."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = short_side, int(short_side * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


class PhotoPipeline:
    """Photo -> ``(1, 3, h, w)`` float32 like ``Resize(shorter side or (H, W)) + ToTensor + Normalize``; no crop."""

    def __init__(self, recipe: PhotoRecipe | None = None) -> None:
        self.recipe = recipe or PhotoRecipe()
        self._resample = _RESAMPLE[self.recipe.resample]
        self._lut = _normalise_lut(self.recipe.mean, self.recipe.std)

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The network input size ``(w, h)`` of a ``width x height`` photo."""
        if self.recipe.size is not None:
            return int(self.recipe.size[1]), int(self.recipe.size[0])
        return photo_size(width, height, self.recipe.resize_shorter_side)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        img = image.convert("RGB")
        new_w, new_h = self.size(img.width, img.height)
        if (new_w, new_h) != img.size:
            img = img.resize((new_w, new_h), self._resample)
        rgb = np.asarray(img, dtype=np.uint8)
        return _to_tensor(self._lut, (rgb[:, :, c] for c in range(3)), new_h, new_w)

    __call__ = preprocess
