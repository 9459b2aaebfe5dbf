"""FAISS indexes against the exact search on large catalogues, one index per child process.

A catalogue is drawn chunk by chunk (never whole in RAM: 10M x 512 float32 would be 20 GB) into a
memory-mapped ``.npy`` under a cache folder, float32, or float16 when float32 would pass
:data:`FLOAT16_ABOVE` bytes (the float16 rows then *are* the catalogue: the exact reference is
computed on them). Its queries, their target photos and their exact top 10 (streamed over the
chunks) are cached beside it, so every index kind and every rerun reuses them.

Queries come in two sets: *tuning* queries (each index's search knob is raised on them until the
objective is reached: target kept when the queries have targets, as ``dcssa-rt index`` does) and
*evaluation* queries, on which every reported number is measured. Each index is built and measured
in a fresh (spawned) process, so its peak memory is its own and one failure leaves the others.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcssa.benchmarks.embeddings import EmbeddingFit, isotropic_chunks, unit
from dcssa.runtime.errors import DcssaError

DATA_KINDS = ("realistic", "isotropic")
FLOAT16_ABOVE = 6 << 30
ISOTROPIC_COSINE = 0.9
TRUTH_CHUNK = 1 << 15
EXACT_LATENCY_QUERIES = 50


@dataclass
class Catalogue:
    """One cached catalogue and its queries (paths and small arrays: cheap to send to a child)."""

    data: str
    size: int
    dim: int
    path: Path  # the photo matrix (.npy)
    tune: dict  # queries, targets, completions, truth
    eval: dict

    def matrix(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")


def _write_matrix(path: Path, chunks, size: int, dim: int, dtype) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(size, dim))
    at = 0
    for x in chunks:
        out[at : at + len(x)] = x.astype(dtype)
        at += len(x)
    out.flush()
    del out
    tmp.replace(path)


def exact_top10(emb: np.ndarray, queries: np.ndarray, k: int = 10, chunk: int = TRUTH_CHUNK) -> np.ndarray:
    """Row numbers of each query's exact top ``k``, streamed over ``emb`` (bounded memory): FAISS's
    brute-force search per chunk (BLAS plus a k-heap, float32) merged, or the runtime's numpy one."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - the benchmark needs the [faiss] extra anyway
        from dcssa.runtime.indexing.faiss_build import exact_topk_labels

        return exact_topk_labels(emb, np.arange(len(emb), dtype=np.int64), queries, k=k, chunk=chunk)
    q = np.ascontiguousarray(queries, np.float32)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, len(emb), chunk * 32):
        x = np.ascontiguousarray(emb[start : start + chunk * 32], np.float32)
        s, i = faiss.knn(q, x, min(k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
        best_s, best_i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i + start], 1)
        order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
    return best_i


def _queries(data: str, emb: np.ndarray, count: int, fit: EmbeddingFit | None, rng: np.random.Generator) -> dict:
    targets = np.sort(rng.choice(len(emb), size=count, replace=False))
    base = np.asarray(emb[targets], np.float32)
    if data == "realistic":
        q, completions = fit.queries(base.astype(np.float64), rng)
    else:  # the photo turned by a random direction to cosine 0.9 (the old benchmark's queries)
        noise = rng.standard_normal(base.shape).astype(np.float32)
        noise = unit(noise - (noise * base).sum(1, keepdims=True) * base)
        q = unit(ISOTROPIC_COSINE * base + np.sqrt(1 - ISOTROPIC_COSINE**2) * noise)
        completions = np.ones(count)
    return {"queries": np.asarray(q, np.float32), "targets": targets.astype(np.int64), "completions": completions}


def catalogue(data: str, size: int, dim: int, *, cache: Path, fit: EmbeddingFit | None = None, queries: int = 500,
              eval_queries: int = 1000, seed: int = 0, say=lambda _m: None) -> Catalogue:
    """The cached catalogue (drawn, queried and answered exactly on first use)."""
    if data not in DATA_KINDS:
        raise DcssaError(f"unknown data {data!r}", hint=f"use one of {', '.join(DATA_KINDS)}")
    if data == "realistic" and (fit is None or fit.dim != dim):
        raise DcssaError(f"no embedding fit for dimension {dim}", hint="pass --fit FILE fitted at that dimension, "
                         "or --data isotropic")
    stem = cache / (f"{data}-{dim}d-{size}-s{seed}" + (f"-{fit.source.get('name', 'fit')}" if data == "realistic" else ""))
    stem.mkdir(parents=True, exist_ok=True)
    path = stem / "photos.npy"
    if not path.is_file():
        dtype = np.float16 if size * dim * 4 > FLOAT16_ABOVE else np.float32
        say(f"catalogue: drawing {size} {data} photos of dim {dim} ({np.dtype(dtype).name}) into {path}")
        chunks = fit.photo_chunks(size, seed) if data == "realistic" else isotropic_chunks(size, dim, seed)
        _write_matrix(path, chunks, size, dim, dtype)
    emb = np.load(path, mmap_mode="r")
    sets = {}
    for name, count, sub in (("tune", queries, 1), ("eval", eval_queries, 2)):
        file = stem / f"{name}-{count}.npz"
        if not file.is_file():
            say(f"catalogue: {count} {name} queries and their exact top 10 over {size} photos")
            qs = _queries(data, emb, count, fit, np.random.default_rng([seed, sub]))
            qs["truth"] = exact_top10(emb, qs["queries"])
            np.savez(file.with_name(file.name + ".tmp.npz"), **qs)
            file.with_name(file.name + ".tmp.npz").replace(file)
        with np.load(file) as z:
            sets[name] = {k: z[k] for k in z.files}
    return Catalogue(data, size, dim, path, sets["tune"], sets["eval"])


def parse_kind(text: str):
    """``kind[:name=value,...]`` -> IndexSpec, e.g. ``ivfpq:refine=4,nlist=1024``."""
    from dcssa.runtime.indexing.faiss_build import IndexSpec, IndexSpecError

    kind, _, rest = text.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        name, _, value = item.partition("=")
        if not value.strip().isdigit():
            raise IndexSpecError(f"bad index parameter {item!r} in {text!r}", hint="write kind:name=INT,name=INT")
        params[name.strip()] = int(value)
    return IndexSpec.parse(kind, **params)


def _one_thread():
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()


def latencies_ms(fn, queries: np.ndarray) -> dict:
    """p50/p99 of ``fn(one query)`` on one thread (FAISS's OpenMP and the BLAS pools limited to 1)."""
    with _one_thread():
        fn(queries[0])  # warm-up
        times = []
        for q in queries:
            t = time.perf_counter()
            fn(q)
            times.append((time.perf_counter() - t) * 1e3)
    return {"p50_ms": round(float(np.percentile(times, 50)), 4), "p99_ms": round(float(np.percentile(times, 99)), 4),
            "loadavg": [round(v, 2) for v in os.getloadavg()]}


def quality(found: np.ndarray, qs: dict) -> dict:
    """Recall@10 and target kept (vs exact) of ``found`` (row labels) on a query set."""
    from dcssa.runtime.indexing.faiss_build import recall_at_k, target_kept

    kept, held = target_kept(found, qs["truth"], qs["targets"])
    return {"recall_at_10": round(recall_at_k(found, qs["truth"]), 4), "target_kept": round(kept, 4),
            "target_held": held, "exact_target_in_top10": round(held / len(qs["truth"]), 4)}


def exact_row(cat: Catalogue, latency_queries: int) -> dict:
    """The exact search's row: its latency (chunked float32 scoring), and its own target-in-top-10."""
    from dcssa.runtime.search.gallery import top_k

    emb = cat.matrix()
    # a full scan per query: at most EXACT_LATENCY_QUERIES of them (p99 of so few is rough; said in the report)
    q = cat.eval["queries"][: max(5, min(latency_queries, EXACT_LATENCY_QUERIES))]

    def search(x):
        if emb.dtype == np.float32:
            return top_k(emb @ x, 10)
        return exact_top10(emb, x[None], chunk=1 << 20)

    return {"index": "exact (numpy)", "factory": "-", "build_s": 0.0, "bytes_per_photo": float(emb.dtype.itemsize * cat.dim),
            "search_params": {}, "recall_at_10": 1.0, "target_kept": 1.0,
            "target_held": int((cat.eval["truth"] == cat.eval["targets"][:, None]).any(1).sum()),
            "exact_target_in_top10": round(float((cat.eval["truth"] == cat.eval["targets"][:, None]).any(1).mean()), 4),
            "peak_rss_mb": None, **latencies_ms(search, q)}


def _measure(cat: Catalogue, kind: str, target_recall: float, latency_queries: int, scratch: str) -> dict:
    """Build, tune (on the tuning set), then measure on the evaluation set: runs in a child process."""
    from dcssa.runtime.indexing.faiss_build import build_index

    spec = parse_kind(kind)
    spec.target_recall = target_recall
    emb = cat.matrix()
    labels = np.arange(cat.size, dtype=np.int64)
    fi = build_index(emb, labels, spec, queries=cat.tune["queries"], truth=cat.tune["truth"],
                     targets=cat.tune["targets"], query_source=f"{cat.data} sketch queries (tuning set)")
    found = fi.search(cat.eval["queries"], 10)[1]
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        size_bytes = sum((Path(tmp) / f).stat().st_size for f in fi.save(Path(tmp)))
    lat = latencies_ms(lambda x: fi.search(x, 10), cat.eval["queries"][:latency_queries])
    return {"index": kind, "factory": fi.info["factory"], "build_s": fi.info["build_s"],
            "bytes_per_photo": round(size_bytes / cat.size, 2), "index_gb": round(size_bytes / 1e9, 3),
            "refine": fi.info.get("refine"), "search_params": fi.info["search_params"],
            "objective": fi.info["objective"], "tuning_curve": fi.info.get("recall_curve"),
            **quality(found, cat.eval), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            **lat}


def _anon_mb() -> float:
    """This process's anonymous resident memory (not the file pages of a memory-mapped catalogue)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _watch_anon(peak: list, stop) -> None:
    while not stop.wait(0.2):
        peak[0] = max(peak[0], _anon_mb())


def _child(conn, *args) -> None:
    import threading

    peak, stop = [0.0], threading.Event()
    if Path("/proc/self/status").is_file():
        threading.Thread(target=_watch_anon, args=(peak, stop), daemon=True).start()
    try:
        row = _measure(*args)
        stop.set()
        conn.send(("ok", {**row, "peak_anon_mb": round(max(peak[0], _anon_mb()))}))
    except DcssaError as exc:
        conn.send(("error", exc.message, exc.hint))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails cleanly
        conn.send(("error", f"{type(exc).__name__}: {exc}", None))
    finally:
        stop.set()
        conn.close()


def measure_kind(cat: Catalogue, kind: str, *, target_recall: float, latency_queries: int, scratch: Path) -> dict:
    """One index kind's row, measured in a fresh process (its peak RSS is its own)."""
    ctx = multiprocessing.get_context("spawn")  # never fork a process whose OpenMP pool has run
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, cat, kind, target_recall, latency_queries, str(scratch)))
    proc.start()
    child.close()
    try:
        msg = parent.recv()
    except EOFError:
        msg = ("error", f"the process measuring {kind} died (exit code {proc.join() or proc.exitcode}; out of memory?)",
               "measure a smaller size, or fewer kinds at once")
    proc.join()
    if msg[0] != "ok":
        raise DcssaError(f"index {kind} at {cat.size} x {cat.dim}: {msg[1]}", hint=msg[2])
    return msg[1]


def summary(cat: Catalogue) -> dict:
    return {"data": cat.data, "size": cat.size, "dim": cat.dim, "tune_queries": len(cat.tune["queries"]),
            "eval_queries": len(cat.eval["queries"]), "storage": str(np.load(cat.path, mmap_mode="r").dtype)}


def dump(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)
