"""Exact gallery search time against gallery size (our matrix search, and FAISS IndexFlatIP if present:
the search section of ``dcssa-bench run``), and FAISS indexes against the exact search
(``dcssa-bench search-scaling``, and ``run --index-sizes``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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


# -- FAISS indexes against the exact search: target kept, recall, latency, build, bytes, memory ----------

INDEX_KINDS = ("flat", "hnsw", "ivf", "ivfpq")
QUERIES = 200  # held tuning queries (each index's search knob is raised on them)
EVAL_QUERIES = 1000  # evaluation queries (recall@10, exact@10, latency)
HELD_QUERIES = 300  # held evaluation queries (target kept)
LATENCY_QUERIES = 300  # single queries timed
TARGET_RECALL = 0.95  # the tuning objective's threshold (target kept when queries have targets)


def random_unit_vectors(n: int, dim: int, seed: int = 0, chunk: int = 1 << 20) -> np.ndarray:
    """``n`` random unit vectors (float32), generated chunk by chunk (no float64 copy of the whole)."""
    out = np.empty((n, dim), np.float32)
    rng = np.random.default_rng(seed)
    for i in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - i), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[i : i + len(x)] = x
    return out


def index_comparison(size: int, dim: int = DIM, kinds=INDEX_KINDS, *, data: str = "isotropic", fit=None,
                     cache: Path, queries: int = QUERIES, eval_queries: int = EVAL_QUERIES,
                     held_queries: int = HELD_QUERIES, latency_queries: int = LATENCY_QUERIES, seed: int = 0, target_recall: float = TARGET_RECALL,
                     progress: Say = silent, on_row: Callable[[dict], None] = lambda _row: None) -> list[dict]:
    """One row per index kind (and the exact numpy search) on one cached catalogue.

    Tuned on the held tuning queries, measured on the evaluation queries (recall@10, exact@10,
    single-query latency on one thread) and the held evaluation queries (target kept in the top 10), build
    time, bytes per photo and the peak RSS of the process that built it (which includes the pages of the
    memory-mapped catalogue it read)."""
    from dcssa.benchmarks.search_indexes import catalogue, exact_row, measure_kind, summary

    cat = catalogue(data, size, dim, cache=cache, fit=fit, queries=queries, eval_queries=eval_queries,
                    held=held_queries, seed=seed, say=progress)
    head = summary(cat)
    rows = [{**head, **exact_row(cat, latency_queries)}]
    on_row(rows[0])
    for kind in kinds:
        progress(f"index comparison: {kind} on {size} {data} photos of dim {dim}")
        rows.append({**head, **measure_kind(cat, kind, target_recall=target_recall, latency_queries=latency_queries,
                                            scratch=cache)})
        on_row(rows[-1])
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


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def indexes_markdown(report: dict) -> str:
    env, cfg = report["env"], report["config"]
    lines = [f"# FAISS indexes vs exact search ({env['cpu']}, {env['cores']} cores, ISA {env['isa'] or '-'}; "
             f"FAISS {env.get('faiss')}, numpy {env['numpy']})", "",
             f"Data: `realistic` = drawn from the embedding fit ({cfg.get('fits') or '-'}); `isotropic` = random unit "
             "vectors, the WORST CASE (no spectrum, no clusters). Each index's search knob is tuned on "
             f"{cfg['queries']} held tuning queries to {cfg['target_recall']} of its objective (target kept). *Kept*: "
             f"of {cfg.get('held_queries', '?')} other held queries (their photo is in the exact top 10; drawn by exact "
             "rejection from the generator's queries), the share whose photo the index's top 10 keeps (*misses*: "
             "how many it lost). recall@10 and *exact@10* (the share of queries as drawn whose photo the exact top "
             f"10 holds) on {cfg['eval_queries']} evaluation queries. Latency: up to {cfg['latency_queries']} single "
             "queries (fewer for the exact row at 10M: a full scan each) on one thread (FAISS and "
             "BLAS pools at 1); load = 1-min load average after timing. Build s: training and adding (tuning not "
             "included). Peak anon MB: the building process's anonymous memory (sampled every 0.2 s); peak RSS adds the "
             "file pages of the memory-mapped catalogue it read (reclaimable cache, not a need).",
             "",
             "| data | photos | dim | index | factory | params | kept | misses / held | recall@10 | exact@10 | p50 ms | "
             "p99 ms | build s | bytes/photo | index GB | peak anon MB | peak RSS MB | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        params = ", ".join(f"{k} {v}" for k, v in r["search_params"].items())
        params += (f", refine {r['refine']}" if r.get("refine") else "")
        lines.append(f"| {r['data']} | {r['size']:,} | {r['dim']} | {r['index']} | {r['factory']} | {params or '-'} | "
                     f"{r['target_kept']:.4f} | {r.get('target_misses', '-')} / {r['target_held']} | "
                     f"{r['recall_at_10']:.4f} | {r['exact_target_in_top10']:.3f} | "
                     f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['build_s']:.1f} | {r['bytes_per_photo']:.1f} | "
                     f"{_fmt(r.get('index_gb'), '.2f')} | {_fmt(r.get('peak_anon_mb'), 'd')} | {_fmt(r.get('peak_rss_mb'), 'd')} | "
                     f"{r['loadavg'][0]:.1f} |")
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

    fig, ax = figure((7, 4.5))
    for r in report["rows"]:
        ax.scatter(r["p50_ms"], r["target_kept"], marker="o" if r["data"] == "realistic" else "x")
        ax.annotate(f"{r['index']} {r['size'] // 1000}k {r['dim']}d{' iso' if r['data'] != 'realistic' else ''}",
                    (r["p50_ms"], r["target_kept"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("single-query latency p50 on one thread, ms (log)")
    ax.set_ylabel("target kept in the top 10 (vs exact)")
    ax.set_title(f"FAISS indexes vs exact search, {report['env']['cpu']} (x: isotropic worst case)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=120)


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _fits(dims: list[int], data: list[str], fit_files: tuple[Path, ...]) -> dict:
    """The embedding fit of every dimension realistic data needs (given files, else the shipped ones)."""
    from dcssa.benchmarks.embeddings import EmbeddingFit

    if "realistic" not in data:
        return {}
    fits = {f.dim: f for f in map(EmbeddingFit.load, fit_files)}
    for d in dims:
        if d not in fits:
            try:
                fits[d] = EmbeddingFit.named(d)
            except FileNotFoundError as exc:
                from dcssa.runtime.errors import DcssaError

                raise DcssaError(str(exc), hint="pass --fit FILE, or --data isotropic") from None
    return fits


def compare_indexes(out: Path, sizes: list[int], *, dims: list[int] = (DIM,), kinds=INDEX_KINDS,
                    data: list[str] = ("realistic",), fit_files: tuple[Path, ...] = (), cache: Path | None = None,
                    queries: int = QUERIES, eval_queries: int = EVAL_QUERIES, held_queries: int = HELD_QUERIES,
                    latency_queries: int = LATENCY_QUERIES, target_recall: float = TARGET_RECALL, ray_bundle: Path | None = None,
                    ray_photos: Path | None = None, force: bool = False, say: Say = silent) -> dict:
    """Write OUT/indexes.json, indexes.md and indexes.png (and the fit check of realistic data); return the report.

    A 10M run takes hours: every measured row also goes to ``OUT.partial.json`` / ``.md`` beside
    ``out`` (``complete: false``) so a run that is stopped keeps what it measured; the finished
    folder replaces them. ``cache`` keeps drawn catalogues, queries and exact references across runs."""
    import tempfile

    from dcssa.benchmarks.env import environment
    from dcssa.runtime.atomic import refuse_existing, staged_dir

    refuse_existing(out, force)  # before minutes of measuring, not after
    fits = _fits(list(dims), list(data), fit_files)
    rows: list[dict] = []
    env = environment(None)
    config = {"queries": queries, "eval_queries": eval_queries, "held_queries": held_queries,
              "latency_queries": latency_queries,
              "target_recall": target_recall, "kinds": ",".join(kinds), "sizes": ",".join(map(str, sizes)),
              "dims": ",".join(map(str, dims)), "data": ",".join(data),
              "fits": ", ".join(f"{d}-d: {f.source.get('name', '?')}" for d, f in sorted(fits.items()))}
    partial_files = [out.with_name(out.name + ".partial.json"), out.with_name(out.name + ".partial.md")]

    def save_partial(row: dict) -> None:
        rows.append(row)
        rep = {"schema": "dcssa-bench-indexes/2", "complete": False, "env": env, "config": config, "rows": rows}
        out.parent.mkdir(parents=True, exist_ok=True)
        for path, text in zip(partial_files, (json.dumps(rep, indent=2) + "\n",
                                              "**Partial** (the run has not finished)\n\n" + indexes_markdown(rep))):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)

    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as scratch:
        for kind_of_data in data:
            for dim in dims:
                for size in sizes:
                    index_comparison(size, dim, kinds, data=kind_of_data, fit=fits.get(dim),
                                     cache=Path(cache or scratch), queries=queries, eval_queries=eval_queries,
                                     held_queries=held_queries, latency_queries=latency_queries, target_recall=target_recall, progress=say,
                                     on_row=save_partial)
    report = {"schema": "dcssa-bench-indexes/2", "complete": True, "env": env, "config": config, "rows": rows}
    if ray_bundle:
        report["ray"] = ray_vs_local(ray_bundle, ray_photos, progress=say)
    with staged_dir(out, force=force) as tmp:
        (tmp / "indexes.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "indexes.md").write_text(indexes_markdown(report))
        plot_indexes(report, tmp / "indexes.png")
        for dim, f in fits.items():
            (tmp / f"embedding-fit-{dim}.json").write_text(json.dumps(f.source, indent=2) + "\n")
    for path in partial_files:
        path.unlink(missing_ok=True)
    return report


@click.command("search-scaling")
@click.option("--sizes", default="1000000", show_default=True, help="Catalogue sizes, comma-separated.")
@click.option("--dim", "dims", default=str(DIM), show_default=True,
              help="Embedding sizes, comma-separated (DC-SSA's is 64, ARNet's 512).")
@click.option("--data", default="realistic", show_default=True,
              help="realistic (drawn from the embedding fit) and/or isotropic (random unit vectors: the worst case), "
                   "comma-separated.")
@click.option("--fit", "fit_files", type=click.Path(path_type=Path, exists=True, dir_okay=False), multiple=True,
              help="An embedding fit (.npz of `dcssa-bench fit-embeddings`) [default: the shipped one per dimension].")
@click.option("--kinds", default=",".join(INDEX_KINDS), show_default=True,
              help="Index kinds, comma-separated; parameters after a colon joined by '+', e.g. ivfpq:refine=4+nlist=1024.")
@click.option("--queries", type=int, default=QUERIES, show_default=True,
              help="Held tuning queries (their photo is in the exact top 10; each index's search knob is raised on them).")
@click.option("--eval-queries", type=int, default=EVAL_QUERIES, show_default=True,
              help="Evaluation queries as drawn (recall@10, exact@10 and latency are measured on them).")
@click.option("--held-queries", type=int, default=HELD_QUERIES, show_default=True,
              help="Held evaluation queries (the target-kept share is measured on them).")
@click.option("--latency-queries", type=int, default=LATENCY_QUERIES, show_default=True, help="Single queries timed.")
@click.option("--target-recall", type=float, default=TARGET_RECALL, show_default=True,
              help="Each index's search knob is tuned to this target kept (recall@10 without targets).")
@click.option("--cache", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Keep drawn catalogues, queries and exact references here across runs [default: a temporary folder].")
@click.option("--ray-bundle", type=click.Path(path_type=Path), default=None,
              help="Also time `dcssa-rt index --ray` against local embedding with this bundle.")
@click.option("--ray-photos", type=click.Path(path_type=Path), default=None, help="The photo folder for --ray-bundle.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-indexes"), show_default=True)
@output_options(json="the report", force="output folder")
def command(sizes: str, dims: str, data: str, fit_files: tuple[Path, ...], kinds: str, queries: int, eval_queries: int,
            held_queries: int, latency_queries: int, target_recall: float, cache: Path | None, ray_bundle: Path | None,
            ray_photos: Path | None, out: Path, as_json: bool, quiet: bool, force: bool) -> None:
    """FAISS indexes against the exact search on realistic embeddings (fitted on the demo models) and on
    isotropic random vectors (the worst case): target kept in the top 10, recall@10, single-query
    latency, build time, bytes per photo, peak memory; writes OUT/indexes.json, indexes.md, indexes.png."""
    if ray_bundle and not ray_photos:
        raise click.UsageError("--ray-bundle needs --ray-photos")
    with fail_cleanly():
        report = compare_indexes(out, _ints(sizes), dims=_ints(dims), kinds=[k.replace("+", ",") for k in kinds.split(",") if k],
                                 data=[d for d in data.split(",") if d], fit_files=fit_files, cache=cache,
                                 queries=queries, eval_queries=eval_queries, held_queries=held_queries,
                                 latency_queries=latency_queries,
                                 target_recall=target_recall, ray_bundle=ray_bundle, ray_photos=ray_photos,
                                 force=force, say=Progress(quiet or as_json))
    click.echo(json.dumps(report, indent=2) if as_json else indexes_markdown(report))


if __name__ == "__main__":  # pragma: no cover - the 0.1 entry point, removed in 0.3
    from dcssa.runtime.cli.console import warn

    warn("`python -m dcssa.benchmarks.search_scaling` is deprecated: use `dcssa-bench search-scaling` (the same options)")
    command(prog_name="dcssa-bench search-scaling")
