"""Exact gallery search time against gallery size (our matrix search, and FAISS IndexFlatIP if present:
the search section of ``dcssa-bench run``), and FAISS indexes against the exact search
(``dcssa-bench search-scaling``, and ``run --index-sizes``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import click
import numpy as np

from dcssa.runtime.cli.console import fail_cleanly
from dcssa.runtime.cli.options import output_options
from dcssa.runtime.extras import optional
from dcssa.runtime.progress import Progress, Say, silent
from dcssa.runtime.search.gallery import Gallery

DEFAULT_SIZES = (1_000, 10_000, 100_000, 1_000_000)
DIM = 64  # the demo bundle's embedding size


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def search_scaling(sizes=DEFAULT_SIZES, dim: int = DIM, k: int = 10, repeats: int = 9, seed: int = 0,
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
QUERIES = 500  # held-out queries the recall is measured on
LATENCY_QUERIES = 300  # single queries timed
TARGET_RECALL = 0.95  # each index's search knob is tuned to it


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


def index_comparison(size: int, dim: int = DIM, kinds=INDEX_KINDS, *, queries: int = QUERIES,
                     latency_queries: int = LATENCY_QUERIES, seed: int = 0, target_recall: float = TARGET_RECALL,
                     progress: Say = silent, on_row: Callable[[dict], None] = lambda _row: None) -> list[dict]:
    """One row per index kind (and the exact numpy search) at ``size`` random unit vectors.

    Recall@10 is measured against the exact search on held-out queries (catalogue vectors turned to
    cosine 0.9), with each index's search knob tuned to ``target_recall`` as `dcssa-rt index` does.
    Single-query latency: FAISS on one OpenMP thread (its steady figure beside other thread pools).
    The exact reference is computed once for all kinds; ``on_row`` gets every row as it is measured."""
    import tempfile

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

    from dcssa.runtime import Bundle, IndexOptions, build_gallery
    from dcssa.runtime.backends import get_backend
    from dcssa.runtime.data.photos import list_images
    from dcssa.runtime.indexing.ray_embed import ray_embedder, start_ray

    bundle = Bundle.load(bundle_path)
    n = len(list_images(Path(photos)))
    actors = actors or os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        progress(f"embedding {n} photos locally")
        t = time.perf_counter()
        local = build_gallery(photos, bundle, Path(tmp) / "local", IndexOptions(batch_size=batch_size),
                              backend=get_backend("ort-cpu"))
        local_s = time.perf_counter() - t
        t = time.perf_counter()
        started = start_ray("local", say=progress)
        startup_s = time.perf_counter() - t
        try:
            progress(f"embedding {n} photos on Ray ({actors} actors)")
            t = time.perf_counter()
            remote = build_gallery(photos, bundle, Path(tmp) / "ray", embedder=ray_embedder(
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


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def compare_indexes(out: Path, sizes: list[int], *, dim: int = DIM, kinds=INDEX_KINDS, queries: int = QUERIES,
                    latency_queries: int = LATENCY_QUERIES, target_recall: float = TARGET_RECALL,
                    ray_bundle: Path | None = None, ray_photos: Path | None = None, force: bool = False,
                    say: Say = silent) -> dict:
    """Write OUT/indexes.json, indexes.md and indexes.png; return the report.

    A 10M run takes hours: every measured row also goes to ``OUT.partial.json`` / ``.md`` beside
    ``out`` (``complete: false``) so a run that is stopped keeps what it measured; the finished
    folder replaces them."""
    import json

    from dcssa.benchmarks.env import environment
    from dcssa.runtime.atomic import refuse_existing, staged_dir

    refuse_existing(out, force)  # before minutes of measuring, not after
    rows: list[dict] = []
    env = environment(None)
    config = {"queries": queries, "latency_queries": latency_queries, "target_recall": target_recall,
              "kinds": ",".join(kinds), "sizes": ",".join(map(str, sizes))}
    partial_files = [out.with_name(out.name + ".partial.json"), out.with_name(out.name + ".partial.md")]

    def save_partial(row: dict) -> None:
        rows.append(row)
        rep = {"schema": "dcssa-bench-indexes/1", "complete": False, "env": env, "config": config, "rows": rows}
        out.parent.mkdir(parents=True, exist_ok=True)
        for path, text in zip(partial_files, (json.dumps(rep, indent=2) + "\n",
                                              "**Partial** (the run has not finished)\n\n" + indexes_markdown(rep))):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)

    for size in sizes:
        index_comparison(size, dim, kinds, queries=queries, latency_queries=latency_queries,
                         target_recall=target_recall, progress=say, on_row=save_partial)
    report = {"schema": "dcssa-bench-indexes/1", "complete": True, "env": env, "config": config, "rows": rows}
    if ray_bundle:
        report["ray"] = ray_vs_local(ray_bundle, ray_photos, progress=say)
    with staged_dir(out, force=force) as tmp:
        (tmp / "indexes.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "indexes.md").write_text(indexes_markdown(report))
        plot_indexes(report, tmp / "indexes.png")
    for path in partial_files:
        path.unlink(missing_ok=True)
    return report


@click.command("search-scaling")
@click.option("--sizes", default="1000000", show_default=True, help="Catalogue sizes, comma-separated.")
@click.option("--dim", type=click.IntRange(1), default=DIM, show_default=True,
              help="Embedding size (the demo bundle's is 64).")
@click.option("--kinds", default=",".join(INDEX_KINDS), show_default=True, help="Index kinds, comma-separated.")
@click.option("--queries", type=int, default=QUERIES, show_default=True,
              help="Held-out queries the recall is measured on.")
@click.option("--latency-queries", type=int, default=LATENCY_QUERIES, show_default=True, help="Single queries timed.")
@click.option("--target-recall", type=float, default=TARGET_RECALL, show_default=True,
              help="Each index's search knob is tuned to this recall@10.")
@click.option("--ray-bundle", type=click.Path(path_type=Path), default=None,
              help="Also time `dcssa-rt index --ray` against local embedding with this bundle.")
@click.option("--ray-photos", type=click.Path(path_type=Path), default=None, help="The photo folder for --ray-bundle.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-indexes"), show_default=True)
@output_options(json="the report", force="output folder")
def command(sizes: str, dim: int, kinds: str, queries: int, latency_queries: int, target_recall: float,
            ray_bundle: Path | None, ray_photos: Path | None, out: Path, as_json: bool, quiet: bool,
            force: bool) -> None:
    """FAISS indexes (flat, hnsw, ivf, ivfpq) against the exact search on random unit vectors: build
    time, bytes per photo, latency, recall@10; writes OUT/indexes.json, indexes.md, indexes.png."""
    if ray_bundle and not ray_photos:
        raise click.UsageError("--ray-bundle needs --ray-photos")
    with fail_cleanly():
        report = compare_indexes(out, _ints(sizes), dim=dim, kinds=[k for k in kinds.split(",") if k],
                                 queries=queries, latency_queries=latency_queries, target_recall=target_recall,
                                 ray_bundle=ray_bundle, ray_photos=ray_photos, force=force,
                                 say=Progress(quiet or as_json))
    click.echo(json.dumps(report, indent=2) if as_json else indexes_markdown(report))


if __name__ == "__main__":  # pragma: no cover - the 0.1 entry point, removed in 0.3
    from dcssa.runtime.cli.console import warn

    warn("`python -m dcssa.benchmarks.search_scaling` is deprecated: use `dcssa-bench search-scaling` (the same options)")
    command(prog_name="dcssa-bench search-scaling")
