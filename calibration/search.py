"""Choosing the INT8 recipe by measurement, and the fidelity-vs-latency trade-off curve.

Three measurements, all against the fp32 pipeline on held-out stroke prefixes:

1. calibration method: quantise the default block set with MinMax, entropy and percentile ranges;
2. per-block sensitivity: quantise ONE block at a time (an Inception block, the stem pools, the
   attention projections) and see how far the embeddings and rankings move;
3. the curve: quantise blocks cumulatively, least sensitive first, measuring fidelity and latency at
   every step. The chosen recipe is the fastest point that keeps both fidelity targets (and says
   whether it also meets the latency target); fidelity is never traded away for speed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from dcssa.runtime import manifest as mf
from dcssa.runtime.bundle import Bundle
from dcssa.runtime.progress import Say, silent

from . import fidelity as fd
from .calibset import PrefixSet
from .int8 import (ATTENTION_BLOCKS, STEM_POOLS, TRUNK_BLOCKS, Int8Recipe, collect_ranges, quantize_int8,
                   searchable_blocks)

SEARCH_BLOCKS = (*TRUNK_BLOCKS, STEM_POOLS, "attention.proj")


@dataclass
class SearchContext:
    """Everything one recipe evaluation needs; range caches are computed once per method.

    ``symmetric`` is the activation encoding of the target (False: onnxruntime CPU, True: TensorRT).
    """

    bundle: Bundle
    calib: PrefixSet
    held: PrefixSet
    gallery: fd.GalleryMatrix
    ref: fd.Reference
    workdir: Path
    backend: object
    symmetric: bool = False
    latency_rasters: int = 6
    latency_repeats: int = 2
    say: Say = silent
    on_batch: Callable[[int], None] = lambda _n: None
    caches: dict[str, Path] = field(default_factory=dict)

    @property
    def fp32(self) -> Path:
        return self.bundle.graph_path(mf.SKETCH_ENCODER, "fp32")

    def cache(self, method: str) -> Path:
        if method not in self.caches:
            # MinMax ranges do not depend on the activation encoding; histogram methods do
            tag = "" if method == "minmax" else ("-sym" if self.symmetric else "-asym")
            path = self.workdir / f"ranges-{method}{tag}.json"
            if not path.is_file():
                self.say(f"calibrating ({method}) on {len(self.calib)} stroke prefixes")
                collect_ranges(self.fp32, self.calib, method, path, symmetric=self.symmetric, on_batch=self.on_batch)
            self.caches[method] = path
        return self.caches[method]

    def evaluate(self, recipe: Int8Recipe, *, latency: bool = True, keep: Path | None = None) -> dict:
        """Quantise with ``recipe`` and report its fidelity (and latency) against fp32."""
        out = keep or self.workdir / "candidate.onnx"
        summary = quantize_int8(self.fp32, out, recipe, self.cache(recipe.method), symmetric=self.symmetric)
        report = fd.fidelity_report(
            self.bundle, out, "int8", self.held, self.gallery, self.ref, backend=self.backend,
            latency_rasters=self.latency_rasters if latency else 0, latency_repeats=self.latency_repeats,
            on_batch=self.on_batch,
        )
        report["recipe"] = recipe.record(symmetric=self.symmetric)
        report["quantisation"] = summary
        return report


def _point(label: str, report: dict) -> dict:
    p = {
        "label": label,
        "embedding_cosine_mean": report["embedding_cosine"]["mean"],
        "embedding_cosine_min": report["embedding_cosine"]["min"],
        "feature_cosine_mean": report["feature_cosine"]["mean"],
        "top1_agreement": report["top1_agreement"],
        "top10_overlap": report["top10_overlap"],
    }
    if "latency" in report:
        p["latency_ratio"] = report["latency"]["ratio"]
    return p


def compare_methods(ctx: SearchContext, methods: Sequence[str], blocks: Sequence[str] = SEARCH_BLOCKS) -> list[dict]:
    out = []
    for m in methods:
        r = ctx.evaluate(Int8Recipe(method=m, blocks=list(blocks)), latency=False)
        out.append({"method": m, **_point(m, r)})
        ctx.say(f"  method {m:10s} top-1 {r['top1_agreement']:.1%} top-10 {r['top10_overlap']:.1%} "
                f"cosine {r['embedding_cosine']['mean']:.4f}")
    return out


def block_sensitivity(ctx: SearchContext, method: str, blocks: Sequence[str] = SEARCH_BLOCKS) -> list[dict]:
    """Fidelity with only one block quantised, for each block."""
    out = []
    for b in blocks:
        r = ctx.evaluate(Int8Recipe(method=method, blocks=[b]), latency=False)
        out.append({"block": b, **_point(b, r)})
        ctx.say(f"  only {b:16s} top-1 {r['top1_agreement']:.1%} top-10 {r['top10_overlap']:.1%} "
                f"cosine {r['embedding_cosine']['mean']:.4f}")
    return out


def sensitivity_order(sens: list[dict]) -> list[str]:
    """Blocks from least to most harmful (by top-10 overlap, then embedding cosine)."""
    return [s["block"] for s in sorted(sens, key=lambda s: (-s["top10_overlap"], -s["embedding_cosine_mean"]))]


def trade_off_curve(ctx: SearchContext, method: str, order: Sequence[str]) -> list[dict]:
    """Quantise the first k blocks of ``order`` for k = 1..len(order): fidelity and latency each time."""
    curve = []
    for k in range(1, len(order) + 1):
        recipe = Int8Recipe(method=method, blocks=list(order[:k]))
        r = ctx.evaluate(recipe)
        p = {"blocks": k, "added": order[k - 1], **_point(f"{k} blocks", r)}
        curve.append(p)
        ctx.say(f"  {k:2d} blocks (+{order[k - 1]:14s}) top-1 {p['top1_agreement']:.1%} "
                f"top-10 {p['top10_overlap']:.1%} latency {p['latency_ratio']:.2f}x")
    return curve


def choose(curve: list[dict], targets: dict = fd.TARGETS) -> tuple[dict, bool]:
    """(point, meets_all_targets). Fidelity first -- speed is only worth having if the top-10 stays:
    the fastest point meeting both targets, else the fastest point meeting the fidelity targets,
    else the most faithful point."""
    faithful = [p for p in curve if p["top10_overlap"] >= targets["top10_overlap"]
                and p["top1_agreement"] >= targets["top1_agreement"]]
    both = [p for p in faithful if p["latency_ratio"] <= targets["latency_ratio"]]
    if both:
        return min(both, key=lambda p: p["latency_ratio"]), True
    if faithful:
        return min(faithful, key=lambda p: p["latency_ratio"]), False
    return max(curve, key=lambda p: (p["top10_overlap"], p["top1_agreement"], -p["latency_ratio"])), False


def run_search(ctx: SearchContext, methods: Sequence[str] = ("minmax", "percentile", "entropy"),
               blocks: Sequence[str] | None = None) -> dict:
    """Methods, then sensitivity and the curve with the best method; returns the whole record.

    ``blocks``: those to try [default: every searchable block of the fp32 graph, see
    :func:`~dcssa.calibration.int8.searchable_blocks`].
    """
    if blocks is None:
        blocks = searchable_blocks(onnx.load(str(ctx.fp32), load_external_data=False))
    ctx.say("recipe search: calibration methods")
    by_method = compare_methods(ctx, methods, blocks)
    best = max(by_method, key=lambda m: (m["top10_overlap"], m["top1_agreement"], m["embedding_cosine_mean"]))["method"]
    ctx.say(f"recipe search: per-block sensitivity ({best})")
    sens = block_sensitivity(ctx, best, blocks)
    order = sensitivity_order(sens)
    ctx.say("recipe search: trade-off curve (least sensitive blocks first)")
    curve = trade_off_curve(ctx, best, order)
    point, ok = choose(curve)
    recipe = Int8Recipe(method=best, blocks=list(order[: point["blocks"]]))
    record = {
        "methods": by_method,
        "sensitivity": sens,
        "order": order,
        "curve": curve,
        "chosen": {"blocks": point["blocks"], "meets_targets": ok, "recipe": recipe.record(symmetric=ctx.symmetric)},
        "float_blocks": [b for b in (*blocks, *ATTENTION_BLOCKS) if not recipe.covers(b)],
    }
    (ctx.workdir / "search.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def plot_curve(record: dict, out: Path, title: str = "INT8 sketch encoder: fidelity vs latency") -> Path | None:
    """PNG of the trade-off curve (needs matplotlib, the ``plot`` extra); None when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    curve = record["curve"]
    x = [p["blocks"] for p in curve]
    chosen = record["chosen"]["blocks"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.2), dpi=110, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    top.plot(x, [p["top10_overlap"] * 100 for p in curve], "o-", label="top-10 overlap with fp32")
    top.plot(x, [p["top1_agreement"] * 100 for p in curve], "s--", label="top-1 agreement with fp32")
    top.axhline(fd.TARGETS["top10_overlap"] * 100, color="grey", lw=0.8, ls=":")
    top.axvline(chosen, color="red", lw=1, alpha=0.6, label=f"chosen: {chosen} blocks")
    top.set_ylabel("% of held-out prefixes")
    top.set_title(title, fontsize=10)
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="lower left")
    bottom.plot(x, [p["latency_ratio"] for p in curve], "d-", color="tab:green")
    bottom.axhline(fd.TARGETS["latency_ratio"], color="grey", lw=0.8, ls=":")
    bottom.axvline(chosen, color="red", lw=1, alpha=0.6)
    bottom.set_ylabel("latency / fp32")
    bottom.set_ylim(0, max(1.1, max(p["latency_ratio"] for p in curve) + 0.05))
    bottom.grid(alpha=0.3)
    bottom.set_xticks(x)
    bottom.set_xticklabels([f"+{p['added']}" for p in curve], rotation=60, ha="right", fontsize=7)
    bottom.set_xlabel("blocks quantised, cumulatively, least sensitive first (onnxruntime CPU)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
