"""Catalogue photos for the page: only files the gallery indexed, never a path outside its root.

A request names a gallery id (a relative path recorded at indexing time). It is served only when
that exact id is in the gallery AND its resolved path (symlinks followed) lies under the photos
root, so neither ``..`` nor a symlink nor a tampered ids.json can reach another file. Thumbnails
are made once and kept in a bounded LRU cache.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..search.gallery import Gallery
from .errors import PhotoNotFound

THUMB_SIDE = 256


class PhotoStore:
    def __init__(self, gallery: Gallery | None, root: str | Path | None, *, cache_size: int = 2048) -> None:
        self.ids = frozenset(gallery.ids) if gallery is not None else frozenset()
        if root is None and gallery is not None:
            root = gallery.meta.get("photos_root")
        self.root = Path(root).resolve() if root else None
        self.thumbnail = lru_cache(maxsize=cache_size)(self._thumbnail)

    @property
    def available(self) -> bool:
        return self.root is not None and self.root.is_dir()

    def path(self, photo_id: str) -> Path:
        """The file of an indexed photo, or :class:`PhotoNotFound`."""
        if photo_id not in self.ids:
            raise PhotoNotFound(f"{photo_id!r} is not a photo of the gallery", hint="use an id from a query result")
        if not self.available:
            raise PhotoNotFound(
                "the photos folder is not available on the server",
                path=self.root,
                hint="start the server with --photos DIR (the folder that was indexed)",
            )
        path = (self.root / photo_id).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            raise PhotoNotFound(f"the file of {photo_id!r} is missing under the photos folder", path=self.root,
                                hint="re-index the catalogue, or pass the right --photos DIR")
        return path

    def _thumbnail(self, photo_id: str) -> bytes:
        """JPEG, longer side at most THUMB_SIDE; cached per id."""
        path = self.path(photo_id)
        try:
            with Image.open(path) as im:
                im.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decode at reduced size
                img = im.convert("RGB")
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise PhotoNotFound(f"the file of {photo_id!r} cannot be read ({exc})", path=path) from None
        img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return buf.getvalue()
