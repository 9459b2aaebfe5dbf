"""The ``dcssa-rt eval`` and ``dcssa-rt calibrate-confidence`` commands, their options generated from
the jobs' options objects. Only click and those objects are imported at module level, so registering
the commands keeps ``import dcssa.runtime.cli`` light; the work is imported when a command runs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..evaluation import PROTOCOLS as PROTOCOL_CHOICES
from ..evaluation import STEP_KINDS as STEP_CHOICES
from ..evaluation import ConfidenceOptions, EvalOptions
from ..options import click_options, from_cli
from ..progress import Progress
from .options import bundle_option, gallery_option, output_options, runtime_options

__all__ = ["PROTOCOL_CHOICES", "STEP_CHOICES", "calibrate_confidence_command", "eval_command"]


@click.command("eval")
@click.option("--dataset", required=True, type=click.Path(path_type=Path),
              help="Dataset folder ROOT/DS in the QMUL layout: DS_Coordinate (pickle) and photo/<photo>.png; "
                   "with --format arnet, ROOT/<Name> holding trainA, trainB, testA, testB.")
@click_options(EvalOptions, only=["layout"])
@bundle_option()
@click_options(EvalOptions, only=["split", "protocol", "steps"])
@runtime_options()
@click.option("--compare", default=None, metavar="LIST",
              help="Run several precisions side by side, e.g. fp32,int8,openvino:bf16 (an item BACKEND:PRECISION also "
              "picks the backend); overrides --precision. Agreement is measured against the first fp32 run.")
@click_options(EvalOptions, only=["gallery"])
@click.option("--out", type=click.Path(path_type=Path), default=Path("eval-out"), show_default=True,
              help="Report folder (written atomically): eval.json, eval.md, rank_vs_progress.png, gallery/.")
@click_options(EvalOptions, only=["limit"])
@output_options(json="eval.json")
@click_options(EvalOptions, only=["force"])
def eval_command(dataset: Path, bundle: Path, backend: str, precision: str, compare: str | None, out: Path,
                 as_json: bool, quiet: bool, **settings) -> None:
    """Measure retrieval accuracy (acc@1/5/10, m@A, m@B, wm@A, wm@B) of a bundle on a dataset.

    Every sketch of the split is replayed step by step; after each step the rank of its target
    photo among the split's photos is recorded. Writes OUT/eval.json, OUT/eval.md (one row per
    backend/precision, with agreement against fp32) and OUT/rank_vs_progress.png.
    """
    from ..contract.bundle import DEMO_WARNING
    from .console import fail_cleanly

    with fail_cleanly():
        from ..contract.bundle import Bundle
        from ..evaluation import RunConfig
        from ..evaluation.report import EVAL_MD
        from ..evaluation.run import parse_compare, run_evaluation

        configs = parse_compare(compare, backend) if compare else (RunConfig(backend, precision),)
        options, _ = from_cli(EvalOptions, settings, configs=configs)
        b = Bundle.load(bundle)
        if b.demo and not as_json:
            click.echo(DEMO_WARNING, err=True)
        doc = run_evaluation(dataset, b, out, options, report=Progress(quiet or as_json))
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
@click_options(ConfidenceOptions, only=["layout"])
@bundle_option()
@gallery_option
@click_options(ConfidenceOptions, only=["fit_split", "holdout_split"])
@runtime_options()
@click.option("--out", type=click.Path(path_type=Path), default=Path("confidence-out"), show_default=True,
              help="Report folder (written atomically): confidence.json, confidence.md, reliability.png, early_stop.png.")
@click_options(ConfidenceOptions, only=["limit"])
@output_options(json="the report")
@click_options(ConfidenceOptions, only=["force"])
def calibrate_confidence_command(dataset: Path, bundle: Path, gallery: Path, out: Path, as_json: bool, quiet: bool,
                                 **settings) -> None:
    """Fit the per-stroke confidence (P(top-1 is the target), P(target in top 10)) and measure it.

    Replays the sketches of both splits stroke by stroke on the gallery (causal: what a user sees),
    fits one logistic model per probability on the fit split (scikit-learn) and stores it, with the
    rows it was fitted on, as GALLERY/confidence.json (the gallery it is for); queries and the server then report the
    probabilities. The held-out split gives the report: calibration against the raw top-1 score and
    the early-stop trade-off.
    """
    from ..contract.bundle import DEMO_WARNING
    from .console import fail_cleanly

    with fail_cleanly():
        from ..contract.bundle import Bundle
        from ..evaluation.fit_confidence import REPORT_MD, calibrate

        options, _ = from_cli(ConfidenceOptions, settings)  # settings hold --backend, --precision, --threads too
        b = Bundle.load(bundle)
        if b.demo and not as_json:
            click.echo(DEMO_WARNING, err=True)
        rep = calibrate(dataset, b, gallery, out, options, report=Progress(quiet or as_json))
    if as_json:
        click.echo(json.dumps(rep, indent=1))
        return
    md = (out / REPORT_MD).read_text()
    click.echo("\n".join(line for line in md.splitlines() if line.startswith(("|", "## "))))
    click.echo(f"calibrator written: {rep['calibrator']}; report: {out} ({', '.join(rep['files'])})")
