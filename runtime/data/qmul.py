"""Reading a dataset in the authors' QMUL layout, with errors that name the file and the fix.

``ROOT/DS/DS_Coordinate`` is a pickle of ``{"/test/<photo>_<n>": N x 3 points}`` and the photos are
``ROOT/DS/photo/<photo>.png``. Split membership and target photo follow the authors' loader:
a key is in split ``s`` when ``s`` occurs in it, and its photo is the key's file name without
its last ``_suffix``. The pickle is user data, so it is read with an unpickler that can build
only plain containers and numpy arrays, never call anything else.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DcssaError

MAKE_HINT = "point --dataset at ROOT/DS (the folder holding DS_Coordinate and photo/); `dcssa-rt make-dataset OUT` writes one"


class DatasetError(DcssaError):
    """A dataset folder that is missing, malformed or inconsistent."""


def _numpy_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray, numeric  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric

    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("_codecs").encode,  # protocol <= 2 stores bytes this way
    }
    for mod in ("numpy.core", "numpy._core"):  # pickles written by numpy 1.x and 2.x
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    for name in ("set", "frozenset", "bytearray", "complex", "slice", "range"):
        allowed[("builtins", name)] = getattr(__import__("builtins"), name)
        allowed[("__builtin__", name)] = allowed[("builtins", name)]
    return allowed


class _DataUnpickler(pickle.Unpickler):
    """Builds containers, strings, numbers and numpy arrays; refuses every other global."""

    _allowed = None

    def find_class(self, module: str, name: str):
        allowed = type(self)._allowed
        if allowed is None:
            allowed = type(self)._allowed = _numpy_globals()
        try:
            return allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to import {module}.{name}") from None


def load_coordinates(path: Path) -> dict:
    """Read a coordinate pickle safely; any failure is a :class:`DatasetError` naming ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read the coordinate file ({exc.strerror or exc})", path=path) from None
    try:
        # latin1 lets Python 2 pickles of numpy arrays load (numpy's advice); no effect on Python 3 ones
        obj = _DataUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if "refusing to import" in str(exc):
            raise DatasetError(
                f"not loaded: the pickle asks to {exc}, which a coordinate file never needs",
                path=path,
                hint="a coordinate file holds only a dict of N x 3 arrays; rewrite it with pickle.dump(dict_of_arrays)",
            ) from None
        raise DatasetError(f"not a readable pickle ({exc})", path=path, hint=MAKE_HINT) from None
    except Exception as exc:  # truncated or garbage bytes raise many different types
        raise DatasetError(f"not a readable pickle ({type(exc).__name__}: {exc})", path=path, hint=MAKE_HINT) from None
    if not isinstance(obj, dict):
        raise DatasetError(
            f"the pickle holds {type(obj).__name__}, not a dict of sketch path -> points", path=path, hint=MAKE_HINT
        )
    return obj


def target_photo(key: str) -> str:
    """The photo a sketch key names: ``/test/shoe_12_3`` -> ``shoe_12`` (as the authors split it)."""
    return "_".join(key.split("/")[-1].split("_")[:-1])


@dataclass
class Sketch:
    key: str
    photo: str  # target photo name, without .png
    points: np.ndarray  # N x 3 (x, y, pen_up), float64


@dataclass
class QmulSplit:
    """The sketches of one split and the gallery they are ranked against (photos, deduplicated)."""

    root: Path
    split: str
    coordinate_file: Path
    photo_dir: Path
    sketches: list[Sketch]
    photos: list[str] = field(default_factory=list)  # gallery names, in order of first appearance

    @property
    def name(self) -> str:
        return self.root.name

    def photo_path(self, name: str) -> Path:
        return self.photo_dir / f"{name}.png"

    def photo_id(self, name: str) -> str:
        """The id a gallery built on :attr:`photo_dir` gives this photo."""
        return f"{name}.png"


def sketch_points(value, key: str, path: Path) -> np.ndarray:
    """Sketch ``key``'s (N, 3) ``x, y, pen_up`` points from the stroke file ``path``, checked (finite, N x 3)."""
    where = f"sketch {key!r}"
    try:
        pts = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: points are {type(value).__name__}, not an N x 3 array of numbers", path=path) from None
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise DatasetError(f"{where}: points must be an N x 3 array (x, y, pen_up), got shape {pts.shape}", path=path)
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise DatasetError(f"{where}: point {int(np.nonzero(bad)[0][0])} is not finite", path=path)
    return pts


def load_split(dataset: str | Path, split: str = "test", *, limit: int | None = None) -> QmulSplit:
    """Read ``dataset`` (``ROOT/DS``) and check it: every sketch readable, every target photo present.

    ``limit`` keeps only the first sketches as queries; the gallery stays every photo of the split.
    """
    root = Path(dataset)
    if not root.is_dir():
        raise DatasetError("no dataset folder here", path=root, hint=MAKE_HINT)
    coord = root / f"{root.name}_Coordinate"
    if not coord.is_file():
        others = sorted(p.name for p in root.glob("*_Coordinate"))
        hint = (
            f"found {', '.join(others)}: the folder must be named after its coordinate file (DS for DS_Coordinate)"
            if others
            else MAKE_HINT
        )
        raise DatasetError(f"missing coordinate file {coord.name}", path=coord, hint=hint)
    photo_dir = root / "photo"
    if not photo_dir.is_dir():
        raise DatasetError("missing photo folder", path=photo_dir, hint="the layout is ROOT/DS/photo/<photo>.png")
    coords = load_coordinates(coord)
    keys = [k for k in coords if isinstance(k, str) and split in k]
    if not keys:
        sample = ", ".join(repr(k) for k in list(coords)[:3]) or "none"
        raise DatasetError(
            f"no '{split}' sketches: no key contains '{split}' ({len(coords)} keys, e.g. {sample})",
            path=coord,
            hint="keys look like '/test/<photo>_<n>'; pick another --split or fix the file",
        )
    sketches: list[Sketch] = []
    photos: dict[str, None] = {}
    missing: list[tuple[str, Path]] = []
    for key in keys:
        name = target_photo(key)
        if not name:
            raise DatasetError(
                f"sketch {key!r}: cannot tell its photo (the file name must be <photo>_<n>)", path=coord
            )
        pts = sketch_points(coords[key], key, coord)
        if limit is None or len(sketches) < limit:  # the gallery still holds every photo of the split
            sketches.append(Sketch(key, name, pts))
        if name not in photos:
            photos[name] = None
            if not (photo_dir / f"{name}.png").is_file():
                missing.append((key, photo_dir / f"{name}.png"))
    if missing:
        key, path = missing[0]
        more = f" (and {len(missing) - 1} more photos)" if len(missing) > 1 else ""
        raise DatasetError(
            f"missing photo for sketch {key!r}{more}", path=path, hint=f"add the photo, or remove the sketch from {coord}"
        )
    if len(photos) < 2:
        raise DatasetError(
            f"the '{split}' sketches target only {len(photos)} photo: ranking needs a gallery of at least 2",
            path=coord,
        )
    return QmulSplit(root, split, coord, photo_dir, sketches, list(photos))
