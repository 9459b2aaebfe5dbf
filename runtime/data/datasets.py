"""A SYNTHETIC dataset in the authors' QMUL layout: ``ROOT/DS/photo/*.png`` + ``ROOT/DS/DS_Coordinate``.

The coordinate file is a pickle of ``{"/test/<photo>_<n>": N x 3 points}``, as the authors' loaders
read it. Photos are line drawings of random shapes and sketches are users' tracings of them, so
retrieval has a right answer without any download.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..atomic import staged_dir
from ..stroke.parse import strokes_to_points
from . import DatasetOptions
from .synthetic import line_drawing, random_shape, tracing


def photo_name(i: int) -> str:
    return f"shape{i:04d}"


def generate(photos: int, sketches_per_photo: int = 1, seed: int = 0) -> Iterator[tuple[str, list, list]]:
    """(photo name, shape strokes, [tracings]) in a fixed random order: the one source of the catalogue.

    ``make-dataset`` and the structured demo checkpoints both draw from this (:func:`catalogue`), so a
    demo model built for ``--photos 40 --seed 0`` has its projections fitted on exactly the photos
    that dataset contains. Shapes and tracings share one random stream: the shapes after the first
    depend on ``sketches_per_photo``, and the catalogue is that of one sketch per photo (the default).
    """
    rng = np.random.default_rng(seed)
    for i in range(photos):
        shape = random_shape(rng)
        yield photo_name(i), shape, [tracing(shape, rng) for _ in range(sketches_per_photo)]


def catalogue(photos: int, seed: int = 0) -> list[list]:
    """The shapes of ``make-dataset --photos PHOTOS --seed SEED`` (one sketch per photo, the default)."""
    return [shape for _, shape, _ in generate(photos, 1, seed)]


def _keep_tracing(tmp: Path, coords: dict, split: str, pname: str, n: int, strokes: list) -> np.ndarray:
    """Record one tracing in both forms the dataset carries: the coordinate pickle's entry and
    ``strokes/<photo>_<n>.json`` for ``dcssa-rt query``; returns its points."""
    points = strokes_to_points(strokes)
    coords[f"/{split}/{pname}_{n}"] = points.astype(np.float32)
    doc = {"strokes": [np.round(s, 2).tolist() for s in strokes], "target": f"{pname}.png"}
    (tmp / "strokes" / f"{pname}_{n}.json").write_text(json.dumps(doc) + "\n")
    return points


def _write_coordinates(tmp: Path, name: str, coords: dict) -> None:
    with open(tmp / f"{name}_Coordinate", "wb") as f:
        pickle.dump(coords, f)


def write_dataset(out: str | Path, **settings: Any) -> Path:
    """Write the dataset folder ``out/name`` atomically (``settings``: those of :class:`DatasetOptions`); returns it."""
    return write_synthetic(out, layout="qmul", **settings)


def _write_qmul(root: Path, o: DatasetOptions) -> None:
    n_test = int(round(o.photos * o.test_share))
    with staged_dir(root, force=o.force) as tmp:
        (tmp / "photo").mkdir()
        (tmp / "strokes").mkdir()
        coords: dict[str, np.ndarray] = {}
        for i, (pname, shape, tracings) in enumerate(generate(o.photos, o.sketches_per_photo, o.seed)):
            line_drawing(shape).save(tmp / "photo" / f"{pname}.png")
            split = "test" if i < n_test else "train"
            for n, strokes in enumerate(tracings, 1):
                _keep_tracing(tmp, coords, split, pname, n, strokes)
        _write_coordinates(tmp, o.name, coords)
        (tmp / "README.txt").write_text(
            "SYNTHETIC dataset written by `dcssa-rt make-dataset` (line drawings of random shapes and\n"
            f"jittered tracings of them), seed {o.seed}. Not real data.\n"
        )


def arnet_photo(shape: list) -> Image.Image:
    """The catalogue photo of ``shape`` for ARNet: the line drawing as dark lines on white, like its
    sketches and like product photos on a white background."""
    return ImageOps.invert(line_drawing(shape))


def write_arnet_dataset(out: str | Path, **settings: Any) -> Path:
    """The same synthetic data in ARNet's layout: ``out/name/{trainA,trainB,testA,testB}``.

    Sketch PNGs are the tracings drawn as an ARNet bundle's live session draws strokes (its default
    canvas, line width and black ink), named ``<photo>_<n>.png`` (one character; two when a photo has
    more than 9 sketches, as Clothes-V1 names them). The strokes are kept too: ``<name>_Coordinate``
    for the on-the-fly curves and ``strokes/*.json`` for ``dcssa-rt query``.
    """
    return write_synthetic(out, layout="arnet", **settings)


def _write_arnet(root: Path, o: DatasetOptions) -> None:
    from ..contract.recipes import SketchRecipe, arnet_preprocessing
    from ..stroke.pipeline import SketchPipeline

    pipe = SketchPipeline(SketchRecipe.from_dict(arnet_preprocessing()["sketch"]))
    n_test = int(round(o.photos * o.test_share))
    width = 1 if o.sketches_per_photo <= 9 else 2
    with staged_dir(root, force=o.force) as tmp:
        for sub in ("trainA", "trainB", "testA", "testB", "strokes"):
            (tmp / sub).mkdir()
        coords: dict[str, np.ndarray] = {}
        for i, (pname, shape, tracings) in enumerate(generate(o.photos, o.sketches_per_photo, o.seed)):
            split = "test" if i < n_test else "train"
            arnet_photo(shape).save(tmp / f"{split}B" / f"{pname}.png")
            for n, strokes in enumerate(tracings, 1):
                points = _keep_tracing(tmp, coords, split, pname, n, strokes)
                Image.fromarray(pipe.render(pipe.rasterize(points))).save(tmp / f"{split}A" / f"{pname}_{n:0{width}d}.png")
        _write_coordinates(tmp, o.name, coords)
        (tmp / "README.txt").write_text(
            "SYNTHETIC dataset in ARNet's layout written by `dcssa-rt make-dataset --format arnet` (line drawings\n"
            f"of random shapes in B, rendered jittered tracings of them in A), seed {o.seed}. Not real data.\n"
        )


def write_synthetic(out: str | Path, options: DatasetOptions | None = None, **settings: Any) -> Path:
    """The synthetic dataset ``options`` (with ``settings`` changed) describe, written atomically in its
    layout at ``out/name``; returns that folder."""
    o = dataclasses.replace(options or DatasetOptions(), **settings)
    root = Path(out) / o.name
    (_write_arnet if o.layout == "arnet" else _write_qmul)(root, o)
    return root
