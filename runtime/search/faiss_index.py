"""A gallery's FAISS index as the search uses it: read (memory-mapped where FAISS allows it) and
asked for the top-k with stable labels. Training, tuning and updating one is
:mod:`dcssa.runtime.indexing.faiss_build`; FAISS is optional (the ``[faiss]`` extra)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import GalleryError
from ..extras import require

INDEX_FILE = "index.faiss"


SHARD_FILE = "index-{:03d}.faiss"


ADD_CHUNK = 1 << 16


def faiss_module():
    """FAISS, or a clear error saying how to install it."""
    return require("faiss", "--index flat|hnsw|ivf|ivfpq|... (FAISS indexes)")


@dataclass
class FaissIndex:
    """One FAISS index (or shards) answering with stable labels; ``info`` is what gallery.json records."""

    index: object
    info: dict = field(default_factory=dict)
    mmap: bool = False
    #: the shards' own python objects: an IndexShards holds bare pointers, these keep them alive
    parts: list = field(default_factory=list)
    #: (vectors, labels) the short list is re-ranked from when ``info["refine"]`` is set: the
    #: gallery's own embeddings.npy (memory-mapped), so exact re-ranking costs no second copy in RAM
    vectors: tuple | None = field(default=None, repr=False)

    @property
    def refine(self) -> int:
        """Re-rank ``refine * k`` candidates exactly (0: the index's own scores)."""
        return int(self.info.get("refine") or 0)

    def attach_vectors(self, emb: np.ndarray, labels: np.ndarray) -> None:
        """The rows (and their ascending labels) exact re-ranking reads; kept as given (mmap stays mmap)."""
        self.vectors = (emb, np.asarray(labels, np.int64))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def set_search_params(self, params: dict) -> None:
        faiss = faiss_module()
        for sub in leaves(self.index):
            ivf = faiss.try_extract_index_ivf(sub)
            if ivf is not None and "nprobe" in params:
                ivf.nprobe = int(params["nprobe"])
            hnsw = hnsw_of(sub)
            if hnsw is not None and "ef" in params:
                hnsw.hnsw.efSearch = int(params["ef"])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels), each (nq, k); missing results have label -1."""
        q = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(-1, self.index.d))
        if not self.refine:
            return self.index.search(q, int(k))
        if self.vectors is None:
            raise GalleryError("this index re-ranks from the gallery's embeddings, which were not attached",
                               hint="load it through Gallery.load (or call attach_vectors)")
        _, found = self.index.search(q, int(k) * self.refine)
        return rerank(q, found, *self.vectors, int(k))

    def add(self, emb: np.ndarray, labels: np.ndarray, progress: Callable[[int], None] = lambda _n: None) -> None:
        target = leaves(self.index)[-1]  # appended photos go to the last shard
        for i in range(0, len(emb), ADD_CHUNK):
            x = np.ascontiguousarray(emb[i : i + ADD_CHUNK], np.float32)
            target.add_with_ids(x, np.ascontiguousarray(labels[i : i + ADD_CHUNK], np.int64))
            progress(len(x))
        if len(leaves(self.index)) > 1:
            self.index.syncWithSubIndexes()

    def remove(self, labels: np.ndarray) -> bool:
        """Drop ``labels``; False when this index type cannot remove (FAISS's HNSW): rebuild instead."""
        if len(labels) == 0:
            return True
        faiss = faiss_module()
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(labels, np.int64))
        try:
            for sub in leaves(self.index):
                sub.remove_ids(sel)
        except RuntimeError:
            return False
        if len(leaves(self.index)) > 1:
            self.index.syncWithSubIndexes()
        return True

    def files(self, folder: Path) -> list[Path]:
        parts = leaves(self.index)
        if len(parts) == 1:
            return [folder / INDEX_FILE]
        return [folder / SHARD_FILE.format(i) for i in range(len(parts))]

    def save(self, folder: Path) -> list[str]:
        faiss = faiss_module()
        names = []
        for sub, path in zip(leaves(self.index), self.files(folder)):
            faiss.write_index(sub, str(path))
            names.append(path.name)
        return names


def rerank(queries: np.ndarray, candidates: np.ndarray, emb: np.ndarray, labels: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-``k`` of each query's ``candidates`` (labels; -1 = none), scored on ``emb``'s rows."""
    scores = np.full((len(queries), k), -np.inf, np.float32)
    out = np.full((len(queries), k), -1, np.int64)
    for i, (q, cand) in enumerate(zip(queries, candidates)):
        cand = cand[cand >= 0]
        if not len(cand):
            continue
        rows = np.searchsorted(labels, cand)
        order = np.argsort(rows, kind="stable")  # sorted reads: a memory-mapped matrix pages in once
        s = np.asarray(emb[rows[order]], np.float32) @ q
        best = np.argsort(-s, kind="stable")[:k]
        scores[i, : len(best)] = s[best]
        out[i, : len(best)] = cand[order][best]
    return scores, out


def leaves(index) -> list:
    """The FAISS indexes of ``index``: its shards, or itself."""
    faiss = faiss_module()
    if isinstance(index, faiss.IndexShards):
        return [faiss.downcast_index(index.at(i)) for i in range(index.count())]
    return [index]


def hnsw_of(index):
    """The HNSW index inside ``index`` (under its IDMap), or None."""
    faiss = faiss_module()
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def search_knob(fi: FaissIndex) -> str | None:
    """The search-time parameter the index has: ``nprobe`` (IVF), ``ef`` (HNSW) or None (flat)."""
    faiss = faiss_module()
    leaf = leaves(fi.index)[0]
    if faiss.try_extract_index_ivf(leaf) is not None:
        return "nprobe"
    if hnsw_of(leaf) is not None:
        return "ef"
    return None


def load_index(folder: Path, info: dict, *, mmap: bool = True) -> FaissIndex:
    """Read the index files gallery.json names (memory-mapped where FAISS allows it)."""
    faiss = faiss_module()
    names = info.get("files") or [INDEX_FILE]
    flags = (faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY) if mmap else 0
    parts, mapped = [], mmap
    for name in names:
        path = folder / name
        if not path.is_file():
            raise GalleryError(f"incomplete gallery: the index file {name} is missing", path=folder,
                               hint="rebuild it with `dcssa-rt index PHOTOS --index TYPE --force`")
        try:
            parts.append(faiss.read_index(str(path), flags))
        except RuntimeError as exc:
            if flags:
                try:  # this index type cannot be mapped: read it into memory
                    parts.append(faiss.read_index(str(path), 0))
                    mapped = False
                    continue
                except RuntimeError:
                    pass
            raise GalleryError(f"corrupted FAISS index ({str(exc).strip().splitlines()[-1][:160]})", path=path,
                               hint="rebuild it with `dcssa-rt index PHOTOS --index TYPE --force`") from None
    if len(parts) == 1:
        index = parts[0]
    else:
        index = faiss.IndexShards(parts[0].d, False, False)
        for p in parts:
            index.add_shard(p)
    fi = FaissIndex(index, dict(info), mapped, parts)
    fi.set_search_params(info.get("search_params", {}))
    return fi
