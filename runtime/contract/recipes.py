"""The preprocessing recipes as validated data: what the manifest says is done to strokes and photos.

A bundle's ``preprocessing.sketch`` / ``.photo`` objects are read into these frozen records once,
strictly (like onnxruntime's ``TensorData``): an unknown key, a wrong type or a value this runtime
cannot honour is a :class:`BundleError` naming the key, never a silent default. Everything that
draws or preprocesses (sessions, calibration, parity, evaluation, serve) is built from them by
:mod:`dcssa.runtime.stroke.pipeline`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import BundleError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
SCALE = 1.0 / 255.0

# Facts of the algorithm recorded in the manifest for readers; a bundle may only state these values.
_SKETCH_FACTS = {
    "coordinates": "round(v / frame * canvas) in float32, half to even",
    "line": "bresenham-0.2.1",
    "draw_if": "0 < x < canvas and 0 < y < canvas",
    "layout": "NCHW",
}
INKS = {
    "white": "white strokes (255) on black (0), grey replicated to RGB",  # DC-SSA (SPEC section 4)
    "black": "black strokes (0) on white (255), grey replicated to RGB",  # ARNet's sketch PNGs
}
_PHOTO_FACTS = {"mode": "RGB", "layout": "NCHW"}


def _numbers(value: Any, count: int) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == count
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
    )


def _check_common(recipe: _Normalised, where: str, path: Path | str | None) -> None:
    def bad(key: str, want: str) -> BundleError:
        return BundleError(f"{where}.{key} must be {want}, got {getattr(recipe, key)!r}", path=path,
                           hint="re-export the bundle with dcssa-export")

    if not _numbers(recipe.mean, 3):
        raise bad("mean", "three numbers")
    if not _numbers(recipe.std, 3) or not all(s > 0 for s in recipe.std):
        raise bad("std", "three positive numbers")
    if recipe.resample not in RESAMPLE:
        raise bad("resample", f"one of {', '.join(RESAMPLE)}")
    if not isinstance(recipe.scale, (int, float)) or abs(recipe.scale - SCALE) > 1e-12:
        raise bad("scale", "1/255 (uint8 to [0, 1])")


@dataclass(frozen=True)
class _Normalised:
    """Fields both recipes share: resize filter and per-channel normalisation after ``/255``."""

    resample: str = "bilinear"
    scale: float = SCALE
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    _facts = {}  # overridden per recipe: keys whose value is fixed by the algorithm
    _where = ""

    def derived(self) -> dict:
        """Descriptive keys that follow from the fields (written for readers, checked on reading)."""
        return {}

    def to_dict(self) -> dict:
        doc = asdict(self)
        for k, v in doc.items():
            if isinstance(v, tuple):
                doc[k] = list(v)
        return {**doc, **self._facts, **self.derived()}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None, *, path: Path | str | None = None):
        """Read a manifest object strictly; missing keys take the DC-SSA defaults (schema 1)."""
        if doc is None:
            return cls()
        if not isinstance(doc, Mapping):
            raise BundleError(f"{cls._where} must be an object, got {type(doc).__name__}", path=path)
        names = {f.name for f in fields(cls)}
        descriptive = set(cls().derived())
        unknown = sorted(k for k in doc if k not in names and k not in cls._facts and k not in descriptive)
        if unknown:
            raise BundleError(f"{cls._where} has unknown key(s) {', '.join(unknown)}", path=path,
                              hint="this bundle was written by a newer dcssa-export: upgrade dcssa-rt")
        for key, want in cls._facts.items():
            if key in doc and doc[key] != want:
                raise BundleError(f"{cls._where}.{key} = {doc[key]!r} is not supported (this runtime does {want!r})",
                                  path=path, hint="upgrade dcssa-rt, or re-export the bundle")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items() if k in names}
        recipe = cls(**values)
        recipe.check(path)
        for key, want in recipe.derived().items():
            if key in doc and doc[key] != want:
                raise BundleError(f"{cls._where}.{key} = {doc[key]!r} contradicts the recipe's fields (they give {want!r})",
                                  path=path, hint="re-export the bundle with dcssa-export")
        return recipe


@dataclass(frozen=True)
class SketchRecipe(_Normalised):
    """Strokes in a ``frame`` square -> ``canvas`` raster (SPEC section 4) -> ``size`` network input.

    ``line_width`` (odd) and ``ink`` say how the family's training sketches look: DC-SSA's are
    white 3-pixel lines on black; ARNet's are PNGs of black lines on white.
    """

    frame: float = 256.0
    canvas: int = 400
    size: tuple[int, int] = (299, 299)
    line_width: int = 3
    ink: str = "white"

    _facts = _SKETCH_FACTS
    _where = "preprocessing.sketch"

    @property
    def dilation(self) -> int:
        """How many 3 x 3 cross dilations give ``line_width`` (a diamond of that radius)."""
        return (self.line_width - 1) // 2

    def derived(self) -> dict:
        return {"dilation": {"structure": "cross3x3", "iterations": self.dilation, "border": 0},
                "colours": INKS.get(self.ink, "?")}

    def check(self, path: Path | str | None = None) -> None:
        _check_common(self, self._where, path)
        if not isinstance(self.frame, (int, float)) or isinstance(self.frame, bool) or not self.frame > 0:
            raise BundleError(f"{self._where}.frame must be a positive number, got {self.frame!r}", path=path)
        if not isinstance(self.canvas, int) or isinstance(self.canvas, bool) or self.canvas < 3:
            raise BundleError(f"{self._where}.canvas must be an integer >= 3, got {self.canvas!r}", path=path)
        if not _numbers(self.size, 2) or any(int(s) != s or s <= 0 for s in self.size):
            raise BundleError(f"{self._where}.size must be two positive integers [H, W], got {self.size!r}", path=path)
        lw = self.line_width
        if not isinstance(lw, int) or isinstance(lw, bool) or lw < 1 or lw % 2 == 0 or lw > 31:
            raise BundleError(f"{self._where}.line_width must be an odd integer in 1..31, got {lw!r}", path=path)
        if self.ink not in INKS:
            raise BundleError(f"{self._where}.ink must be one of {', '.join(INKS)}, got {self.ink!r}", path=path)


@dataclass(frozen=True)
class PhotoRecipe(_Normalised):
    """Photo -> RGB, shorter side resized to ``resize_shorter_side`` (aspect kept) -> network input.

    With ``size`` set, every photo is resized to exactly ``[H, W]`` instead (torchvision
    ``Resize((H, W))``): for encoders with a fixed input, such as ARNet's ViT.
    """

    resize_shorter_side: int = 299
    min_side: int = 75
    size: tuple[int, int] | None = None

    _facts = _PHOTO_FACTS
    _where = "preprocessing.photo"

    def check(self, path: Path | str | None = None) -> None:
        _check_common(self, self._where, path)
        for key in ("resize_shorter_side", "min_side"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise BundleError(f"{self._where}.{key} must be a positive integer, got {v!r}", path=path)
        if self.size is not None and (not _numbers(self.size, 2) or any(int(s) != s or s <= 0 for s in self.size)):
            raise BundleError(f"{self._where}.size must be null or two positive integers [H, W], got {self.size!r}",
                              path=path)


def default_preprocessing() -> dict:
    """SPEC section 4 as the manifest's ``preprocessing`` object."""
    return {"sketch": SketchRecipe().to_dict(), "photo": PhotoRecipe().to_dict()}


#: ARNet's evaluation transform, ``Resize(224) + ToTensor()`` with no normalisation (square inputs)
ARNET_SKETCH_CANVAS = 256
ARNET_LINE_WIDTH = 3


def arnet_preprocessing(image_size: int = 224, canvas: int = ARNET_SKETCH_CANVAS,
                        line_width: int = ARNET_LINE_WIDTH) -> dict:
    """ARNet's ``preprocessing`` object: no mean/std, black ink on white, fixed square input.

    The canvas and line width of the live sketch are our defaults (the family's sketches are PNGs,
    not strokes); a user matches their training PNGs with ``dcssa-export --sketch-canvas /
    --line-width``.
    """
    plain = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    sketch = SketchRecipe(canvas=canvas, size=(image_size, image_size), line_width=line_width, ink="black", **plain)
    photo = PhotoRecipe(resize_shorter_side=image_size, min_side=image_size // 16,
                        size=(image_size, image_size), **plain)
    sketch.check(), photo.check()
    return {"sketch": sketch.to_dict(), "photo": photo.to_dict()}
