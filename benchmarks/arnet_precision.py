"""`dcssa-bench arnet-precision`: every reduced-precision plan of an ARNet (ViT) bundle judged by the task.

The command line and the table only; the sweep itself (benchmarks/arnet_sweep.py) imports the
calibration package, so it is loaded when `run` runs: `dcssa-bench` loads this module for every
command, gpu-check's first seconds on a machine without a GPU included.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .arnet_cells import ALPHAS, PRIORITY

LABELS = {"old-default": "default recipe before issue 34 (percentile, MatMul in/outputs)",
          "transformer": "transformer recipe (weight MatMuls, outputs float)", "dynamic": "onnxruntime dynamic int8",
          "nncf-sq-off": "NNCF TRANSFORMER, SmoothQuant off", "reparam": "LayerNorm reparameterised + per-tensor",
          "weight-only": "weight-only int8", "bf16": "bf16 (OpenVINO)", "fp16": "fp16 (GPU plan; onnxruntime CPU)",
          **{k: f"NNCF TRANSFORMER, SmoothQuant {v:g}" for k, v in ALPHAS.items() if v > 0}}


def _drop(task: dict, metric: str) -> str:
    t = task.get(metric)
    return "-" if t is None else f"{t['drop']:+.3f} (<= {t['drop_upper']:+.3f})"


def _ratio(lat: dict | None) -> str:
    return "-" if not lat or "ratio" not in lat else f"{lat['ratio']:.2f}"


def row(cell: str, variant: str, rep: dict | None) -> str:
    label = LABELS.get(cell, cell)
    if rep is None:
        return f"| {label} | {variant} | not measured | | | | | | |"
    if rep.get("status") != "measured":
        return f"| {label} | {variant} | {rep.get('status')}: {rep.get('reason', '')} | | | | | | |"
    task = rep.get("task", {})
    return (f"| {label} | {variant} | {_drop(task, 'm@B')} | {_drop(task, 'acc@10')} | {rep['top1_agreement']:.1%} | "
            f"{rep['embedding_cosine']['mean']:.4f} | {_ratio(rep.get('latency'))} | {_ratio(rep.get('latency_openvino'))} | "
            f"{'yes' if rep.get('meets_objective') else 'no'} |")


@click.group("arnet-precision")
def cli() -> None:
    """The ARNet (ViT) precision sweep: every int8/fp16 candidate x bundle variant judged by the task (run),
    and its Markdown table (table)."""


@cli.command("run")
@click.option("--bundle", "bundles", multiple=True, required=True,
              help="NAME=BUNDLE: an ARNet bundle and the name its column takes (repeat: plain=..., outliers=...).")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Dataset folder with held-out tracings.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for arnet-precision.json (rewritten after every cell; a rerun resumes) and the graphs.")
@click.option("--max-heldout", type=int, default=620, show_default=True, help="Held-out prefixes judged per cell.")
@click.option("--max-calib", type=int, default=32, show_default=True, help="Calibration prefixes.")
@click.option("--cells", default=",".join(PRIORITY), show_default=True, help="Candidates, most informative first.")
@click.option("--methods", default="minmax,percentile", show_default=True,
              help="Calibrators the transformer recipe chooses among (percentile's histograms are costly on ViT-B).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Intra-op threads of onnxruntime and OpenVINO [default: all cores].")
def run(bundles: tuple[str, ...], data: Path, out: Path, max_heldout: int, max_calib: int, cells: str,
        methods: str, threads: int | None) -> None:
    """Measure the cells in priority order across the bundles; the record is rewritten after each one."""
    from dcssa.benchmarks.arnet_sweep import run_sweep

    run_sweep(bundles, data, out, max_heldout, max_calib, cells, methods, threads)


def compact_cell(rep: dict | None) -> str:
    """One variant's result in a few characters: upper bounds of the two drops, agreement, cosine,
    latency / fp32 on OpenVINO then onnxruntime, and whether it keeps the bounds."""
    if rep is None:
        return "not measured"
    if rep.get("status") != "measured":
        return f"{rep.get('status')}: {str(rep.get('reason', '')).split('(')[0].strip()}"
    task = rep.get("task", {})
    up = "/".join(f"{task[m]['drop_upper']:+.4f}" if m in task else "-" for m in ("m@B", "acc@10"))
    lat = "/".join(_ratio(rep.get(k)) for k in ("latency_openvino", "latency"))
    return (f"{up}; {rep['top1_agreement']:.0%}; {rep['embedding_cosine']['mean']:.3f}; {lat}; "
            f"{'**yes**' if rep.get('meets_objective') else 'no'}")


@cli.command("table")
@click.argument("records", nargs=-1, type=click.Path(path_type=Path, exists=True))
@click.option("--compact", is_flag=True, help="One row per candidate, one column per variant (the README's table).")
def table(records: tuple[Path, ...], compact: bool) -> None:
    """Markdown rows of every candidate x variant in RECORDS (arnet-precision.json files)."""
    variants: dict[str, dict] = {}
    for path in records:
        variants.update(json.loads(path.read_text())["variants"])
    if compact:
        click.echo("| plan | " + " | ".join(variants) + " |")
        click.echo("|---|" + "---|" * len(variants))
        for cell in LABELS:
            click.echo(f"| {LABELS[cell]} | " + " | ".join(compact_cell(v["cells"].get(cell)) for v in variants.values()) + " |")
        return
    click.echo("| plan | ViT-B variant | m@B drop (upper 95%) | finished acc@10 drop (upper 95%) | top-1 agreement | "
               "cosine to fp32 | latency / fp32, onnxruntime | latency / fp32, OpenVINO | keeps the bounds |")
    click.echo("|---|---|---|---|---|---|---|---|---|")
    for cell in LABELS:
        for name, v in variants.items():
            click.echo(row(cell, name, v["cells"].get(cell)))
    for name, v in variants.items():
        click.echo(noise_rows(name, v["cells"].get("noise-floor")))


def noise_rows(variant: str, rep: dict | None) -> str:
    """The fp32 noise floor: fp32 on the same strokes moved by a pixel, as drops beside the plans'."""
    if rep is None or rep.get("status") != "measured":
        return f"| fp32 noise floor (strokes moved by a pixel) | {variant} | not measured | | | | | | |"
    return "\n".join(f"| fp32 noise floor (strokes {kind}) | {variant} | {_drop(r.get('task', {}), 'm@B')} | "
                     f"{_drop(r.get('task', {}), 'acc@10')} | {r['top1_agreement']:.1%} | "
                     f"{r['embedding_cosine']['mean']:.4f} | | | |" for kind, r in rep["perturbations"].items())


#: ``dcssa-bench arnet-precision``
command = cli

if __name__ == "__main__":
    cli()
