"""What an index run does before any photo is embedded: which files are new, which rows of the gallery
being updated stay, which labels go (``--append``); a new gallery embeds every file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import refuse_existing
from ..contract.bundle import Bundle
from ..data.photos import list_images
from ..errors import GalleryError
from ..search.gallery import GALLERY_META, Gallery
from .faiss_build import IndexSpec, recorded_name
from .options import IndexOptions


@dataclass
class Plan:
    """Embed ``new`` (files under ``photos``); keep ``keep_rows`` of ``old``; drop its ``removed`` labels."""

    photos: Path
    new: list[Path]
    old: Gallery | None = None
    keep_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    removed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def photo_id(self, path: Path) -> str:
        """A photo's id in the gallery: its path under ``photos``, with forward slashes."""
        return path.relative_to(self.photos).as_posix()

    @property
    def old_index(self) -> dict | None:
        """The gallery.json entry of the index being updated (None: no index, or a new gallery)."""
        return self.old.meta.get("index") if self.old is not None else None


def gallery_to_update(photos: Path, bundle: Bundle, out: Path, options: IndexOptions,
                      spec: IndexSpec | None) -> Gallery | None:
    """``append``: the gallery at ``out`` (it must exist and keep its index type); else None, once
    ``out`` may be written (absent, or ``force``)."""
    if not options.append:
        refuse_existing(out, options.force)
        return None
    if not (out / GALLERY_META).is_file():
        raise GalleryError("--append needs an existing gallery here", path=out,
                           hint=f"build it first without --append: `dcssa-rt index {photos} --out {out}`")
    old = Gallery.load(out, bundle, load_index=False)
    if spec is not None and recorded_name(old.meta.get("index")) != spec.name:
        raise GalleryError("--append keeps the gallery's index type; --index asks for another one", path=out,
                           hint="drop --index to append, or rebuild with --index ... --force")
    return old


def plan_run(photos: Path, old: Gallery | None) -> Plan:
    """Every image under ``photos`` against ``old``: the new files, the kept rows, the removed labels."""
    paths = list_images(photos)
    if not paths:
        raise GalleryError("no images found (png, jpg, jpeg, bmp, gif, webp, tif)", path=photos)
    if old is None:
        return Plan(photos, paths)
    present = {p.relative_to(photos).as_posix() for p in paths}
    have = set(old.ids)
    keep = np.array([row for row, pid in enumerate(old.ids) if pid in present], np.int64)
    gone = np.array([row for row, pid in enumerate(old.ids) if pid not in present], np.int64)
    new = [p for p in paths if p.relative_to(photos).as_posix() not in have]
    return Plan(photos, new, old, keep, old.labels[gone] if len(gone) else np.zeros(0, np.int64))
