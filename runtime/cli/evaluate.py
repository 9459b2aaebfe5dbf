"""The ``dcssa-rt eval`` command. Only click is imported at module level, so registering the
command keeps ``import dcssa.runtime.cli`` light; the work is imported when the command runs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import bundle_option, gallery_option, output_options, runtime_options

# Literal copies of protocols.PROTOCOLS / STEP_KINDS (a test checks they agree).
PROTOCOL_CHOICES = ("causal", "paper")
STEP_CHOICES = ("strokes", "points20")


@click.command("eval")
@click.option("--dataset", required=True, type=click.Path(path_type=Path),
              help="Dataset folder ROOT/DS in the QMUL layout: DS_Coordinate (pickle) and photo/<photo>.png; "
                   "with --format arnet, ROOT/<Name> holding trainA, trainB, testA, testB.")
@click.option("--format", "layout", type=click.Choice(["qmul", "arnet"]), default="qmul", show_default=True,
              help="arnet: ARNet's layout (A = sketch PNGs x_?.png or x_??.png, B = photos): the authors' acc@1/5/10, "
                   "and the on-the-fly curves when <Name>_Coordinate holds the strokes.")
@bundle_option()
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Sketches whose key contains this word; the gallery is the photos they target.")
@click.option("--protocol", type=click.Choice(PROTOCOL_CHOICES), default="causal", show_default=True,
              help="causal: what a live user gets (stroke session, prefix by prefix); paper: the authors' "
              "non-causal protocol and their metric code, reported beside corrected values.")
@click.option("--steps", type=click.Choice(STEP_CHOICES), default=None,
              help="Partial sketches cut at pen-up (strokes) or the authors' 20 point slices (points20) "
              "[default: strokes for causal, points20 for paper; paper needs points20].")
@runtime_options()
@click.option("--compare", default=None, metavar="LIST",
              help="Run several precisions side by side, e.g. fp32,int8,openvino:bf16 (an item BACKEND:PRECISION also "
              "picks the backend); overrides --precision. Agreement is measured against the first fp32 run.")
@click.option("--gallery", type=click.Path(path_type=Path), default=None,
              help="Photo gallery to reuse when this bundle's photo encoder built it from the dataset's photo "
              "folder [default: OUT/gallery]; otherwise one is built into OUT/gallery.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("eval-out"), show_default=True,
              help="Report folder (written atomically): eval.json, eval.md, rank_vs_progress.png, gallery/.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Evaluate only the first N sketches (the gallery keeps every photo of the split).")
@output_options(json="eval.json", force="OUT folder")
def eval_command(dataset: Path, layout: str, bundle: Path, split: str, protocol: str, steps: str | None, backend: str,
                 precision: str, threads: int | None, compare: str | None, gallery: Path | None, out: Path,
                 limit: int | None, as_json: bool, quiet: bool, force: bool) -> None:
    """Measure retrieval accuracy (acc@1/5/10, m@A, m@B, wm@A, wm@B) of a bundle on a dataset.

    Every sketch of the split is replayed step by step; after each step the rank of its target
    photo among the split's photos is recorded. Writes OUT/eval.json, OUT/eval.md (one row per
    backend/precision, with agreement against fp32) and OUT/rank_vs_progress.png.
    """
    from ..contract.bundle import DEMO_WARNING
    from .console import fail_cleanly, warn

    if protocol == "paper" and steps == "strokes":
        raise click.BadParameter("the paper protocol slices by points: use points20 (or --protocol causal)",
                                 param_hint="--steps")
    with fail_cleanly():
        from ..contract.bundle import Bundle
        from ..evaluation.report import EVAL_MD
        from ..evaluation.run import RunConfig, parse_compare, run_evaluation

        b = Bundle.load(bundle)
        configs = parse_compare(compare, backend) if compare else [RunConfig(backend, precision)]
        if b.demo and not as_json:
            click.echo(DEMO_WARNING, err=True)
        doc = run_evaluation(
            dataset, b, out, split=split, protocol=protocol, steps=steps, configs=configs, gallery=gallery,
            threads=threads, limit=limit, force=force, progress=not (quiet or as_json), warn=warn, layout=layout,
        )
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    md = (out / EVAL_MD).read_text()
    table = [line for line in md.splitlines() if line.startswith(("|", "## "))]
    click.echo("\n".join(table))
    click.echo(f"report written: {out} ({', '.join(doc['files'])})")


@click.command("calibrate-confidence")
@click.option("--dataset", required=True, type=click.Path(path_type=Path),
              help="Dataset folder ROOT/DS whose photos the gallery indexes (sketches with ground truth, as strokes).")
@click.option("--format", "layout", type=click.Choice(["qmul", "arnet"]), default="qmul", show_default=True,
              help="arnet: ARNet's layout, strokes from <Name>_Coordinate beside it; index trainB and testB together.")
@bundle_option()
@gallery_option
@click.option("--fit-split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Sketches the calibrator is fitted on.")
@click.option("--holdout-split", type=click.Choice(["train", "test"]), default="test", show_default=True,
              help="Held-out sketches it is measured on (reliability, ECE, Brier, early stop).")
@runtime_options()
@click.option("--out", type=click.Path(path_type=Path), default=Path("confidence-out"), show_default=True,
              help="Report folder (written atomically): confidence.json, confidence.md, reliability.png, early_stop.png.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N sketches of each split.")
@output_options(json="the report", force="OUT folder and the gallery's calibrator")
def calibrate_confidence_command(dataset: Path, layout: str, bundle: Path, gallery: Path, fit_split: str, holdout_split: str,
                                 backend: str, precision: str, threads: int | None, out: Path, limit: int | None,
                                 as_json: bool, quiet: bool, force: bool) -> None:
    """Fit the per-stroke confidence (P(top-1 is the target), P(target in top 10)) and measure it.

    Replays the sketches of both splits stroke by stroke on the gallery (causal: what a user sees),
    fits one logistic model per probability on the fit split (scikit-learn) and stores it, with the
    rows it was fitted on, as GALLERY/confidence.json (the gallery it is for); queries and the server then report the
    probabilities. The held-out split gives the report: calibration against the raw top-1 score and
    the early-stop trade-off.
    """
    from ..contract.bundle import DEMO_WARNING
    from .console import fail_cleanly, warn

    with fail_cleanly():
        from ..contract.bundle import Bundle
        from ..evaluation.fit_confidence import REPORT_MD, calibrate

        b = Bundle.load(bundle)
        if b.demo and not as_json:
            click.echo(DEMO_WARNING, err=True)
        rep = calibrate(dataset, b, gallery, out,
                        fit_split=fit_split, holdout_split=holdout_split, layout=layout, backend=backend, precision=precision,
                        threads=threads, limit=limit, force=force, progress=not (quiet or as_json), warn=warn)
    if as_json:
        click.echo(json.dumps(rep, indent=1))
        return
    md = (out / REPORT_MD).read_text()
    click.echo("\n".join(line for line in md.splitlines() if line.startswith(("|", "## "))))
    click.echo(f"calibrator written: {rep['calibrator']}; report: {out} ({', '.join(rep['files'])})")
