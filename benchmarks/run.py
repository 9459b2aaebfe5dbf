"""`dcssa-bench run`: run every harness, write bench.json, bench.md and the plots, print the tables.

Stages: resolve the methods (a Retriever per backend and precision, the PyTorch baselines when the
checkpoint is at hand), measure them, derive the ratios and summary, write the folder atomically.
The text lives in :mod:`.markdown`, the figures in :mod:`.plots`.

bench.json schema (``schema: "dcssa-bench/1"``):
  env          machine and library versions, threads used
  config       sketch source, strokes, repeats, bundle, gallery size, demo flag, checkpoint (and how
               it was found: given, or next to the bundle with the sha256 the manifest records)
  per_stroke   {method: {"median_ms": [per stroke], "p90_ms": [per stroke], "total_median_ms": float}}
  skipped      {method: reason} for methods not available here (a peer the CPU cannot run, no checkpoint, ...)
  torch_peers  {torch-* method: {"setup": what runs, "first_call_ms": the first encoder call, timed apart
               from per_stroke (torch-compile: the compile, from an empty inductor cache; also
               "inductor_cache"), "vs_torch_eager": {"max_abs_embedding_diff", "top1_same",
               "top10_overlap"} over the strokes of the last repeat}} (see benchmarks/torch_peers.py)
  best_torch_peer  {"method", "total_median_ms", "by"}: the fastest torch-* peer over the whole
               sketch (per-stroke medians; compile time not counted), or null
  phases       {runtime method: {phase: median ms}}
  undo_ms, peak_rss_mb  {runtime method: value}
  cold_first_stroke_ms  {runtime method: {"load", "first_stroke", "total"}}: a restart (bundle
               hash checks + gallery + graphs, compiled-model caches warm), then the first stroke
  summary      one line per runtime method: its speed-ups, as bench.md states them
  ratios       {"vs best peer" | "vs torch-eager" | "vs naive": {method: {"stroke_1", "stroke_10", "stroke_20",
               "whole_sketch"}}}; "vs best peer" divides by best_torch_peer's medians
  search       [{size, dim, k, ours_ms, faiss_flat_ip_ms?, faiss_flat_ip_1thread_ms?, same_topk_as_faiss?}]
  indexes      [{size, dim, index, factory, build_s, bytes_per_photo, search_params, p50_ms, p99_ms, recall_at_10}]
               (--index-sizes; absent otherwise)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from dcssa.benchmarks import stroke_latency as sl
from dcssa.benchmarks.env import environment
from dcssa.benchmarks.markdown import markdown, summary_line
from dcssa.benchmarks.methods import PEERS
from dcssa.benchmarks.plots import plots
from dcssa.benchmarks.search_scaling import DEFAULT_SIZES, index_comparison, search_scaling
from dcssa.runtime import Bundle, Gallery, Retriever
from dcssa.runtime.atomic import refuse_existing, staged_dir
from dcssa.runtime.backends import available_backends, execution_precisions
from dcssa.runtime.cli.console import fail_cleanly
from dcssa.runtime.cli.options import bundle_option, gallery_option, output_options, runtime_options
from dcssa.runtime.contract.bundle import sha256_file
from dcssa.runtime.data.synthetic import random_sketch
from dcssa.runtime.progress import Progress, Say, silent
from dcssa.runtime.session import PHASES
from dcssa.runtime.stroke.parse import load_strokes_file

BEST_PEER = "best peer"

SCHEMA = "dcssa-bench/1"
EAGER = "torch-eager"
RATIO_STROKES = (1, 10, 20)
STROKES = 20  # strokes of the sketch replayed (the first STROKES of --strokes FILE)
REPEATS = 5  # timed replays of the sketch per method
GIVEN = "given (--ckpt)"
FOUND = "found beside the bundle (sha256 as recorded in its manifest)"


def find_source_checkpoint(bundle: Bundle, where: list[Path] | None = None) -> list[Path] | None:
    """The checkpoint files the bundle was exported from, if they lie beside it (or in ``where``).

    The manifest records their names and sha256; a file of that name whose hash differs is not it.
    """
    wanted = bundle.manifest.get("source", {}).get("checkpoints", [])
    if not wanted:
        return None
    for folder in where or [bundle.path.parent, bundle.path, Path.cwd()]:
        paths = [folder / c["name"] for c in wanted]
        if all(p.is_file() and p.stat().st_size == c.get("bytes", p.stat().st_size) for p, c in zip(paths, wanted)) \
                and all(sha256_file(p) == c["sha256"] for p, c in zip(paths, wanted)):
            return paths
    return None


@dataclass
class Methods:
    """What will be measured: the methods in table order, the runtime ones' settings, what could not run."""

    methods: list[sl.Method] = field(default_factory=list)
    #: runtime method name -> (retriever, backend, precision)
    runtime: dict[str, tuple[Retriever, str, str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    checkpoint: Path | list[Path] | None = None
    checkpoint_found: str | None = None
    #: torch-* peer -> {"setup", "first_call_ms", ...} (torch_peers.TorchMethods.peers)
    torch_peers: dict[str, dict] = field(default_factory=dict)


def runtime_methods(bundle: Bundle, gallery: Gallery, sketch: list[np.ndarray], backends: list[str] | None,
                    precisions: list[str] | None, threads: int | None) -> Methods:
    """One runtime method per backend and precision; those that cannot run here are skipped with why."""
    found = Methods()
    for backend in backends or [b for b in available_backends() if b != "ort-trt"]:
        # default: the bundle's graph precisions plus the backend's execution modes (openvino: bf16)
        for precision in precisions or [*bundle.precisions(), *execution_precisions(backend)]:
            name = f"runtime/{backend}/{precision}"
            try:
                r = Retriever(bundle, gallery, backend=backend, precision=precision, threads=threads)
            except Exception as exc:  # noqa: BLE001 - report and go on with the rest
                found.skipped[name] = str(exc).splitlines()[0]
                continue
            found.runtime[name] = (r, backend, precision)
            found.methods.append(sl.runtime_method(r, sketch, name))
    return found


def add_torch_baselines(found: Methods, bundle: Bundle, gallery: Gallery, sketch: list[np.ndarray],
                        ckpt: Path | list[Path] | None, threads: int | None, say: Say = silent,
                        peers: tuple[str, ...] = PEERS) -> None:
    """Put ``naive`` and the PyTorch ``peers`` first in ``found``, or say in ``skipped`` why they cannot run."""
    how = GIVEN
    if ckpt is None:
        ckpt, how = find_source_checkpoint(bundle), FOUND
        if ckpt:
            say(f"PyTorch baselines from {', '.join(map(str, ckpt))} ({how})")
    found.checkpoint, found.checkpoint_found = ckpt, (how if ckpt else None)
    try:
        if not ckpt:
            names = ", ".join(c["name"] for c in bundle.manifest.get("source", {}).get("checkpoints", [])) or "?"
            raise RuntimeError(f"the checkpoint the bundle was exported from ({names}) is not beside the bundle: "
                               "pass it with --ckpt to get the PyTorch baselines")
        if peers:
            say(f"PyTorch peers: {', '.join(peers)} (first calls, torch-compile compiles)")
        torch_found = sl.torch_methods(bundle, ckpt, gallery, sketch, threads, peers)
    except Exception as exc:  # noqa: BLE001 - torch absent or no checkpoint: say so in the report
        found.skipped.update({name: str(exc).splitlines()[0] for name in ("naive", *(f"torch-{p}" for p in peers))})
        return
    found.methods[:0] = torch_found.methods
    found.torch_peers = torch_found.peers
    found.skipped.update(torch_found.skipped)


def per_stroke_stats(ms: dict[str, np.ndarray]) -> dict[str, dict]:
    """``(repeats, strokes)`` ms per method -> median and p90 per stroke, median whole-sketch total."""
    return {
        name: {
            "median_ms": np.median(v, axis=0).round(3).tolist(),
            "p90_ms": np.percentile(v, 90, axis=0).round(3).tolist(),
            "total_median_ms": float(np.median(v.sum(axis=1))),
        }
        for name, v in ms.items()
    }


def measure_all(found: Methods, sketch: list[np.ndarray], bundle_path: Path, gallery_path: Path, *,
                repeats: int, threads: int | None, say: Say = silent) -> dict:
    """The measured blocks of bench.json: per_stroke, phases, undo_ms, cold_first_stroke_ms, peak_rss_mb."""
    ms = sl.measure(found.methods, len(sketch), repeats, say)
    phases = {m.name: {p: float(np.median([t[p] for t in m.phases])) for p in (*PHASES, "total")}
              for m in found.methods if m.name in found.runtime}
    say("undo, cold start, peak RSS")
    rt = found.runtime
    return {
        "per_stroke": per_stroke_stats(ms),
        "phases": phases,
        "undo_ms": {n: sl.undo_ms(r, sketch, repeats) for n, (r, _, _) in rt.items()},
        "cold_first_stroke_ms": {n: sl.cold_ms(bundle_path, gallery_path, b, p, sketch, threads, max(1, repeats // 2))
                                 for n, (_, b, p) in rt.items()},
        "peak_rss_mb": {n: sl.peak_rss_mb(bundle_path, gallery_path, b, p, sketch, threads)
                        for n, (_, b, p) in rt.items()},
    }


def best_torch_peer(per_stroke: dict[str, dict], peers: dict[str, dict]) -> dict | None:
    """The fastest measured torch-* peer over the whole sketch (per-stroke medians; compile time apart)."""
    measured = [n for n in peers if n in per_stroke]
    if not measured:
        return None
    best = min(measured, key=lambda n: per_stroke[n]["total_median_ms"])
    return {"method": best, "total_median_ms": per_stroke[best]["total_median_ms"],
            "by": "whole-sketch median (sum of per-stroke times; first call / compile not counted)"}


def speedups(per_stroke: dict[str, dict], strokes: int, best: str | None = None) -> dict[str, dict]:
    """Each method's speed-up over each baseline measured: at strokes 1, 10, 20 and over the sketch.

    ``best``: the best PyTorch peer, compared against under the key ``"vs best peer"`` (first).
    """
    ratios = {}
    bases = [(f"vs {BEST_PEER}", best)] if best else []
    for key, base in [*bases, (f"vs {EAGER}", EAGER), ("vs naive", "naive")]:
        if base not in per_stroke:
            continue
        ref = per_stroke[base]
        ratios[key] = {}
        for name, v in per_stroke.items():
            if name == base:
                continue
            picks = {f"stroke_{s}": ref["median_ms"][s - 1] / v["median_ms"][s - 1] for s in RATIO_STROKES if s <= strokes}
            picks["whole_sketch"] = ref["total_median_ms"] / v["total_median_ms"]
            ratios[key][name] = {k: round(x, 2) for k, x in picks.items()}
    return ratios


def peer_report(found: Methods) -> dict[str, dict]:
    """``torch_peers`` of bench.json: each peer's setup and first call, and its outputs against torch-eager's."""
    from dcssa.benchmarks.torch_peers import agreement

    outputs = {m.name: m.outputs for m in found.methods if m.name in found.torch_peers}
    out = {}
    for name, info in found.torch_peers.items():
        same = agreement(outputs[EAGER], outputs[name]) if EAGER in outputs and name != EAGER else None
        out[name] = {**info, "vs_torch_eager": same}
    return out


def write_outputs(out: Path, report: dict, *, force: bool) -> None:
    """bench.json, bench.md and the plots, all or nothing."""
    with staged_dir(out, force=force) as tmp:
        (tmp / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "bench.md").write_text(markdown(report))
        plots(report, tmp)


def run_bench(
    bundle_path: Path,
    gallery_path: Path,
    out: Path,
    *,
    strokes_file: Path | None = None,
    strokes: int = STROKES,
    repeats: int = REPEATS,
    backends: list[str] | None = None,
    precisions: list[str] | None = None,
    ckpt: Path | list[Path] | None = None,
    threads: int | None = None,
    search_sizes=DEFAULT_SIZES,
    index_sizes=(),
    peers: tuple[str, ...] = PEERS,
    force: bool = False,
    say: Say = silent,
) -> dict:
    """Measure everything, write ``out`` (bench.json, bench.md, the plots) and return the report."""
    refuse_existing(Path(out), force)  # before minutes of measuring, not after
    load_before = os.getloadavg()[0]
    bundle = Bundle.load(bundle_path)
    gallery = Gallery.load(gallery_path, bundle)
    sketch = load_strokes_file(strokes_file) if strokes_file else random_sketch(np.random.default_rng(0), strokes)
    sketch = sketch[:strokes]
    found = runtime_methods(bundle, gallery, sketch, backends, precisions, threads)
    add_torch_baselines(found, bundle, gallery, sketch, ckpt, threads, say, tuple(peers))
    measured = measure_all(found, sketch, bundle_path, gallery_path, repeats=repeats, threads=threads, say=say)
    best = best_torch_peer(measured["per_stroke"], found.torch_peers)
    ratios = speedups(measured["per_stroke"], len(sketch), best["method"] if best else None)
    search = search_scaling(search_sizes, dim=bundle.embed_dim, progress=say) if search_sizes else []
    indexes = [row for n in index_sizes for row in index_comparison(n, bundle.embed_dim, progress=say)]
    ckpt = found.checkpoint
    report = {
        "schema": SCHEMA,
        "env": {**environment(threads), "load_average_before": round(load_before, 2),
                "load_average_after": round(os.getloadavg()[0], 2)},
        "config": {
            "sketch": str(strokes_file) if strokes_file else "generated (random_sketch, seed 0)",
            "strokes": len(sketch),
            "repeats": repeats,
            "bundle": str(bundle_path),
            "gallery_size": len(gallery),
            "demo": bundle.demo,
            "checkpoint": [str(p) for p in ckpt] if isinstance(ckpt, list) else (str(ckpt) if ckpt else None),
            "checkpoint_found": found.checkpoint_found,
        },
        "summary": [summary_line(n, ratios, len(sketch), best["method"] if best else None)
                    for n in measured["per_stroke"] if n in found.runtime],
        "per_stroke": measured["per_stroke"],
        "skipped": found.skipped,
        "torch_peers": peer_report(found),
        "best_torch_peer": best,
        **{k: measured[k] for k in ("phases", "undo_ms", "cold_first_stroke_ms", "peak_rss_mb")},
        "ratios": ratios,
        "search": search,
        **({"indexes": indexes} if indexes else {}),
    }
    write_outputs(out, report, force=force)
    return report


def _peer_list(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    wrong = [p for p in names if p not in PEERS]
    if wrong:
        raise click.BadParameter(f"{', '.join(wrong)}: choose from {', '.join(PEERS)}")
    return names


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


@click.command("run")
@bundle_option()
@gallery_option
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-out"), show_default=True)
@click.option("--strokes", "strokes_file", type=click.Path(path_type=Path), default=None,
              help=f"Strokes JSON to replay [default: a generated {STROKES}-stroke sketch].")
@click.option("--max-strokes", type=click.IntRange(1), default=STROKES, show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=REPEATS, show_default=True)
@runtime_options(multiple=True)
@click.option("--ckpt", type=click.Path(path_type=Path), default=None,
              help="The checkpoint the bundle was exported from, for the PyTorch baselines (needs [export]) "
                   "[default: the file the manifest names, if it lies beside the bundle with the recorded sha256].")
@click.option("--search-sizes", default=",".join(map(str, DEFAULT_SIZES)), show_default=True,
              help="Gallery sizes for the search-scaling section ('' to skip).")
@click.option("--index-sizes", default="", show_default=True,
              help="Sizes for the FAISS index section (flat, hnsw, ivf, ivfpq against exact; needs [faiss]; "
                   "'' to skip).")
@click.option("--peers", default=",".join(PEERS), show_default=True, callback=_peer_list,
              help="PyTorch peers to measure beside naive (methods torch-PEER), comma-separated; those the CPU "
                   "cannot run (bf16 without native bf16, compile without a C++ compiler) are left out with the "
                   "reason; '' for none.")
@output_options(json="bench.json", force="output folder")
def command(bundle: Path, gallery: Path, out: Path, strokes_file: Path | None, max_strokes: int, repeats: int,
            backends: tuple[str, ...], precisions: tuple[str, ...], threads: int | None, ckpt: Path | None,
            search_sizes: str, index_sizes: str, peers: tuple[str, ...], as_json: bool, quiet: bool,
            force: bool) -> None:
    """Measure per-stroke latency (naive, the PyTorch peers, runtime), phases, undo, cold start, memory
    and search scaling; writes OUT/bench.json, bench.md, latency_per_stroke.png, search_scaling.png."""
    with fail_cleanly():
        rep = run_bench(bundle, gallery, out, strokes_file=strokes_file, strokes=max_strokes,
                        repeats=repeats, backends=list(backends) or None, precisions=list(precisions) or None,
                        ckpt=ckpt, threads=threads, search_sizes=_sizes(search_sizes), index_sizes=_sizes(index_sizes),
                        peers=peers, force=force, say=Progress(quiet or as_json))
    if as_json:
        click.echo(json.dumps(rep, indent=2))
    else:
        click.echo((out / "bench.md").read_text())
