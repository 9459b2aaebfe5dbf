"""`dcssa-rt bench`: run every harness, write bench.json, bench.md and the plots, print the tables.

bench.json schema (``schema: "dcssa-bench/1"``):
  env          machine and library versions, threads used
  config       sketch source, strokes, repeats, bundle, gallery size, demo flag, checkpoint (and how
               it was found: given, or next to the bundle with the sha256 the manifest records)
  per_stroke   {method: {"median_ms": [per stroke], "p90_ms": [per stroke], "total_median_ms": float}}
  skipped      {method: reason} for methods not available here
  phases       {runtime method: {phase: median ms}}
  undo_ms, peak_rss_mb  {runtime method: value}
  cold_first_stroke_ms  {runtime method: {"load", "first_stroke", "total"}}: a restart (bundle
               hash checks + gallery + graphs, compiled-model caches warm), then the first stroke
  summary      one line per runtime method: its speed-ups, as bench.md states them
  ratios       {"vs torch-eager" | "vs naive": {method: {"stroke_1", "stroke_10", "stroke_20", "whole_sketch"}}}
  search       [{size, dim, k, ours_ms, faiss_flat_ip_ms?, faiss_flat_ip_1thread_ms?, same_topk_as_faiss?}]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dcssa.runtime import Bundle, Gallery, Retriever
from dcssa.runtime.atomic import refuse_existing, staged_dir
from dcssa.runtime.bundle import sha256_file
from dcssa.runtime.backends import available_backends, execution_precisions
from dcssa.runtime.session import PHASES
from dcssa.runtime.strokes import load_strokes_file
from dcssa.runtime.synthetic import random_sketch

from . import stroke_latency as sl
from .env import environment
from .search_scaling import DEFAULT_SIZES, search_scaling

SCHEMA = "dcssa-bench/1"


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
    ckpt: Path | list[Path] | None = None,
    threads: int | None = None,
    search_sizes=DEFAULT_SIZES,
    force: bool = False,
    say=lambda _m: None,
) -> dict:
    refuse_existing(Path(out), force)  # before minutes of measuring, not after
    load_before = os.getloadavg()[0]
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
    ckpt_found = "given (--ckpt)"
    if ckpt is None:
        ckpt = find_source_checkpoint(bundle)
        ckpt_found = "found beside the bundle (sha256 as recorded in its manifest)"
        if ckpt:
            say(f"PyTorch baselines from {', '.join(map(str, ckpt))} ({ckpt_found})")
    try:
        if not ckpt:
            names = ", ".join(c["name"] for c in bundle.manifest.get("source", {}).get("checkpoints", [])) or "?"
            raise RuntimeError(f"the checkpoint the bundle was exported from ({names}) is not beside the bundle: "
                               "pass it with --ckpt to get the PyTorch baselines")
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
    summary = [_summary(name, ratios, strokes) for name in per_stroke if name.startswith("runtime/")]
    search = search_scaling(search_sizes, dim=bundle.embed_dim, progress=say) if search_sizes else []
    report = {
        "schema": SCHEMA,
        "env": {**environment(threads), "load_average_before": round(load_before, 2),
                "load_average_after": round(os.getloadavg()[0], 2)},
        "config": {
            "sketch": str(strokes_file) if strokes_file else "generated (random_sketch, seed 0)",
            "strokes": strokes,
            "repeats": repeats,
            "bundle": str(bundle_path),
            "gallery_size": len(gallery),
            "demo": bundle.demo,
            "checkpoint": [str(p) for p in ckpt] if isinstance(ckpt, list) else (str(ckpt) if ckpt else None),
            "checkpoint_found": ckpt_found if ckpt else None,
        },
        "summary": summary,
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


def _faster(x: float, than: str) -> str:
    return f"{x:.2f}x faster than {than}" if x >= 1 else f"{1 / x:.2f}x SLOWER than {than}"


def _summary(name: str, ratios: dict, strokes: int) -> str:
    parts = []
    if name in ratios.get("vs torch-eager", {}):
        parts.append(_faster(ratios["vs torch-eager"][name]["whole_sketch"], "torch-eager") + " over the whole sketch")
    if name in ratios.get("vs naive", {}):
        r = ratios["vs naive"][name]
        last = f"stroke_{strokes}" if f"stroke_{strokes}" in r else "whole_sketch"
        parts.append(_faster(r[last], "naive") + f" at {last.replace('_', ' ')}, "
                     + _faster(r["whole_sketch"], "naive") + " over the sketch")
    return f"{name}: " + ("; ".join(parts) if parts else "no PyTorch baseline measured")


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(rep: dict) -> str:
    env, cfg = rep["env"], rep["config"]
    lines = [
        "# dcssa-rt benchmark",
        "",
        f"Machine: {env['cpu']} ({env.get('isa') or 'no AVX-512'}), {env['cores']} cores, "
        f"{env['threads']} threads (torch: {env.get('torch_threads')}); GPU: {env['gpu'] or 'none'}. "
        f"onnxruntime {env['onnxruntime']}, numpy {env['numpy']}, torch {env['torch']}, "
        f"openvino {env['openvino']}, TensorRT {env['tensorrt']}, FAISS {env.get('faiss')}. "
        f"Load average (1 min) {env.get('load_average_before')} before, {env.get('load_average_after')} after.",
        f"Sketch: {cfg['sketch']}, {cfg['strokes']} strokes, {cfg['repeats']} repeats (medians), "
        f"gallery of {cfg['gallery_size']} photos{' (DEMO bundle)' if cfg['demo'] else ''}.",
        "",
        *[f"- {line}" for line in rep.get("summary", [])],
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
        lines.append(_row(["method", *cols, "undo", "restart: load + first stroke", "peak RSS MB"]))
        lines.append(_row(["---"] * (len(cols) + 4)))
        for name, ph in rep["phases"].items():
            rss = rep["peak_rss_mb"].get(name)
            cold = rep["cold_first_stroke_ms"][name]
            lines.append(_row([name, *[f"{ph[c]:.2f}" for c in cols], f"{rep['undo_ms'][name]:.3f}",
                               f"{cold['load']:.0f} + {cold['first_stroke']:.0f}", f"{rss:.0f}" if rss else "n/a"]))
        lines += ["", "Peak RSS: a fresh process (no torch) serving one session of the sketch. Restart: bundle "
                  "hash checks, gallery and graph loading with compiled-model caches warm, then the first stroke."]
    if rep["search"]:
        lines += ["", "## Gallery search (top-10, ms, median)", ""]
        has_faiss = "faiss_flat_ip_ms" in rep["search"][0]
        lines.append(_row(["photos", "dcssa-rt exact",
                           *(["FAISS IndexFlatIP", "FAISS, 1 thread", "same top-10"] if has_faiss else [])]))
        lines.append(_row(["---"] * (5 if has_faiss else 2)))
        for r in rep["search"]:
            extra = [f"{r['faiss_flat_ip_ms']:.3f}", f"{r['faiss_flat_ip_1thread_ms']:.3f}",
                     r["same_topk_as_faiss"]] if has_faiss else []
            lines.append(_row([f"{r['size']:,}", f"{r['ours_ms']:.3f}", *extra]))
        if not has_faiss:
            lines.append("\nFAISS not installed (`pip install faiss-cpu` to compare).")
    return "\n".join(lines) + "\n"


def plots(rep: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    env = rep["env"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, v in rep["per_stroke"].items():
        x = np.arange(1, len(v["median_ms"]) + 1)
        (line,) = ax.plot(x, v["median_ms"], marker="o", ms=3, label=name)
        ax.fill_between(x, v["median_ms"], v["p90_ms"], color=line.get_color(), alpha=0.12, lw=0)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("stroke index (the sketch so far has this many strokes)")
    ax.set_ylabel("ms per stroke: median, band to p90")
    ax.set_title(f"Per-stroke latency, {env['cpu']}, {env['cores']} cores, {env['threads']} threads, "
                 f"GPU: {env['gpu'] or 'none'}", fontsize=9)
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
            ax.plot(sizes, [r["faiss_flat_ip_1thread_ms"] for r in rep["search"]], marker="^",
                    label="FAISS IndexFlatIP, 1 thread")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gallery size (photos, random unit vectors)")
        ax.set_ylabel("ms per top-10 query (median)")
        ax.set_title(f"Exact gallery search, dim {rep['search'][0]['dim']}, {env['cpu']}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "search_scaling.png", dpi=120)
        plt.close(fig)
