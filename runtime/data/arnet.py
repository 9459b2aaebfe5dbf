"""ARNet's dataset layout: trainA/trainB/testA/testB, sketch PNGs paired with their photos.

The evaluation of the PNGs (acc@K) is :mod:`dcssa.runtime.evaluation.png_run`.

``ROOT/<Name>/{trainA, trainB, testA, testB}``: A holds sketches, B photos. A sketch of photo
``x.png`` is ``x_?.png`` in the authors' loaders (``glob(name.split('.')[0] + '_?.png')``); the
Clothes-V1 release names them ``x_01.png`` (two characters), so both rules are accepted and the
report says how many sketches each matched. acc@K is the authors' ``get_acc``: the share of
sketches whose photo is among the K most similar (cosine of unit-norm embeddings). With a
``<Name>_Coordinate`` stroke file beside the folders, the on-the-fly curves are measured as well.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .photos import IMAGE_SUFFIXES
from .qmul import DatasetError, QmulSplit, Sketch, load_coordinates, sketch_points, target_photo

LAYOUT_HINT = "point --dataset at ROOT/<Name> holding trainA, trainB, testA, testB; `dcssa-rt make-dataset --format arnet` writes one"


#: the pairing rules, in the order they are tried: ``x_?.png`` (the authors' loaders), ``x_??.png``
RULES = {"x_?.png": re.compile(r"^(?P<stem>.+)_(?P<n>[^/])\.png$"),
         "x_??.png": re.compile(r"^(?P<stem>.+)_(?P<n>[^/]{2})\.png$")}


def photo_stem(name: str) -> str:
    """The authors' ``img_name.split('.')[0]``: everything before the first dot."""
    return name.split(".")[0]


@dataclass
class ArnetSplit(QmulSplit):
    """A QMUL split whose photos are the files of ``<split>B`` and whose queries are PNG sketches.

    ``photos`` are file names (with their suffix); ``sketches`` are the stroke sketches of the
    coordinate file, if there is one.
    """

    pngs: list[tuple[Path, str]] = field(default_factory=list)  # (sketch PNG, photo file name)
    rules: dict[str, int] = field(default_factory=dict)  # pairing rule -> sketches it matched
    unmatched: list[str] = field(default_factory=list)  # PNGs in A that name no photo of B

    def photo_path(self, name: str) -> Path:
        return self.photo_dir / name

    def photo_id(self, name: str) -> str:
        return name


def pair_sketches(sketch_dir: Path, photo_names: list[str]) -> tuple[list[tuple[Path, str]], dict[str, int], list[str]]:
    """(sketch, photo) pairs by the authors' naming rule; which rule matched how often; the unmatched."""
    by_stem: dict[str, str] = {}
    for name in photo_names:
        by_stem.setdefault(photo_stem(name), name)
    pairs, counts, unmatched = [], {rule: 0 for rule in RULES}, []
    for png in sorted(p for p in sketch_dir.iterdir() if p.is_file() and p.suffix == ".png"):
        for rule, pattern in RULES.items():
            m = pattern.match(png.name)
            if m and m["stem"] in by_stem:
                pairs.append((png, by_stem[m["stem"]]))
                counts[rule] += 1
                break
        else:
            unmatched.append(png.name)
    return pairs, counts, unmatched


def load_arnet_split(dataset: str | Path, split: str = "test", *, limit: int | None = None) -> ArnetSplit:
    """Read ``ROOT/<Name>``'s ``<split>A`` / ``<split>B`` (and the coordinate file when present)."""
    root = Path(dataset)
    if not root.is_dir():
        raise DatasetError("no dataset folder here", path=root, hint=LAYOUT_HINT)
    sketch_dir, photo_dir = root / f"{split}A", root / f"{split}B"
    for folder, what in ((sketch_dir, "sketch"), (photo_dir, "photo")):
        if not folder.is_dir():
            raise DatasetError(f"missing {what} folder {folder.name}", path=folder, hint=LAYOUT_HINT)
    photos = sorted(p.name for p in photo_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(photos) < 2:
        raise DatasetError(f"{photo_dir.name} holds {len(photos)} photo(s): ranking needs at least 2", path=photo_dir)
    pairs, rules, unmatched = pair_sketches(sketch_dir, photos)
    if not pairs:
        raise DatasetError(f"no sketch in {sketch_dir.name} is named after a photo of {photo_dir.name}",
                           path=sketch_dir, hint="a sketch of photo x.png is x_1.png (one character) or x_01.png (two)")
    coord = root / f"{root.name}_Coordinate"
    sketches: list[Sketch] = []
    if coord.is_file():
        stems = {photo_stem(n) for n in photos}
        for key, value in load_coordinates(coord).items():
            if isinstance(key, str) and split in key and target_photo(key) in stems:
                sketches.append(Sketch(key, target_photo(key), sketch_points(value, key, coord)))
    if limit is not None:
        pairs, sketches = pairs[:limit], sketches[:limit]
    return ArnetSplit(root, split, coord, photo_dir, sketches, photos, pngs=pairs, rules=rules, unmatched=unmatched)
