"""The photo matrix: embeddings of the catalogue, built once, memory-mapped, searched exactly."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import manifest as mf
from .atomic import refuse_existing, staged_dir
from .backends import Backend, get_backend
from .bundle import Bundle
from .errors import GalleryError
from .progress import Progress, Say, silent

if TYPE_CHECKING:  # FAISS is optional: imported by the functions that build or read an index
    from .faiss_index import FaissIndex, IndexSpec

GALLERY_META = "gallery.json"
EMBEDDINGS = "embeddings.npy"
IDS = "ids.json"
#: stable int64 label of each row (FAISS ids): kept across --append, absent in older galleries (= row number)
LABELS = "labels.npy"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_CHUNK = 1 << 16  # rows per block when scoring a float16 matrix


def _reindex_hint(path: Path | str = "PHOTOS") -> str:
    return f"rebuild it with `dcssa-rt index {path} --bundle BUNDLE --out GALLERY`"


class Gallery:
    """Unit-norm photo embeddings (N x E) with their ids; ``search`` is exact top-K by dot product."""

    def __init__(self, path: Path | None, embeddings: np.ndarray, ids: list[str], meta: dict, *,
                 labels: np.ndarray | None = None, index=None) -> None:
        self.path = path
        self.embeddings = embeddings
        self.ids = ids
        self.meta = meta
        #: stable label per row (ascending); the FAISS index answers with these
        self.labels = np.arange(len(ids), dtype=np.int64) if labels is None else labels
        #: a :class:`~.faiss_index.FaissIndex`, or None: exact numpy search
        self.index = index

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def load(cls, path: str | Path, bundle: Bundle | None = None, *, load_index: bool = True,
             mmap_index: bool = True) -> Gallery:
        """Read a gallery (the matrix memory-mapped; its FAISS index, if any, memory-mapped where FAISS
        allows it); with ``bundle``, refuse one embedded by another photo encoder."""
        path = Path(path)
        meta_path = path / GALLERY_META
        if not meta_path.is_file():
            raise GalleryError("not a gallery (gallery.json is missing)", path=path, hint=_reindex_hint())
        try:
            meta = json.loads(meta_path.read_text())
            ids = json.loads((path / IDS).read_text())
        except FileNotFoundError as exc:
            raise GalleryError(f"incomplete gallery: {Path(exc.filename).name} is missing", path=path, hint=_reindex_hint()) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GalleryError(f"corrupted gallery metadata ({exc})", path=path, hint=_reindex_hint()) from None
        try:
            emb = np.load(path / EMBEDDINGS, mmap_mode="r")
        except FileNotFoundError:
            raise GalleryError("incomplete gallery: embeddings.npy is missing", path=path, hint=_reindex_hint()) from None
        except ValueError as exc:
            raise GalleryError(f"corrupted embeddings.npy ({exc})", path=path, hint=_reindex_hint()) from None
        if emb.ndim != 2 or emb.shape[0] != len(ids) or emb.shape[0] != meta.get("count") or emb.shape[1] != meta.get("dim"):
            raise GalleryError(
                f"inconsistent gallery: embeddings {emb.shape}, {len(ids)} ids, metadata count {meta.get('count')} dim {meta.get('dim')}",
                path=path,
                hint=_reindex_hint(),
            )
        labels = _load_labels(path, len(ids))
        gallery = cls(path, emb, ids, meta, labels=labels)
        if bundle is not None:
            gallery.check_compatible(bundle)  # before reading a possibly large index
        if meta.get("index") and load_index:
            from .faiss_index import load_index as read_faiss

            gallery.index = read_faiss(path, meta["index"], mmap=mmap_index)
            if gallery.index.ntotal != len(ids):
                raise GalleryError(f"inconsistent gallery: the FAISS index holds {gallery.index.ntotal} vectors, "
                                   f"ids.json {len(ids)}", path=path, hint=_reindex_hint())
        return gallery

    def check_compatible(self, bundle: Bundle) -> None:
        """Refuse a gallery embedded by another photo encoder: its scores would be meaningless."""
        want = bundle.photo_encoder_id()
        got = self.meta.get("photo_encoder_sha256")
        if got != want:
            raise GalleryError(
                f"was built by another photo encoder (sha256 {str(got)[:12]}...) than the bundle's "
                f"({want[:12]}... in {bundle.path})",
                path=self.path,
                hint=_reindex_hint(self.meta.get("photos_root", "PHOTOS")),
            )
        if self.dim != bundle.embed_dim:
            raise GalleryError(
                f"embedding size {self.dim} differs from the bundle's {bundle.embed_dim}", path=self.path, hint=_reindex_hint()
            )

    def scores(self, query: np.ndarray) -> np.ndarray:
        q = np.asarray(query, np.float32).reshape(-1)
        emb = self.embeddings
        if emb.dtype == np.float32:
            return emb @ q
        out = np.empty(len(emb), np.float32)
        for i in range(0, len(emb), _CHUNK):
            out[i : i + _CHUNK] = emb[i : i + _CHUNK].astype(np.float32) @ q
        return out

    def search(self, query: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Indices and scores of the ``k`` best photos, best first (ties: lower index first).

        Exact unless the gallery has a FAISS index (``dcssa-rt index --index ...``): then the
        index's answer, whose recall against this exact search gallery.json records."""
        if self.index is None:
            return top_k(self.scores(query), k)
        scores, labels = self.index.search(query, min(int(k), len(self.ids)))
        found = labels[0] >= 0
        rows = np.searchsorted(self.labels, labels[0][found])
        return rows.astype(np.int64), scores[0][found].astype(np.float32)


#: Every SAMPLE_STRIDE-th score is a sample; galleries smaller than SAMPLE_MIN are sorted directly.
SAMPLE_STRIDE = 256
SAMPLE_MIN = 1 << 15


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``scores``: best first, equal scores in index order.

    A partition of a million scores costs more than the scoring GEMV (measured 12 ms vs 8 ms), so
    large galleries first pick a threshold: the k-th best of every 256th score cannot exceed the
    k-th best of all, so every photo of the true top-k scores at least that much. Only the few
    photos at or above it are then ordered; ties at the cut are all candidates, so the result is
    exact and deterministic, never an approximation.
    """
    n = len(scores)
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if n >= SAMPLE_MIN and k * SAMPLE_STRIDE * 4 <= n:
        sample = scores[::SAMPLE_STRIDE]
        cut = np.partition(sample, len(sample) - k)[len(sample) - k]
        cand = np.flatnonzero(scores >= cut)
    else:
        cand = np.arange(n)
    if len(cand) > 4 * k:
        # keep every candidate that ties with the k-th best, so index order decides among them
        kth = np.partition(scores[cand], len(cand) - k)[len(cand) - k]
        cand = cand[scores[cand] >= kth]
    order = np.lexsort((cand, -scores[cand]))[:k]
    idx = cand[order]
    return idx, scores[idx]


def _load_labels(path: Path, count: int) -> np.ndarray:
    file = path / LABELS
    if not file.is_file():
        return np.arange(count, dtype=np.int64)
    try:
        labels = np.load(file)
    except ValueError as exc:
        raise GalleryError(f"corrupted labels.npy ({exc})", path=path, hint=_reindex_hint()) from None
    if labels.shape != (count,) or labels.dtype != np.int64 or (count > 1 and not np.all(labels[1:] > labels[:-1])):
        raise GalleryError(f"corrupted labels.npy (shape {labels.shape}, {labels.dtype}; {count} ascending int64 expected)",
                           path=path, hint=_reindex_hint())
    return labels


def list_images(root: Path) -> list[Path]:
    """Images below ``root`` (recursive, by suffix), sorted for a stable id order."""
    if not root.is_dir():
        raise GalleryError("not a folder of photos", path=root, hint="pass the folder holding the catalogue images")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def photo_runner(bundle: Bundle, backend: Backend):
    """The bundle's photo encoder (fp32) loaded on ``backend``."""
    return backend.load(backend.artifact(bundle, mf.PHOTO_ENCODER, "fp32"), bundle.graph_spec(mf.PHOTO_ENCODER))


def embed_photos(
    bundle: Bundle,
    images: Iterable[tuple[int, Image.Image]],
    backend: Backend,
    *,
    batch_size: int = 8,
    on_done: Callable[[int], None] = lambda _n: None,
    runner=None,
) -> dict[int, np.ndarray]:
    """Embed (index, image) pairs, batching photos whose preprocessed sizes agree (``runner``: the
    photo encoder already loaded, as a long-lived worker keeps it)."""
    if runner is None:
        runner = photo_runner(bundle, backend)
    pipeline = bundle.photo_pipeline
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


#: embeds ``paths``: (paths, on_skip(path, exc), on_done(n)) -> {index into paths: embedding}; one with
#: intermediate files (Ray's shards) may have a ``discard_shards()`` that runs once the gallery is written
Embedder = Callable[[list[Path], Callable[[Path, Exception], None], Callable[[int], None]], dict[int, np.ndarray]]


def local_embedder(bundle: Bundle, backend: Backend, *, batch_size: int = 8, strict: bool = False) -> Embedder:
    """The in-process embedder: read each image, batch equal sizes through the photo encoder."""

    def embed(paths: list[Path], on_skip, on_done) -> dict[int, np.ndarray]:
        return embed_photos(bundle, read_images(paths, strict=strict, on_skip=on_skip), backend,
                            batch_size=batch_size, on_done=on_done)

    return embed


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
    for i in range(0, len(plan.keep_rows), _CHUNK):
        rows = plan.keep_rows[i : i + _CHUNK]
        out[at : at + len(rows)] = plan.old.embeddings[rows]
        at += len(rows)
    if len(new_emb):
        out[at:] = new_emb.astype(dtype)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def _spec_of(info: dict) -> IndexSpec:
    """The spec an existing index was built with (its factory string; the knob re-tuned if it was)."""
    from .faiss_index import IndexSpec

    spec = IndexSpec(kind="factory", factory=info["factory"], target_recall=info.get("target_recall", 0.95))
    if not info.get("tuned"):  # a knob the user fixed stays fixed, through a rebuild too
        spec.nprobe, spec.ef = info.get("search_params", {}).get("nprobe"), info.get("search_params", {}).get("ef")
    return spec


def _update_index(plan: _Plan, emb: np.ndarray, labels: np.ndarray, say: Say, bar, queries: dict) -> FaissIndex:
    """The old gallery's index with the removed labels dropped and the new rows added; rebuilt from the
    stored embeddings (no photo re-embedded) when its type cannot remove (FAISS's HNSW)."""
    from .faiss_index import build_index, load_index, measure_and_tune

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
        from .sketch_queries import sketch_queries

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
                from .faiss_index import build_index

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
