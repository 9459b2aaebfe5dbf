"""The photo matrix of a catalogue: loaded memory-mapped, checked against the bundle, searched exactly
(or through its FAISS index). Building and updating one is :mod:`dcssa.runtime.indexing`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..contract.bundle import Bundle
from ..errors import GalleryError

GALLERY_META = "gallery.json"


EMBEDDINGS = "embeddings.npy"


IDS = "ids.json"


#: stable int64 label of each row (FAISS ids): kept across --append, absent in older galleries (= row number)
LABELS = "labels.npy"


ROW_CHUNK = 1 << 16  # rows per block when scoring a float16 matrix


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
        #: a :class:`~dcssa.runtime.search.faiss_index.FaissIndex`, or None: exact numpy search
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
            gallery.index.attach_vectors(gallery.embeddings, gallery.labels)
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
        for i in range(0, len(emb), ROW_CHUNK):
            out[i : i + ROW_CHUNK] = emb[i : i + ROW_CHUNK].astype(np.float32) @ q
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
