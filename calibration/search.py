"""Choosing the INT8 recipe by measurement, and the fidelity-vs-latency trade-off curve.

Three measurements, all against the fp32 pipeline on held-out stroke prefixes:

1. calibration method: quantise the default block set with MinMax, entropy and percentile ranges;
2. per-block sensitivity: quantise ONE block at a time (an Inception block, the stem pools, the
   attention projections) and see how far the embeddings and rankings move;
3. the curve: quantise blocks cumulatively, least sensitive first, measuring fidelity and latency at
   every step. The chosen recipe is the fastest point that keeps the objective (task accuracy within
   ``--max-drop``, or agreement targets with ``--objective agreement``, see
   :mod:`dcssa.calibration.task`); fidelity is never traded away for speed. When no point keeps it,
   the closest point is kept and the record says so.

Single-block task changes are mostly within the noise of a hundred sketches, so the sensitivity
ORDER is read from how far the rankings and embeddings move (top-10 overlap, cosine), on a subset
of the held-out sketches; every point of the curve is judged by the objective on all of them. The
curve stops early once ``patience`` points in a row miss the objective: later points only add
blocks that moved the rankings more.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from dcssa.calibration import fidelity as fd
from dcssa.calibration import task as T
from dcssa.calibration.int8 import (
    ATTENTION_BLOCKS,
    STEM_POOLS,
    TRUNK_BLOCKS,
    Int8Recipe,
    collect_ranges,
    quantize_int8,
    searchable_blocks,
)
from dcssa.calibration.options import CalibrationOptions
from dcssa.calibration.yardstick import Yardstick
from dcssa.runtime.extras import optional
from dcssa.runtime.plotting import agg_figure
from dcssa.runtime.progress import Say, silent

SEARCH_BLOCKS = (*TRUNK_BLOCKS, STEM_POOLS, "attention.proj")


def held_subset(yard: Yardstick, sketches: int | None) -> Yardstick:
    """The yardstick on at most ``sketches`` whole held-out sketches spread over the set, with their
    slice of the fp32 reference; ``yard`` itself when the set is that small already."""
    held, ref, gallery = yard.held, yard.ref, yard.gallery
    n = len(held.sketches)
    if sketches is None or n <= sketches:
        return yard
    keep = np.unique(np.linspace(0, n - 1, sketches).round().astype(int))
    sub = held.only(keep)
    rows = np.concatenate([np.nonzero(held.sketch == k)[0] for k in keep])
    emb = ref.embeddings[rows]
    targets = T.sketch_targets(sub, gallery.ids)
    task = None if targets is None else T.per_sketch(emb, sub, gallery.embeddings, targets)
    return dataclasses.replace(yard, held=sub, ref=fd.Reference(ref.features[rows], emb, ref.top[rows], targets, task))


@dataclass
class SearchContext:
    """One int8 target's recipe evaluations against the yardstick; range caches are computed once per method.

    ``symmetric`` is the activation encoding of the target (False: onnxruntime CPU, True: TensorRT);
    ``options`` give the latency rasters, the curve's patience and the sensitivity subset.
    """

    yard: Yardstick
    options: CalibrationOptions = field(default_factory=CalibrationOptions)
    symmetric: bool = False
    latency_repeats: int = 2
    on_batch: Callable[[int], None] = lambda _n: None
    caches: dict[str, Path] = field(default_factory=dict)

    def subset(self, sketches: int | None) -> SearchContext:
        """The same context on at most ``sketches`` held-out sketches spread over the set (for the
        sensitivity order); itself when the set is that small already."""
        yard = held_subset(self.yard, sketches)
        return self if yard is self.yard else dataclasses.replace(self, yard=yard)

    def cache(self, method: str) -> Path:
        if method not in self.caches:
            # MinMax ranges do not depend on the activation encoding; histogram methods do
            tag = "" if method == "minmax" else ("-sym" if self.symmetric else "-asym")
            path = self.yard.work / f"ranges-{method}{tag}.json"
            if not path.is_file():
                self.yard.say(f"calibrating ({method}) on {len(self.yard.calib)} stroke prefixes")
                collect_ranges(self.yard.fp32, self.yard.calib, method, path, symmetric=self.symmetric,
                               on_batch=self.on_batch)
            self.caches[method] = path
        return self.caches[method]

    def evaluate(self, recipe: Int8Recipe, *, latency: bool = True, keep: Path | None = None) -> dict:
        """Quantise with ``recipe`` and report its fidelity (and latency) against fp32."""
        y = self.yard
        out = keep or y.work / "candidate.onnx"
        summary = quantize_int8(y.fp32, out, recipe, self.cache(recipe.method), symmetric=self.symmetric)
        report = y.report(out, "int8", latency_rasters=self.options.latency_rasters if latency else 0,
                          latency_repeats=self.latency_repeats, on_batch=self.on_batch)
        report["recipe"] = recipe.record(symmetric=self.symmetric)
        report["quantisation"] = summary
        return report


#: task metrics a curve point keeps (the full record stays in the fidelity reports)
POINT_TASK_KEYS = ("drop", "drop_upper", "candidate", "reference")


def point(label: str, report: dict) -> dict:
    """The numbers of one report a search compares and records."""
    p = {
        "label": label,
        "embedding_cosine_mean": report["embedding_cosine"]["mean"],
        "embedding_cosine_min": report["embedding_cosine"]["min"],
        "feature_cosine_mean": report["feature_cosine"]["mean"],
        "top1_agreement": report["top1_agreement"],
        "top10_overlap": report["top10_overlap"],
    }
    if report.get("task"):
        p["task"] = {m: {k: v[k] for k in POINT_TASK_KEYS} for m, v in report["task"].items()}
    if "latency" in report:
        p["latency_ratio"] = report["latency"]["ratio"]
    p["meets_objective"] = report.get("meets_objective")
    return p


_point = point


def task_text(p: dict, objective: T.Objective) -> str:
    """The objective's metrics of a point, for progress lines."""
    if objective.effective(p) == "task":
        return " ".join(f"{m} drop<={p['task'][m]['drop_upper']:+.3f}" for m in objective.max_drop if m in p["task"])
    return f"top-1 {p['top1_agreement']:.1%} top-10 {p['top10_overlap']:.1%}"


def compare_methods(ctx: SearchContext, methods: Sequence[str], blocks: Sequence[str] = SEARCH_BLOCKS) -> list[dict]:
    out = []
    for m in methods:
        r = ctx.evaluate(Int8Recipe(method=m, blocks=list(blocks)), latency=False)
        out.append({"method": m, **point(m, r)})
        ctx.yard.say(f"  method {m:10s} top-1 {r['top1_agreement']:.1%} top-10 {r['top10_overlap']:.1%} "
                f"cosine {r['embedding_cosine']['mean']:.4f}")
    return out


def best_method(by_method: list[dict], objective: T.Objective) -> str:
    """The method whose all-blocks graph comes closest to the objective (then agreement, cosine)."""
    return max(by_method, key=lambda m: (objective.faithful(m), objective.closeness(m), m["top10_overlap"],
                                         m["top1_agreement"], m["embedding_cosine_mean"]))["method"]


def block_sensitivity(ctx: SearchContext, method: str, blocks: Sequence[str] = SEARCH_BLOCKS) -> list[dict]:
    """Fidelity with only one block quantised, for each block."""
    out = []
    for b in blocks:
        r = ctx.evaluate(Int8Recipe(method=method, blocks=[b]), latency=False)
        out.append({"block": b, **point(b, r)})
        ctx.yard.say(f"  only {b:16s} top-1 {r['top1_agreement']:.1%} top-10 {r['top10_overlap']:.1%} "
                f"cosine {r['embedding_cosine']['mean']:.4f}")
    return out


def sensitivity_order(sens: list[dict]) -> list[str]:
    """Blocks from least to most harmful (by top-10 overlap, then embedding cosine)."""
    return [s["block"] for s in sorted(sens, key=lambda s: (-s["top10_overlap"], -s["embedding_cosine_mean"]))]


def walk_curve(order: Sequence[str], evaluate: Callable[[list[str]], dict], objective: T.Objective,
               say: Say = silent, patience: int | None = CalibrationOptions.patience) -> list[dict]:
    """Reduce the first k blocks of ``order`` for k = 1.. (``evaluate(blocks)`` -> a curve point with
    latency); stop after ``patience`` consecutive points miss ``objective`` (None: never)."""
    curve, misses = [], 0
    for k in range(1, len(order) + 1):
        p = {"blocks": k, "added": order[k - 1], **evaluate(list(order[:k]))}
        curve.append(p)
        ok = objective.faithful(p)
        say(f"  {k:2d} blocks (+{order[k - 1]:14s}) {task_text(p, objective)} top-1 {p['top1_agreement']:.1%} "
            f"latency {p['latency_ratio']:.2f}x{'' if ok else '  [misses the objective]'}")
        misses = 0 if ok else misses + 1
        if patience is not None and misses >= patience and k < len(order):
            say(f"  stopped: {patience} points in a row miss the objective; the other "
                f"{len(order) - k} block(s) moved the rankings more")
            break
    return curve


def trade_off_curve(ctx: SearchContext, method: str, order: Sequence[str]) -> list[dict]:
    """Quantise the first k blocks of ``order`` for k = 1..len(order): fidelity and latency each time."""
    def evaluate(blocks: list[str]) -> dict:
        return point(f"{len(blocks)} blocks", ctx.evaluate(Int8Recipe(method=method, blocks=blocks)))

    return walk_curve(order, evaluate, ctx.yard.objective, ctx.yard.say, ctx.options.patience)


def choose(curve: list[dict], objective: T.Objective | None = None) -> tuple[dict, bool]:
    """(point, meets_objective). Fidelity first -- speed is only worth having if the objective holds:
    the fastest point that keeps it, else the point closest to keeping it."""
    objective = objective or T.Objective("agreement")
    faithful = [p for p in curve if objective.faithful(p)]
    if faithful:
        return min(faithful, key=lambda p: p["latency_ratio"]), True
    return max(curve, key=lambda p: (objective.closeness(p), -p["latency_ratio"])), False


def choose_or_closest(points: list[dict], curve: list[dict], objective: T.Objective, say: Say, kind: str, *,
                      mark_blocks: bool = False) -> tuple[dict, bool]:
    """:func:`choose` among ``points``, saying so (with the ``curve`` as a table) when no point keeps the
    objective and the closest one is kept instead."""
    chosen, ok = choose(points, objective)
    if not ok:
        blocks = f", {chosen['blocks']} blocks" if mark_blocks else ""
        table = trade_off_table(curve, objective, chosen["blocks"] if mark_blocks else None)
        say(f"NO {kind} plan keeps the objective ({objective.describe()}); kept the closest{blocks}:\n{table}")
    return chosen, ok


def trade_off_table(curve: list[dict], objective: T.Objective, chosen: int | None = None) -> str:
    """The curve as a Markdown table (printed when no point keeps the objective)."""
    metrics = [m for m in objective.max_drop if curve and m in curve[0].get("task", {})]
    head = ["blocks", "added", *[f"{m} drop (upper)" for m in metrics], "top-1 agr.", "top-10 ovl.", "latency"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in curve:
        mark = " (chosen)" if p["blocks"] == chosen else ""
        cells = [f"{p['blocks']}{mark}", p["added"], *[f"{p['task'][m]['drop']:+.3f} ({p['task'][m]['drop_upper']:+.3f})"
                                                      for m in metrics],
                 f"{p['top1_agreement']:.1%}", f"{p['top10_overlap']:.1%}", f"{p['latency_ratio']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_search(ctx: SearchContext, methods: Sequence[str] | None = None, blocks: Sequence[str] | None = None) -> dict:
    """Methods, then sensitivity and the curve with the best method; returns the whole record.

    ``methods``: those to compare [default: the options']; ``blocks``: those to try [default: every
    searchable block of the fp32 graph, see :func:`~dcssa.calibration.int8.searchable_blocks`].
    """
    import time

    t0, y = time.perf_counter(), ctx.yard
    if blocks is None:
        blocks = searchable_blocks(onnx.load(str(y.fp32), load_external_data=False))
    y.say(f"recipe search, objective: {y.objective.describe()}")
    y.say("recipe search: calibration methods (every block quantised)")
    by_method = compare_methods(ctx, ctx.options.methods if methods is None else methods, blocks)
    best = best_method(by_method, y.objective)
    small = ctx.subset(ctx.options.sensitivity_sketches)
    y.say(f"recipe search: per-block sensitivity ({best}, {len(small.yard.held.sketches)} held-out sketches)")
    sens = block_sensitivity(small, best, blocks)
    order = sensitivity_order(sens)
    y.say("recipe search: trade-off curve (least sensitive blocks first)")
    curve = trade_off_curve(ctx, best, order)
    chosen, ok = choose_or_closest(curve, curve, y.objective, y.say, "int8", mark_blocks=True)
    recipe = Int8Recipe(method=best, blocks=list(order[: chosen["blocks"]]))
    record = {
        "objective": y.objective.record(),
        "methods": by_method,
        "sensitivity": sens,
        "sensitivity_sketches": len(small.yard.held.sketches),
        "order": order,
        "curve": curve,
        "chosen": {"blocks": chosen["blocks"], "meets_objective": ok, "meets_targets": ok,
                   "recipe": recipe.record(symmetric=ctx.symmetric)},
        "float_blocks": [b for b in (*blocks, *ATTENTION_BLOCKS) if not recipe.covers(b)],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (y.work / "search.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def plot_curve(record: dict, out: Path, title: str = "INT8 sketch encoder: fidelity vs latency",
               xlabel: str = "blocks quantised, cumulatively, least sensitive first (onnxruntime CPU)") -> Path | None:
    """PNG of the trade-off curve (needs matplotlib, the ``plot`` extra); None when it is missing.

    With the task objective the upper panel shows each bounded metric's drop (upper bound) against
    its limit; with agreement, top-1 agreement and top-10 overlap against their targets.
    """
    if optional("matplotlib") is None:
        return None
    curve = record["curve"]
    if not curve:
        return None
    obj = record.get("objective") or {"kind": "agreement", "max_drop": {}, "agreement_targets": T.AGREEMENT_TARGETS}
    x = [p["blocks"] for p in curve]
    chosen = record["chosen"]["blocks"]
    fig = agg_figure((8, 6.2), "the trade-off curve", layout=None, dpi=110)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    if obj["kind"] == "task" and all(p.get("task") for p in curve):
        for (m, lim), style in zip(obj["max_drop"].items(), ("o-", "s--", "d-.", "^:")):
            line, = top.plot(x, [p["task"][m]["drop_upper"] for p in curve], style, label=f"{m} drop, 95% upper bound")
            top.axhline(lim, color=line.get_color(), lw=0.8, ls=":", label=f"{m} limit {lim:g}")
        top.axhline(0, color="black", lw=0.5)
        top.set_ylabel("loss against fp32 (held-out sketches)")
    else:
        top.plot(x, [p["top10_overlap"] * 100 for p in curve], "o-", label="top-10 overlap with fp32")
        top.plot(x, [p["top1_agreement"] * 100 for p in curve], "s--", label="top-1 agreement with fp32")
        top.axhline(obj.get("agreement_targets", T.AGREEMENT_TARGETS)["top10_overlap"] * 100, color="grey", lw=0.8, ls=":")
        top.set_ylabel("% of held-out prefixes")
    top.axvline(chosen, color="red", lw=1, alpha=0.6, label=f"chosen: {chosen} blocks")
    top.set_title(title, fontsize=10)
    top.grid(alpha=0.3)
    top.legend(fontsize=7, loc="best")
    bottom.plot(x, [p["latency_ratio"] for p in curve], "d-", color="tab:green")
    bottom.axvline(chosen, color="red", lw=1, alpha=0.6)
    bottom.set_ylabel("latency / fp32")
    bottom.set_ylim(0, max(1.1, max(p["latency_ratio"] for p in curve) + 0.05))
    bottom.grid(alpha=0.3)
    bottom.set_xticks(x)
    bottom.set_xticklabels([f"+{p['added']}" for p in curve], rotation=60, ha="right", fontsize=7)
    bottom.set_xlabel(xlabel)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
