"""The indexing job: a photo folder -> a gallery folder (the matrix, stable labels, an optional FAISS
index with measured recall), built anew or updated in place with ``--append``; written atomically."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import refuse_existing, staged_dir
from ..backends import Backend, get_backend
from ..contract.bundle import Bundle
from ..data.photos import list_images
from ..errors import GalleryError
from ..progress import Progress, Say, silent
from ..search.gallery import EMBEDDINGS, GALLERY_META, IDS, LABELS, ROW_CHUNK, Gallery
from .embed import Embedder, local_embedder

if TYPE_CHECKING:  # FAISS is optional: imported by the functions that build or read an index
    from ..search.faiss_index import FaissIndex
    from .faiss_build import IndexSpec


def _gallery_meta(bundle: Bundle, emb: np.ndarray, ids: list[str], photos: Path, skipped: list[str]) -> dict:
    return {
        "photo_encoder_sha256": bundle.photo_encoder_id(),
        "bundle_created": bundle.manifest.get("created"),
        "demo": bundle.demo,
        "count": len(ids),
        "dim": int(emb.shape[1]),
        "dtype": str(emb.dtype),
        "photos_root": str(photos.resolve()),
        "skipped": skipped,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


@dataclass
class _Plan:
    """What an index run does: embed ``new`` paths; keep ``keep_rows`` of ``old``; drop ``removed`` labels."""

    new: list[Path]
    old: Gallery | None = None
    keep_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    removed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def _plan(photos: Path, paths: list[Path], old: Gallery | None) -> _Plan:
    if old is None:
        return _Plan(paths)
    present = {p.relative_to(photos).as_posix() for p in paths}
    have = set(old.ids)
    keep = np.array([row for row, pid in enumerate(old.ids) if pid in present], np.int64)
    gone = np.array([row for row, pid in enumerate(old.ids) if pid not in present], np.int64)
    new = [p for p in paths if p.relative_to(photos).as_posix() not in have]
    return _Plan(new, old, keep, old.labels[gone] if len(gone) else np.zeros(0, np.int64))


def _write_matrix(path: Path, plan: _Plan, new_emb: np.ndarray, dtype) -> np.ndarray:
    """embeddings.npy: the kept old rows (copied in chunks), then the new ones; returns it memory-mapped."""
    dim = new_emb.shape[1] if plan.old is None else plan.old.dim
    count = len(plan.keep_rows) + len(new_emb)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(count, dim))
    at = 0
    for i in range(0, len(plan.keep_rows), ROW_CHUNK):
        rows = plan.keep_rows[i : i + ROW_CHUNK]
        out[at : at + len(rows)] = plan.old.embeddings[rows]
        at += len(rows)
    if len(new_emb):
        out[at:] = new_emb.astype(dtype)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def _spec_of(info: dict) -> IndexSpec:
    """The spec an existing index was built with (its factory string; the knob re-tuned if it was)."""
    from .faiss_build import IndexSpec

    spec = IndexSpec(kind="factory", factory=info["factory"], target_recall=info.get("target_recall", 0.95))
    if not info.get("tuned"):  # a knob the user fixed stays fixed, through a rebuild too
        spec.nprobe, spec.ef = info.get("search_params", {}).get("nprobe"), info.get("search_params", {}).get("ef")
    return spec


def _update_index(plan: _Plan, emb: np.ndarray, labels: np.ndarray, say: Say, bar, queries: dict) -> FaissIndex:
    """The old gallery's index with the removed labels dropped and the new rows added; rebuilt from the
    stored embeddings (no photo re-embedded) when its type cannot remove (FAISS's HNSW)."""
    from ..search.faiss_index import load_index
    from .faiss_build import build_index, measure_and_tune

    info = plan.old.meta["index"]
    fi = load_index(plan.old.path, info, mmap=False)
    if not fi.remove(plan.removed):
        say(f"index: {info['factory']} cannot remove vectors; rebuilding it from the stored embeddings")
        rebuilt = build_index(emb, labels, _spec_of(info), shards=info.get("shards", 1), say=say, bar=bar, **queries)
        rebuilt.info.update(type=info["type"], rebuilt_on_removal=True)
        return rebuilt
    n_new = len(emb) - len(plan.keep_rows)
    fi.add(emb[len(plan.keep_rows):], labels[len(plan.keep_rows):], bar)
    spec = _spec_of(info)
    fixed = None if info.get("tuned") else info.get("search_params")
    fi.info.update(measure_and_tune(fi, emb, labels, spec, fixed=fixed, say=say, **queries))
    fi.info.update(appended=info.get("appended", 0) + n_new, removed=info.get("removed", 0) + len(plan.removed))
    return fi


def build_gallery(
    photos: str | Path,
    bundle: Bundle,
    out: str | Path,
    *,
    backend: Backend | None = None,
    batch_size: int = 8,
    strict: bool = False,
    float16: bool = False,
    force: bool = False,
    progress: bool = True,
    warn: Callable[[str], None] = lambda _m: None,
    index: IndexSpec | None = None,
    shards: int = 1,
    append: bool = False,
    embedder: Embedder | None = None,
    say: Say = silent,
) -> Gallery:
    """Embed every image under ``photos``; the gallery appears at ``out`` only when complete.

    ``index``: also build a FAISS index (recall measured against the exact search, recorded in
    gallery.json). ``append``: update the gallery at ``out``: embed only files it does not hold,
    drop the ones no longer under ``photos``, keep every other photo's label (and its index's)."""
    photos, out = Path(photos), Path(out)
    old = None
    if append:
        if not (out / GALLERY_META).is_file():
            raise GalleryError("--append needs an existing gallery here", path=out,
                               hint=f"build it first without --append: `dcssa-rt index {photos} --out {out}`")
        old = Gallery.load(out, bundle, load_index=False)
        if index is not None and _kind(old.meta.get("index")) != (index.factory if index.kind == "factory" else index.kind):
            raise GalleryError("--append keeps the gallery's index type; --index asks for another one", path=out,
                               hint="drop --index to append, or rebuild with --index ... --force")
    else:
        refuse_existing(out, force)
    paths = list_images(photos)
    if not paths:
        raise GalleryError("no images found (png, jpg, jpeg, bmp, gif, webp, tif)", path=photos)
    plan = _plan(photos, paths, old)
    if old is not None:
        say(f"append: {len(plan.new)} new photos, {len(plan.removed)} removed, {len(plan.keep_rows)} kept")
    embed = embedder or local_embedder(bundle, backend or get_backend("ort-cpu"), batch_size=batch_size, strict=strict)
    skipped: list[str] = []
    bar = Progress(quiet=not progress).bar(len(plan.new), "embedding photos", "photo", leave=True)

    def skip(path: Path, exc: Exception) -> None:
        warn(f"skipping unreadable image {path}: {exc}")
        skipped.append(str(path.relative_to(photos)))
        bar.update(1)

    try:
        embedded = embed(plan.new, skip, bar.update) if plan.new else {}
    finally:
        bar.close()
    if not embedded and (old is None or not len(plan.keep_rows)):
        raise GalleryError("no readable images", path=photos)
    order = sorted(embedded)
    dim = old.dim if old is not None else len(next(iter(embedded.values())))
    new_emb = np.stack([embedded[i] for i in order]) if order else np.zeros((0, dim), np.float32)
    new_ids = [plan.new[i].relative_to(photos).as_posix() for i in order]
    dtype = old.embeddings.dtype if old is not None else (np.float16 if float16 else np.float32)
    if old is not None:
        ids = [old.ids[r] for r in plan.keep_rows] + new_ids
        start = int(old.meta.get("next_label", int(old.labels[-1]) + 1 if len(old.labels) else 0))
        labels = np.concatenate([old.labels[plan.keep_rows], np.arange(start, start + len(new_ids), dtype=np.int64)])
        spec_info = old.meta.get("index")
    else:
        ids = new_ids
        labels = np.arange(len(ids), dtype=np.int64)
        spec_info = None
    queries: dict = {}  # recall queries: partial sketches when tracings lie beside the photos
    if spec_info or (index is not None and index.kind != "exact"):
        from .queries import sketch_queries

        found = sketch_queries(photos, bundle, backend or get_backend("ort-cpu"), progress=progress, say=say)
        if found is not None:
            queries = {"queries": found[0], "query_source": found[1]}
    with staged_dir(out, force=force or append) as tmp:
        emb = _write_matrix(tmp / EMBEDDINGS, plan, new_emb, dtype)
        np.save(tmp / LABELS, labels)
        (tmp / IDS).write_text(json.dumps(ids, indent=0) + "\n")
        meta = _gallery_meta(bundle, emb, ids, photos, skipped)
        meta["next_label"] = int(labels[-1]) + 1 if len(labels) else 0
        if old is not None:
            meta["appended_from"] = old.meta.get("created")
        fi = None
        ibar = Progress(quiet=not progress).bar(len(ids), "indexing", "photo", leave=False)
        try:
            if spec_info:
                fi = _update_index(plan, emb, labels, say, ibar.update, queries)
            elif index is not None and index.kind != "exact":
                from .faiss_build import build_index

                fi = build_index(emb, labels, index, shards=shards, say=say, bar=ibar.update, **queries)
        finally:
            ibar.close()
        if fi is not None:
            files = fi.save(tmp)
            meta["index"] = {**fi.info, "files": files, "bytes": sum((tmp / f).stat().st_size for f in files)}
        del emb
        (tmp / GALLERY_META).write_text(json.dumps(meta, indent=2) + "\n")
    discard = getattr(embed, "discard_shards", None)  # an embedder's intermediate files (Ray's shards) go now
    if discard is not None:
        discard()
    return Gallery.load(out, bundle)


def _kind(info: dict | None) -> str:
    if not info:
        return "exact"
    return info["factory"] if info["type"] == "factory" else info["type"]
