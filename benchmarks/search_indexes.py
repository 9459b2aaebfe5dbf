"""FAISS indexes against the exact search on large catalogues, one index per child process.

A catalogue is drawn chunk by chunk (never whole in RAM: 10M x 512 float32 would be 20 GB) into a
memory-mapped ``.npy`` under a cache folder, float32, or float16 when float32 would pass
:data:`FLOAT16_ABOVE` bytes (the float16 rows then *are* the catalogue: the exact reference is
computed on them). Its queries, their target photos and their exact top 10 (streamed over the
chunks) are cached beside it, so every index kind and every rerun reuses them.

Queries come in three sets. *Evaluation* queries are drawn as the generator draws them: recall@10,
the share whose photo the exact top 10 holds (*exact@10*) and latency are measured on them. Few of
them are *held* (the exact top 10 holds their photo) once the catalogue is far larger than the
models that were fitted ever separate: 1 % at 1M x 64, fewer at 10M. So the target-kept share (the
issue's "does the drawn photo stay in the top 10") is measured on a set of held queries of its own,
and each index's search knob is tuned on another (*tuning*). Held sets are drawn by exact rejection
(:func:`held_queries`), so they are the evaluation distribution conditioned on being held, never an
approximation of it. Each index is built and measured in a fresh (spawned) process, so its peak
memory is its own and one failure leaves the others.
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
from dcssa.runtime.extras import optional

DATA_KINDS = ("realistic", "isotropic")
FLOAT16_ABOVE = 6 << 30
ISOTROPIC_COSINE = 0.9
TRUTH_CHUNK = 1 << 15
EXACT_LATENCY_QUERIES = 50
#: a full scan past this many stored bytes takes seconds: fewer exact latency queries (said in the report)
EXACT_LATENCY_BIG = 1 << 30
#: scores computed per BLAS product of the exact scan (a block of rows x the queries: 16 MB)
SCAN_FLOATS = 1 << 22
#: from this many queries on, the exact scan uses FAISS's brute force (see :func:`scan_topk`)
MANY_QUERIES = 4096
#: the catalogue prefixes after which a candidate held query is ruled out (see :func:`held_queries`)
HELD_STAGES = (1 << 17, 1 << 20, 1 << 23)
#: candidate queries scored per round of the rejection, and the most drawn before giving up
HELD_BATCH = 1 << 14
HELD_MAX_DRAWS = 1 << 21


@dataclass
class Catalogue:
    """One cached catalogue and its queries (paths and small arrays: cheap to send to a child)."""

    data: str
    size: int
    dim: int
    path: Path  # the photo matrix (.npy)
    tune: dict  # held tuning queries: queries, targets, completions, truth, drawn
    eval: dict  # evaluation queries as drawn: queries, targets, completions, truth
    held: dict  # held evaluation queries (the target-kept share is measured on them)

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


def scan_topk(emb: np.ndarray, queries: np.ndarray, k: int, start: int = 0, stop: int | None = None,
              best: tuple[np.ndarray, np.ndarray] | None = None,
              chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of each query's best ``k`` among rows ``start:stop`` of ``emb``, merged into ``best``
    (an earlier scan's result over other rows); ties go to the lower row, as a stable sort.

    Blocks of rows are scored with one BLAS product each; once every query has ``k`` scores, only the
    scores above its current k-th enter the merge (a comparison and ``nonzero``), which measured 4x
    faster on one core than FAISS's brute-force k-heap for 1,000 queries (11.7 against 2.5 GFLOP/s at
    dim 64, 41 against 9.5 at 512); for many thousands of queries FAISS's blocking wins (16 against
    9 GFLOP/s for 16,384), so those go to ``faiss.knn``."""
    stop = len(emb) if stop is None else stop
    q = np.ascontiguousarray(queries, np.float32)
    nq = len(q)
    faiss = optional("faiss") if nq >= MANY_QUERIES else None
    rows_cap = SCAN_FLOATS // emb.shape[1]  # the float32 copy of a block of rows stays at 16 MB too
    chunk = chunk or (min(rows_cap, max(1 << 10, SCAN_FLOATS // max(nq, 1))) if faiss is None else rows_cap)
    best_s, best_i = best if best is not None else (np.full((nq, 0), -np.inf, np.float32), np.zeros((nq, 0), np.int64))
    for at in range(start, stop, chunk):
        x = np.asarray(emb[at : min(stop, at + chunk)], np.float32)
        if faiss is not None:
            fs, fi = faiss.knn(q, np.ascontiguousarray(x), min(k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
            qs = np.repeat(np.arange(nq), fi.shape[1])
            best_s, best_i = _merge_topk(best_s, best_i, qs, fs.ravel(), fi.ravel() + at, k)
            continue
        s = x @ q.T  # (rows, queries)
        if best_s.shape[1] < k:  # not k scores yet: every query's best of this block enters
            part = np.argpartition(-s, min(k, len(s)) - 1, axis=0)[:k] if len(s) > k else np.arange(len(s))[:, None]
            part = np.broadcast_to(part, (len(part), nq))
            qs, rs = np.broadcast_to(np.arange(nq), part.shape).ravel(), part.ravel()
        else:
            rs, qs = np.nonzero(s > best_s[:, k - 1])
        best_s, best_i = _merge_topk(best_s, best_i, qs, s[rs, qs], rs + at, k)
    return best_s, best_i


def _merge_topk(best_s: np.ndarray, best_i: np.ndarray, qs: np.ndarray, ss: np.ndarray, rs: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` best of its old best and the new (query, score, row) triples."""
    nq, have = best_s.shape
    if not len(qs):
        return best_s, best_i
    qi = np.concatenate([np.repeat(np.arange(nq), have), qs])
    si = np.concatenate([best_s.ravel(), ss.astype(np.float32)])
    ri = np.concatenate([best_i.ravel(), rs.astype(np.int64)])
    order = np.lexsort((ri, -si, qi))  # by query, then score descending, then row
    qi, si, ri = qi[order], si[order], ri[order]
    width = min(k, int(np.bincount(qi, minlength=nq).min()))
    take = np.searchsorted(qi, np.arange(nq))[:, None] + np.arange(width)
    return si[take], ri[take]


def exact_top10(emb: np.ndarray, queries: np.ndarray, k: int = 10, chunk: int | None = None) -> np.ndarray:
    """Row numbers of each query's exact top ``k``, streamed over ``emb`` (bounded memory)."""
    return scan_topk(emb, queries, k, chunk=chunk)[1]


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


def held_queries(data: str, emb: np.ndarray, count: int, fit: EmbeddingFit | None, rng: np.random.Generator, *,
                 batch: int = HELD_BATCH, max_draws: int = HELD_MAX_DRAWS, stages=HELD_STAGES,
                 say=lambda _m: None) -> dict:
    """``count`` queries whose target photo the exact top 10 holds, with their exact top 10 and how many
    candidates were drawn for them (``drawn``; fewer than ``count`` only past ``max_draws``).

    Candidates come from :func:`_queries` and are scanned prefix by prefix of the catalogue; one is
    ruled out as soon as 10 photos other than its target score above the target (those photos are in
    the whole catalogue too, so its target cannot be in the top 10: exact, not a heuristic; a score
    within 1e-5 of the target's never rules out). Only the few survivors pay for a full scan, and the
    full scan's top 10 decides."""
    n = len(emb)
    cuts = sorted({min(n, c) for c in stages} | {n})
    kept: dict[str, list] = {"queries": [], "targets": [], "completions": [], "truth": []}
    found = drawn = 0
    while found < count and drawn < max_draws:
        qs = _queries(data, emb, min(batch, n), fit, rng)
        q, t = qs["queries"], qs["targets"]
        s_t = np.einsum("ij,ij->i", q, np.asarray(emb[t], np.float32))
        alive, best, at = np.arange(len(q)), None, 0
        for cut in cuts:
            best = scan_topk(emb, q[alive], 11, at, cut, best)
            at = cut
            above = ((best[0] > s_t[alive, None] + 1e-5) & (best[1] != t[alive, None])).sum(1)
            keep = above < 10
            alive, best = alive[keep], (best[0][keep], best[1][keep])
        truth = best[1][:, :10]
        held = (truth == t[alive, None]).any(1)
        for key, rows in (("queries", q[alive][held]), ("targets", t[alive][held]),
                          ("completions", qs["completions"][alive][held]), ("truth", truth[held])):
            kept[key].append(rows)
        drawn += len(q)
        found += int(held.sum())
        say(f"catalogue: {found} held queries of {drawn} drawn ({found / drawn:.2%})")
    out = {k: np.concatenate(v)[:count] for k, v in kept.items()}
    out["drawn"], out["found"] = np.array(drawn), np.array(found)  # the held share is found / drawn
    return out


def catalogue(data: str, size: int, dim: int, *, cache: Path, fit: EmbeddingFit | None = None, queries: int = 500,
              eval_queries: int = 1000, held: int = 300, seed: int = 0, say=lambda _m: None) -> Catalogue:
    """The cached catalogue (drawn, queried and answered exactly on first use): ``queries`` held tuning
    queries, ``eval_queries`` evaluation queries, ``held`` held evaluation queries."""
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
    for name, count, sub in (("tune-held", queries, 1), ("eval", eval_queries, 2), ("eval-held", held, 3)):
        file = stem / f"{name}-{count}.npz"
        if not file.is_file():
            say(f"catalogue: {count} {name} queries and their exact top 10 over {size} photos")
            rng = np.random.default_rng([seed, sub])
            if name.endswith("held"):
                qs = held_queries(data, emb, count, fit, rng, say=say)
            else:
                qs = _queries(data, emb, count, fit, rng)
                qs["truth"] = exact_top10(emb, qs["queries"])
            np.savez(file.with_name(file.name + ".tmp.npz"), **qs)
            file.with_name(file.name + ".tmp.npz").replace(file)
        with np.load(file) as z:
            sets[name] = {k: z[k] for k in z.files}
    return Catalogue(data, size, dim, path, sets["tune-held"], sets["eval"], sets["eval-held"])


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


def quality(found: np.ndarray, qs: dict, found_held: np.ndarray, held: dict) -> dict:
    """Recall@10 and exact@10 on the evaluation queries (``found``: the index's row labels for them),
    target kept (vs exact) on the held ones (``found_held``)."""
    from dcssa.runtime.indexing.faiss_build import recall_at_k, target_kept

    kept, n = target_kept(found_held, held["truth"], held["targets"])
    return {"recall_at_10": round(recall_at_k(found, qs["truth"]), 4), "target_kept": round(kept, 4),
            "target_held": n, "target_misses": int(round((1 - kept) * n)), **_exact_share(qs, held)}


def _exact_share(qs: dict, held: dict) -> dict:
    """exact@10 of the evaluation queries, and the held sets' own rate (candidates drawn per held query)."""
    share = float((qs["truth"] == qs["targets"][:, None]).any(1).mean())
    drawn = int(held.get("drawn", len(held["targets"])))
    found = int(held.get("found", len(held["targets"])))  # the last round may find more than were kept
    return {"exact_target_in_top10": round(share, 4), "held_drawn": drawn, "held_rate": round(found / max(drawn, 1), 5)}


def exact_row(cat: Catalogue, latency_queries: int) -> dict:
    """The exact search's row: its latency (chunked float32 scoring), and its own target-in-top-10."""
    from dcssa.runtime.search.gallery import top_k

    emb = cat.matrix()
    # a full scan per query: at most EXACT_LATENCY_QUERIES of them (p99 of so few is rough; said in the report)
    most = EXACT_LATENCY_QUERIES if emb.nbytes <= EXACT_LATENCY_BIG else EXACT_LATENCY_QUERIES // 5
    q = cat.eval["queries"][: max(5, min(latency_queries, most))]

    def search(x):
        if emb.dtype == np.float32:
            return top_k(emb @ x, 10)
        return exact_top10(emb, x[None])

    return {"index": "exact (numpy)", "factory": "-", "build_s": 0.0, "bytes_per_photo": float(emb.dtype.itemsize * cat.dim),
            "search_params": {}, "recall_at_10": 1.0, "target_kept": 1.0, "target_held": len(cat.held["targets"]),
            "target_misses": 0, **_exact_share(cat.eval, cat.held), "latency_queries": len(q),
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
    found, found_held = fi.search(cat.eval["queries"], 10)[1], fi.search(cat.held["queries"], 10)[1]
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        size_bytes = sum((Path(tmp) / f).stat().st_size for f in fi.save(Path(tmp)))
    lat = latencies_ms(lambda x: fi.search(x, 10), cat.eval["queries"][:latency_queries])
    return {"index": kind, "factory": fi.info["factory"], "build_s": fi.info["build_s"],
            "bytes_per_photo": round(size_bytes / cat.size, 2), "index_gb": round(size_bytes / 1e9, 3),
            "refine": fi.info.get("refine"), "search_params": fi.info["search_params"],
            "objective": fi.info["objective"], "tuning_curve": fi.info.get("recall_curve"),
            **quality(found, cat.eval, found_held, cat.held), "latency_queries": min(latency_queries, len(cat.eval["queries"])),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
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
            "eval_queries": len(cat.eval["queries"]), "held_queries": len(cat.held["queries"]), "storage": str(np.load(cat.path, mmap_mode="r").dtype)}


def dump(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)
