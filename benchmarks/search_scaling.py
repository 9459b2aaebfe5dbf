"""Exact gallery search time against gallery size: our matrix search, and FAISS IndexFlatIP if present."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from dcssa.runtime.extras import optional
from dcssa.runtime.progress import Say, silent
from dcssa.runtime.search.gallery import Gallery

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
    faiss = optional("faiss")
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


# -- FAISS indexes against the exact search: build time, bytes per photo, latency, recall --------------

INDEX_KINDS = ("flat", "hnsw", "ivf", "ivfpq")


def random_unit_vectors(n: int, dim: int, seed: int = 0, chunk: int = 1 << 20) -> np.ndarray:
    """``n`` random unit vectors (float32), generated chunk by chunk (no float64 copy of the whole)."""
    out = np.empty((n, dim), np.float32)
    rng = np.random.default_rng(seed)
    for i in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - i), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[i : i + len(x)] = x
    return out


def _latencies_ms(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> dict:
    fn(queries[0])  # warm-up
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t) * 1e3)
    return {"p50_ms": round(float(np.percentile(times, 50)), 4), "p99_ms": round(float(np.percentile(times, 99)), 4)}


def index_comparison(size: int, dim: int = 64, kinds=INDEX_KINDS, *, queries: int = 500, latency_queries: int = 300,
                     seed: int = 0, target_recall: float = 0.95, progress: Say = silent,
                     on_row: Callable[[dict], None] = lambda _row: None) -> list[dict]:
    """One row per index kind (and the exact numpy search) at ``size`` random unit vectors.

    Recall@10 is measured against the exact search on held-out queries (catalogue vectors turned to
    cosine 0.9), with each index's search knob tuned to ``target_recall`` as `dcssa-rt index` does.
    Single-query latency: FAISS on one OpenMP thread (its steady figure beside other thread pools).
    The exact reference is computed once for all kinds; ``on_row`` gets every row as it is measured."""
    import tempfile
    from pathlib import Path

    import faiss

    from dcssa.runtime.indexing.faiss_build import IndexSpec, build_index, exact_topk_labels, heldout_queries
    from dcssa.runtime.search.gallery import top_k

    progress(f"index comparison: {size} random unit vectors of dim {dim}")
    emb = random_unit_vectors(size, dim, seed)
    labels = np.arange(size, dtype=np.int64)
    q = heldout_queries(emb, queries, seed=seed + 1)
    lat_q = heldout_queries(emb, latency_queries, seed=seed + 2)
    rows = [{"size": size, "dim": dim, "index": "exact (numpy)", "factory": "-", "build_s": 0.0,
             "bytes_per_photo": dim * 4.0, "recall_at_10": 1.0, "search_params": {},
             **_latencies_ms(lambda x: top_k(emb @ x, 10), lat_q)}]
    on_row(rows[0])
    progress(f"index comparison: exact top-10 of {len(q)} held-out queries")
    truth = exact_topk_labels(emb, labels, q)
    threads = faiss.omp_get_max_threads()
    for kind in kinds:
        progress(f"index comparison: {kind} at {size}")
        faiss.omp_set_num_threads(threads)
        fi = build_index(emb, labels, IndexSpec.parse(kind, target_recall=target_recall), queries=q,
                         query_source="catalogue vectors turned to cosine 0.9", truth=truth, say=progress)
        with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
            size_bytes = sum(p.stat().st_size for p in map(Path, [Path(tmp) / f for f in fi.save(Path(tmp))]))
        faiss.omp_set_num_threads(1)
        try:
            lat = _latencies_ms(partial(fi.search, k=10), lat_q)  # not a lambda over `fi`: del fi below (F821)
        finally:
            faiss.omp_set_num_threads(threads)
        rows.append({"size": size, "dim": dim, "index": kind, "factory": fi.info["factory"],
                     "build_s": fi.info["build_s"], "bytes_per_photo": round(size_bytes / size, 2),
                     "recall_at_10": fi.info["recall_at_10"], "search_params": fi.info["search_params"],
                     "recall_curve": fi.info.get("recall_curve"), **lat})
        on_row(rows[-1])
        del fi
    return rows


def ray_vs_local(bundle_path, photos, *, actors: int | None = None, batch_size: int = 8,
                 progress: Say = silent) -> dict:
    """Photos/s of `dcssa-rt index` in this process (ort-cpu, all cores) and on a local Ray instance
    (one single-threaded actor per core): equal cores, so this shows the overhead of the Ray path;
    its gain is that the actors can live on other machines. Also checks the two galleries agree."""
    import os
    import tempfile
    from pathlib import Path

    from dcssa.runtime import Bundle, build_gallery
    from dcssa.runtime.backends import get_backend
    from dcssa.runtime.data.photos import list_images
    from dcssa.runtime.indexing.ray_embed import ray_embedder, start_ray

    bundle = Bundle.load(bundle_path)
    n = len(list_images(Path(photos)))
    actors = actors or os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        progress(f"embedding {n} photos locally")
        t = time.perf_counter()
        local = build_gallery(photos, bundle, Path(tmp) / "local", backend=get_backend("ort-cpu"),
                              batch_size=batch_size, progress=False)
        local_s = time.perf_counter() - t
        t = time.perf_counter()
        started = start_ray("local", say=progress)
        startup_s = time.perf_counter() - t
        try:
            progress(f"embedding {n} photos on Ray ({actors} actors)")
            t = time.perf_counter()
            remote = build_gallery(photos, bundle, Path(tmp) / "ray", progress=False, embedder=ray_embedder(
                bundle, address="local", actors=actors, batch_size=batch_size, keep_running=True))
            ray_s = time.perf_counter() - t
        finally:
            if started:
                import ray

                ray.shutdown()
        diff = float(np.abs(np.asarray(local.embeddings, np.float32) - np.asarray(remote.embeddings, np.float32)).max())
    return {"photos": n, "actors": actors, "local_s": round(local_s, 2), "local_photos_per_s": round(n / local_s, 2),
            "ray_startup_s": round(startup_s, 2), "ray_s": round(ray_s, 2), "ray_photos_per_s": round(n / ray_s, 2),
            "max_abs_diff": diff, "same_ids": local.ids == remote.ids}


def indexes_markdown(report: dict) -> str:
    env = report["env"]
    lines = [f"# FAISS indexes vs exact search ({env['cpu']}, {env['cores']} cores, ISA {env['isa'] or '-'}; "
             f"FAISS {env.get('faiss')}, numpy {env['numpy']})", "",
             "Random unit vectors; recall@10 against the exact search on "
             f"{report['config']['queries']} held-out queries (vectors turned to cosine 0.9), each index's "
             f"search knob tuned to recall {report['config']['target_recall']}; single-query latency over "
             f"{report['config']['latency_queries']} queries (FAISS on 1 thread). Build s: sampling, training "
             "and adding (the recall tuning after it not included).", "",
             "| photos | dim | index | factory | build s | bytes/photo | search params | p50 ms | p99 ms | recall@10 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        params = ", ".join(f"{k} {v}" for k, v in r["search_params"].items()) or "-"
        lines.append(f"| {r['size']:,} | {r['dim']} | {r['index']} | {r['factory']} | {r['build_s']:.1f} | "
                     f"{r['bytes_per_photo']:.1f} | {params} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['recall_at_10']:.4f} |")
    for size, why in report.get("not_measured", {}).items():
        lines.append(f"\nNot measured at {size}: {why}")
    r = report.get("ray")
    if r:
        lines += ["", f"Embedding {r['photos']} photos: this process {r['local_photos_per_s']} photos/s "
                  f"({r['local_s']} s); local Ray instance, {r['actors']} actors, {r['ray_photos_per_s']} photos/s "
                  f"({r['ray_s']} s, after {r['ray_startup_s']} s to start Ray); same ids {r['same_ids']}, "
                  f"max abs difference {r['max_abs_diff']:.1e}."]
    return "\n".join(lines) + "\n"


def plot_indexes(report: dict, path) -> None:
    from dcssa.benchmarks.plots import figure

    fig, ax = figure((6.5, 4.2))
    for size in sorted({r["size"] for r in report["rows"]}):  # noqa: B007
        for r in (r for r in report["rows"] if r["size"] == size):
            ax.scatter(r["p50_ms"], r["recall_at_10"], marker="o" if size < 5_000_000 else "s")
            ax.annotate(f"{r['index']} {size // 1000}k", (r["p50_ms"], r["recall_at_10"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("single-query latency p50, ms (log)")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_title(f"FAISS indexes vs exact search, {report['env']['cpu']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    """python -m dcssa.benchmarks.search_scaling --sizes 1000000 --kinds flat,hnsw,ivf,ivfpq --out DIR"""
    import argparse
    from pathlib import Path

    from dcssa.runtime.progress import Progress

    ap = argparse.ArgumentParser(prog="python -m dcssa.benchmarks.search_scaling", description=main.__doc__)
    ap.add_argument("--sizes", default="1000000", help="catalogue sizes, comma-separated")
    ap.add_argument("--dim", type=int, default=64, help="embedding size (the demo bundle's is 64)")
    ap.add_argument("--kinds", default=",".join(INDEX_KINDS), help="index kinds, comma-separated")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--ray-bundle", type=Path, default=None, help="also time --ray against local embedding with this bundle")
    ap.add_argument("--ray-photos", type=Path, default=None, help="the photo folder for --ray-bundle")
    ap.add_argument("--out", type=Path, default=Path("bench-indexes"))
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the report as JSON on stdout (implies -q)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    say = Progress(args.quiet or args.json)
    if args.ray_bundle and not args.ray_photos:
        ap.error("--ray-bundle needs --ray-photos")
    from dcssa.runtime.errors import DcssaError

    try:
        _run(args, say)
    except DcssaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def _run(args, say: Say) -> None:
    """A 10M run takes hours: every measured row also goes to ``OUT.partial.json`` / ``.md`` beside
    ``--out`` (``complete: false``) so a run that is stopped keeps what it measured; the finished
    folder replaces them."""
    import json

    from dcssa.benchmarks.env import environment
    from dcssa.runtime.atomic import refuse_existing, staged_dir

    refuse_existing(args.out, args.force)  # before minutes of measuring, not after
    rows: list[dict] = []
    env = environment(None)
    config = {"queries": args.queries, "latency_queries": args.latency_queries,
              "target_recall": args.target_recall, "kinds": args.kinds, "sizes": args.sizes}
    partial = [args.out.with_name(args.out.name + ".partial.json"), args.out.with_name(args.out.name + ".partial.md")]

    def save_partial(row: dict) -> None:
        rows.append(row)
        rep = {"schema": "dcssa-bench-indexes/1", "complete": False, "env": env, "config": config, "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for path, text in zip(partial, (json.dumps(rep, indent=2) + "\n",
                                        "**Partial** (the run has not finished)\n\n" + indexes_markdown(rep))):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)

    for size in (int(s) for s in args.sizes.split(",") if s.strip()):
        index_comparison(size, args.dim, [k for k in args.kinds.split(",") if k], queries=args.queries,
                         latency_queries=args.latency_queries, target_recall=args.target_recall, progress=say,
                         on_row=save_partial)
    report = {"schema": "dcssa-bench-indexes/1", "complete": True, "env": env, "config": config, "rows": rows}
    if args.ray_bundle:
        report["ray"] = ray_vs_local(args.ray_bundle, args.ray_photos, progress=say)
    with staged_dir(args.out, force=args.force) as tmp:
        (tmp / "indexes.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "indexes.md").write_text(indexes_markdown(report))
        plot_indexes(report, tmp / "indexes.png")
    for path in partial:
        path.unlink(missing_ok=True)
    print(json.dumps(report, indent=2) if args.json else indexes_markdown(report))

if __name__ == "__main__":
    main()
