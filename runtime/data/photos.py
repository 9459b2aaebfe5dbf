"""Catalogue photos on disk: which files are images, and reading them without failing on one bad file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import GalleryError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def list_images(root: Path) -> list[Path]:
    """Images below ``root`` (recursive, by suffix), sorted for a stable id order."""
    if not root.is_dir():
        raise GalleryError("not a folder of photos", path=root, hint="pass the folder holding the catalogue images")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_images(paths: list[Path], *, strict: bool = False,
                on_skip: Callable[[Path, Exception], None] = lambda _p, _e: None) -> Iterator[tuple[int, Image.Image]]:
    """(index, RGB image) of every readable file; an unreadable one is skipped (``on_skip``) or,
    with ``strict``, a GalleryError naming it."""
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im.load()
                img = im.convert("RGB")
            if min(img.size) < 1:
                raise OSError("empty image")
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            if strict:
                raise GalleryError(f"unreadable image ({exc})", path=p, hint="fix or remove it, or drop --strict") from None
            on_skip(p, exc)
            continue
        yield i, img
