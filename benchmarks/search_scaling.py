"""Exact gallery search time against gallery size: our matrix search, and FAISS IndexFlatIP if present."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from dcssa.runtime.gallery import Gallery
from dcssa.runtime.progress import Say, silent

DEFAULT_SIZES = (1_000, 10_000, 100_000, 1_000_000)


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def search_scaling(sizes=DEFAULT_SIZES, dim: int = 64, k: int = 10, repeats: int = 9, seed: int = 0,
                   progress: Say = silent) -> list[dict]:
    rng = np.random.default_rng(seed)
    try:
        import faiss
    except ImportError:
        faiss = None
    rows = []
    for n in sizes:
        progress(f"search scaling: {n} photos")
        emb = rng.normal(size=(n, dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        q = emb[rng.integers(n)] + rng.normal(0, 0.1, dim).astype(np.float32)
        q /= np.linalg.norm(q)
        g = Gallery(None, emb, [str(i) for i in range(n)], {})
        row = {"size": n, "dim": dim, "k": k, "ours_ms": _median_ms(lambda: g.search(q, k), repeats)}
        if faiss is not None:
            index = faiss.IndexFlatIP(dim)
            index.add(emb)
            # FAISS's OpenMP threads spin between calls and fight the other libraries' pools in a
            # process like this one, so its default is noisy; one thread is its steady single-query figure.
            row["faiss_flat_ip_ms"] = _median_ms(lambda: index.search(q[None], k), repeats)
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                row["faiss_flat_ip_1thread_ms"] = _median_ms(lambda: index.search(q[None], k), repeats)
            finally:
                faiss.omp_set_num_threads(threads)
            _, ids = index.search(q[None], k)
            row["same_topk_as_faiss"] = list(ids[0]) == list(g.search(q, k)[0])
        rows.append(row)
    return rows
