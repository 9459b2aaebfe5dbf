"""`dcssa-rt bench`: run every harness, write bench.json, bench.md and the plots, print the tables.

bench.json schema (``schema: "dcssa-bench/1"``):
  env          machine and library versions, threads used
  config       sketch source, strokes, repeats, bundle, gallery size, demo flag
  per_stroke   {method: {"median_ms": [per stroke], "p90_ms": [per stroke], "total_median_ms": float}}
  skipped      {method: reason} for methods not available here
  phases       {runtime method: {phase: median ms}}
  undo_ms, cold_first_stroke_ms, peak_rss_mb   {runtime method: value}
  ratios       {"vs torch-eager" | "vs naive": {method: {"stroke_1", "stroke_10", "stroke_20", "whole_sketch"}}}
  search       [{size, dim, k, ours_ms, faiss_flat_ip_ms?, same_topk_as_faiss?}]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dcssa.runtime import Bundle, Gallery, Retriever
from dcssa.runtime.atomic import staged_dir
from dcssa.runtime.backends import available_backends, execution_precisions
from dcssa.runtime.session import PHASES
from dcssa.runtime.strokes import load_strokes_file
from dcssa.runtime.synthetic import random_sketch

from . import stroke_latency as sl
from .env import environment
from .search_scaling import DEFAULT_SIZES, search_scaling

SCHEMA = "dcssa-bench/1"


def run_bench(
    bundle_path: Path,
    gallery_path: Path,
    out: Path,
    *,
    strokes_file: Path | None = None,
    strokes: int = 20,
    repeats: int = 5,
    backends: list[str] | None = None,
    precisions: list[str] | None = None,
    ckpt: Path | None = None,
    threads: int | None = None,
    search_sizes=DEFAULT_SIZES,
    force: bool = False,
    say=lambda _m: None,
) -> dict:
    bundle = Bundle.load(bundle_path)
    gallery = Gallery.load(gallery_path, bundle)
    sketch = load_strokes_file(strokes_file) if strokes_file else random_sketch(np.random.default_rng(0), strokes)
    sketch = sketch[:strokes]
    strokes = len(sketch)
    backends = backends or [b for b in available_backends() if b != "ort-trt"]
    methods, skipped, runtime = [], {}, {}
    for backend in backends:
        # default: the bundle's graph precisions plus the backend's execution modes (openvino: bf16)
        for precision in precisions or [*bundle.precisions(), *execution_precisions(backend)]:
            name = f"runtime/{backend}/{precision}"
            try:
                r = Retriever(bundle, gallery, backend=backend, precision=precision, threads=threads)
            except Exception as exc:  # noqa: BLE001 - report and go on with the rest
                skipped[name] = str(exc).splitlines()[0]
                continue
            runtime[name] = (r, backend, precision)
            methods.append(sl.runtime_method(r, sketch, name))
    try:
        if ckpt is None:
            raise RuntimeError("no checkpoint given (--ckpt): the PyTorch baselines need the original weights")
        methods = sl.torch_methods(bundle, ckpt, gallery, sketch, threads) + methods
    except Exception as exc:  # noqa: BLE001 - torch absent or no checkpoint: say so in the report
        for name in ("naive", "torch-eager"):
            skipped[name] = str(exc).splitlines()[0]
    ms = sl.measure(methods, strokes, repeats, say)
    per_stroke = {
        name: {
            "median_ms": np.median(v, axis=0).round(3).tolist(),
            "p90_ms": np.percentile(v, 90, axis=0).round(3).tolist(),
            "total_median_ms": float(np.median(v.sum(axis=1))),
        }
        for name, v in ms.items()
    }
    phases = {m.name: {p: float(np.median([t[p] for t in m.phases])) for p in (*PHASES, "total")}
              for m in methods if m.name.startswith("runtime/")}
    say("undo, cold start, peak RSS")
    undo = {n: sl.undo_ms(r, sketch, repeats) for n, (r, _, _) in runtime.items()}
    cold = {n: sl.cold_ms(bundle_path, gallery_path, b, p, sketch, threads, max(1, repeats // 2))
            for n, (_, b, p) in runtime.items()}
    rss = {n: sl.peak_rss_mb(bundle_path, gallery_path, b, p, sketch, threads) for n, (_, b, p) in runtime.items()}
    ratios = {}
    for base in ("torch-eager", "naive"):
        if base not in per_stroke:
            continue
        ratios[f"vs {base}"] = {}
        for name, v in per_stroke.items():
            if name == base:
                continue
            picks = {f"stroke_{s}": per_stroke[base]["median_ms"][s - 1] / v["median_ms"][s - 1]
                     for s in (1, 10, 20) if s <= strokes}
            picks["whole_sketch"] = per_stroke[base]["total_median_ms"] / v["total_median_ms"]
            ratios[f"vs {base}"][name] = {k: round(x, 2) for k, x in picks.items()}
    search = search_scaling(search_sizes, dim=bundle.embed_dim, progress=say) if search_sizes else []
    report = {
        "schema": SCHEMA,
        "env": environment(threads),
        "config": {
            "sketch": str(strokes_file) if strokes_file else "generated (random_sketch, seed 0)",
            "strokes": strokes,
            "repeats": repeats,
            "bundle": str(bundle_path),
            "gallery_size": len(gallery),
            "demo": bundle.demo,
        },
        "per_stroke": per_stroke,
        "skipped": skipped,
        "phases": phases,
        "undo_ms": undo,
        "cold_first_stroke_ms": cold,
        "peak_rss_mb": rss,
        "ratios": ratios,
        "search": search,
    }
    with staged_dir(out, force=force) as tmp:
        (tmp / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "bench.md").write_text(markdown(report))
        plots(report, tmp)
    return report


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(rep: dict) -> str:
    env, cfg = rep["env"], rep["config"]
    lines = [
        "# dcssa-rt benchmark",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores, {env['threads']} threads; GPU: {env['gpu'] or 'none'}. "
        f"onnxruntime {env['onnxruntime']}, numpy {env['numpy']}, torch {env['torch']}, "
        f"openvino {env['openvino']}, TensorRT {env['tensorrt']}.",
        f"Sketch: {cfg['sketch']}, {cfg['strokes']} strokes, {cfg['repeats']} repeats (medians), "
        f"gallery of {cfg['gallery_size']} photos{' (DEMO bundle)' if cfg['demo'] else ''}.",
        "",
        "## Per-stroke latency (ms, median [p90])",
        "",
    ]
    ps = rep["per_stroke"]
    n = cfg["strokes"]
    picks = [s for s in (1, 5, 10, 15, 20) if s <= n]
    lines.append(_row(["method", *[f"stroke {s}" for s in picks], "whole sketch"]))
    lines.append(_row(["---"] * (len(picks) + 2)))
    for name, v in ps.items():
        cells = [f"{v['median_ms'][s - 1]:.1f} [{v['p90_ms'][s - 1]:.1f}]" for s in picks]
        lines.append(_row([name, *cells, f"{v['total_median_ms']:.0f}"]))
    for name, why in rep["skipped"].items():
        lines.append(f"\n- `{name}` skipped: {why}")
    for base, table in rep["ratios"].items():
        lines += ["", f"## Speed-up {base} (x, higher is better)", ""]
        cols = list(next(iter(table.values())).keys()) if table else []
        lines.append(_row(["method", *cols]))
        lines.append(_row(["---"] * (len(cols) + 1)))
        for name, r in table.items():
            lines.append(_row([name, *[f"{r[c]:.2f}" for c in cols]]))
    if rep["phases"]:
        lines += ["", "## Runtime phases (ms, median over all strokes)", ""]
        cols = [*PHASES, "total"]
        lines.append(_row(["method", *cols, "undo", "cold first stroke", "peak RSS MB"]))
        lines.append(_row(["---"] * (len(cols) + 4)))
        for name, ph in rep["phases"].items():
            rss = rep["peak_rss_mb"].get(name)
            lines.append(_row([name, *[f"{ph[c]:.2f}" for c in cols], f"{rep['undo_ms'][name]:.3f}",
                               f"{rep['cold_first_stroke_ms'][name]:.0f}", f"{rss:.0f}" if rss else "n/a"]))
    if rep["search"]:
        lines += ["", "## Gallery search (top-10, ms, median)", ""]
        has_faiss = "faiss_flat_ip_ms" in rep["search"][0]
        lines.append(_row(["photos", "dcssa-rt exact", *(["FAISS IndexFlatIP", "same top-10"] if has_faiss else [])]))
        lines.append(_row(["---"] * (4 if has_faiss else 2)))
        for r in rep["search"]:
            extra = [f"{r['faiss_flat_ip_ms']:.3f}", r["same_topk_as_faiss"]] if has_faiss else []
            lines.append(_row([f"{r['size']:,}", f"{r['ours_ms']:.3f}", *extra]))
        if not has_faiss:
            lines.append("\nFAISS not installed (`pip install faiss-cpu` to compare).")
    return "\n".join(lines) + "\n"


def plots(rep: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, v in rep["per_stroke"].items():
        x = np.arange(1, len(v["median_ms"]) + 1)
        ax.plot(x, v["median_ms"], marker="o", ms=3, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("stroke index")
    ax.set_ylabel("ms per stroke (median)")
    ax.set_title(f"Per-stroke latency, {rep['env']['cpu']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "latency_per_stroke.png", dpi=120)
    plt.close(fig)
    if rep["search"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        sizes = [r["size"] for r in rep["search"]]
        ax.plot(sizes, [r["ours_ms"] for r in rep["search"]], marker="o", label="dcssa-rt exact (numpy)")
        if "faiss_flat_ip_ms" in rep["search"][0]:
            ax.plot(sizes, [r["faiss_flat_ip_ms"] for r in rep["search"]], marker="s", label="FAISS IndexFlatIP")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gallery size (photos)")
        ax.set_ylabel("ms per top-10 query (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "search_scaling.png", dpi=120)
        plt.close(fig)
