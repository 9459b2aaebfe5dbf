"""Photos -> embeddings with the bundle's photo encoder: batched by preprocessed size, in process
(Ray's actors reuse the same function, see :mod:`.ray_embed`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from ..backends import Backend
from ..contract import manifest as mf
from ..contract.bundle import Bundle
from ..data.photos import read_images
from ..stroke.pipeline import PhotoPipeline
from .options import IndexOptions


def photo_runner(bundle: Bundle, backend: Backend):
    """The bundle's photo encoder (fp32) loaded on ``backend``."""
    return backend.load(backend.artifact(bundle, mf.PHOTO_ENCODER, "fp32"), bundle.graph_spec(mf.PHOTO_ENCODER))


def embed_photos(
    bundle: Bundle,
    images: Iterable[tuple[int, Image.Image]],
    backend: Backend,
    *,
    batch_size: int = IndexOptions.batch_size,
    on_done: Callable[[int], None] = lambda _n: None,
    runner=None,
) -> dict[int, np.ndarray]:
    """Embed (index, image) pairs, batching photos whose preprocessed sizes agree (``runner``: the
    photo encoder already loaded, as a long-lived worker keeps it)."""
    if runner is None:
        runner = photo_runner(bundle, backend)
    pipeline = PhotoPipeline(bundle.photo_recipe)
    buckets: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
    out: dict[int, np.ndarray] = {}

    def flush(key: tuple[int, int]) -> None:
        items = buckets.pop(key)
        emb = runner.run({mf.IMAGES: np.concatenate([a for _, a in items])})[mf.EMBEDDINGS]
        for (i, _), e in zip(items, emb):
            out[i] = e
        on_done(len(items))

    for i, img in images:
        arr = pipeline.preprocess(img)
        key = arr.shape[2:]
        buckets.setdefault(key, []).append((i, arr))
        if len(buckets[key]) >= batch_size:
            flush(key)
    for key in list(buckets):
        flush(key)
    return out


#: embeds ``paths``: (paths, on_skip(path, exc), on_done(n)) -> {index into paths: embedding}; one with
#: intermediate files (Ray's shards) may have a ``discard_shards()`` that runs once the gallery is written
Embedder = Callable[[list[Path], Callable[[Path, Exception], None], Callable[[int], None]], dict[int, np.ndarray]]


def local_embedder(bundle: Bundle, backend: Backend, *, batch_size: int = IndexOptions.batch_size,
                   strict: bool = IndexOptions.strict) -> Embedder:
    """The in-process embedder: read each image, batch equal sizes through the photo encoder."""

    def embed(paths: list[Path], on_skip, on_done) -> dict[int, np.ndarray]:
        return embed_photos(bundle, read_images(paths, strict=strict, on_skip=on_skip), backend,
                            batch_size=batch_size, on_done=on_done)

    return embed
