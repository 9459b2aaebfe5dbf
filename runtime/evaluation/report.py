"""The evaluation report: eval.json (everything), eval.md (the table) and rank_vs_progress.png.

matplotlib is optional (the ``report`` extra): without it the plot is skipped with a warning and
the numbers are still written. The figure is drawn on a bare Agg canvas, never through pyplot, so
no GUI backend or global state is touched.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..contract.bundle import DEMO_WARNING
from ..errors import MissingExtra
from ..plotting import agg_figure
from ..progress import SILENT, Reporter
from .metrics import METRIC_KEYS

EVAL_JSON = "eval.json"
EVAL_MD = "eval.md"
PLOT = "rank_vs_progress.png"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def _rows(doc: dict, key: str, agreement: bool) -> list[str]:
    head = ["run", *METRIC_KEYS]
    if agreement:
        head += [f"top-1 = {doc.get('reference_label', 'fp32')}", f"top-{doc['topk']} overlap"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in doc["runs"]:
        values = run["metrics"] if key == "metrics" else run["published"]["metrics"]
        cells = [run["label"], *(_pct(values[k]) for k in METRIC_KEYS)]
        if agreement:
            a = run.get("agreement")
            cells += [_pct(a["top1_identical"]), _pct(a[f"top{doc['topk']}_overlap"])] if a else ["n/a", "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _png_rows(doc: dict) -> list[str]:
    """ARNet's layout: the authors' acc@K of the sketch PNGs, one row per run."""
    ds = doc["dataset"]
    rules = ", ".join(f"{n} by {rule}" for rule, n in ds.get("pairing", {}).items() if n) or "none"
    lines = ["## Sketch PNGs (the authors' get_acc)", "",
             f"{ds['png_sketches']} PNG sketches of {ds['split']}A against the {ds['gallery_photos']} photos of "
             f"{ds['split']}B; pairing: {rules}; {ds.get('unmatched_pngs', 0)} unmatched PNG(s) skipped.", "",
             "| run | acc@1 | acc@5 | acc@10 |", "|---|---|---|---|"]
    for run in doc["runs"]:
        m = run["png"]["metrics"]
        lines.append(f"| {run['label']} | {m['acc@1']:.2f} | {m['acc@5']:.2f} | {m['acc@10']:.2f} |")
    return lines + [""]


def markdown(doc: dict) -> str:
    """eval.md: one row per backend/precision, values in percent."""
    ds, runs = doc["dataset"], doc["runs"]
    ref = next((r["agreement"]["reference"] for r in runs if r.get("agreement")), None)
    doc = {**doc, "reference_label": ref or "fp32"}
    lines = [f"# dcssa-rt eval: {ds['name']}, {ds['split']} split", ""]
    if doc["bundle"]["demo"]:
        lines += [f"> {DEMO_WARNING}", ""]
    if ds.get("synthetic"):
        lines += ["> The dataset is SYNTHETIC (`dcssa-rt make-dataset`): these numbers say nothing about real catalogues.", ""]
    if any("png" in r for r in runs):
        lines += _png_rows(doc)
    if not any("metrics" in r for r in runs):
        lines += ["", f"No stroke data ({Path(ds['coordinate_file']).name} is absent): the on-the-fly curves need it.", ""]
        return "\n".join(lines) + "\n"
    lines += [
        f"Protocol **{doc['protocol']}**, steps **{doc['steps']}**: {ds['sketches']} sketches ranked against "
        f"{ds['gallery_photos']} photos. Bundle `{doc['bundle']['path']}`, "
        f"{doc['bundle'].get('family', 'dcssa')}"
        f"{'' if doc['bundle']['phase'] is None else ' phase ' + str(doc['bundle']['phase'])}.",
        "",
        "Values in %. acc@K: target within the top K after the last step; m@A / m@B: mean percentile / "
        "mean 1/rank over steps; wm@A / wm@B: the same weighted by exp(1 - t/T)/e"
        + (f"; agreement columns: share of steps whose top-1 (top-{doc['topk']} set) matches {ref}." if ref else "."),
        "",
    ]
    if doc["protocol"] == "paper":
        lines += ["## Corrected values", ""]
    lines += _rows(doc, "metrics", agreement=True)
    changed = [r for r in runs if r.get("task_change")]
    if changed:
        lines += ["", f"## Task change against {changed[0]['task_change']['reference']}", "",
                  "Loss against the reference on the same sketches (positive = worse), with the one-sided 95% upper "
                  "bound of a paired bootstrap over sketches: what `dcssa-export calibrate` judges plans by.", "",
                  "| run | m@B drop (upper) | acc@10 drop (upper) | acc@1 drop (upper) | sketches changed (m@B) |",
                  "|---|---|---|---|---|"]
        for r in changed:
            t = r["task_change"]["metrics"]
            cells = [f"{t[m]['drop']:+.4f} ({t[m]['drop_upper']:+.4f})" for m in ("m@B", "acc@10", "acc@1")]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {t['m@B']['sketches_changed']} |")
    if doc["protocol"] == "paper":
        lines += ["", "## As the published evaluation code computes them", "",
                  "For comparison with published tables only: wm@A / wm@B are running averages over sketches "
                  "and the step weights come from the first sketch.", ""]
        lines += _rows(doc, "published", agreement=False)
        notes = sorted({n for r in runs for n in r["published"]["notes"]})
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
    lines += ["", *(f"- {n}" for n in doc["notes"]), ""]
    if PLOT in doc.get("files", []):
        lines += [f"![rank vs sketch completion]({PLOT})", ""]
    return "\n".join(lines)


def plot_progress(doc: dict, path: Path) -> None:
    """Mean 1/rank and mean percentile against sketch completion, one line per run."""
    fig = agg_figure((10, 4.2), f"the plot {PLOT}")
    axes = fig.subplots(1, 2)
    for run in doc["runs"]:
        c = run["curve"]
        pts = [(100 * x, y, z) for x, y, z in zip(c["completion"], c["mean_inverse_rank"], c["mean_percentile"]) if y is not None]
        xs = [p[0] for p in pts]
        axes[0].plot(xs, [p[1] for p in pts], marker="o", markersize=3, label=run["label"])
        axes[1].plot(xs, [p[2] for p in pts], marker="o", markersize=3, label=run["label"])
    for ax, name in zip(axes, ("mean 1/rank (m@B per step)", "mean percentile (m@A per step)")):
        ax.set_xlabel("sketch completion (% of points drawn)")
        ax.set_ylabel(name)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    ds = doc["dataset"]
    title = f"{ds['name']} {ds['split']}: {ds['sketches']} sketches, {ds['gallery_photos']} photos, {doc['protocol']} protocol, {doc['steps']} steps"
    if doc["bundle"]["demo"]:
        title += " (DEMO weights)"
    fig.suptitle(title, fontsize="medium")
    fig.savefig(path, dpi=110)


def write_report(folder: Path, doc: dict, *, report: Reporter = SILENT) -> list[str]:
    """Write the three files into ``folder``; returns the names written (the plot needs matplotlib)."""
    files = [EVAL_JSON, EVAL_MD]
    try:
        if any("curve" in r for r in doc["runs"]):
            plot_progress(doc, folder / PLOT)
            files.append(PLOT)
    except MissingExtra:
        msg = f"{PLOT} not written: matplotlib is missing (pip install 'dcssa-rt[report]')"
        report.warn(msg)
        doc["notes"].append(msg)
    doc["files"] = files
    (folder / EVAL_MD).write_text(markdown(doc))
    (folder / EVAL_JSON).write_text(json.dumps(doc, indent=1) + "\n")
    return files
