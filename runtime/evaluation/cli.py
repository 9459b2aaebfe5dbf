"""The ``dcssa-rt eval`` command. Only click is imported at module level, so registering the
command keeps ``import dcssa.runtime.cli`` light; the work is imported when the command runs."""

from __future__ import annotations

import json
from pathlib import Path

import click

# Literal copies of protocols.PROTOCOLS / STEP_KINDS (a test checks they agree).
PROTOCOL_CHOICES = ("causal", "paper")
STEP_CHOICES = ("strokes", "points20")


@click.command("eval")
@click.option("--dataset", required=True, type=click.Path(path_type=Path),
              help="Dataset folder ROOT/DS in the QMUL layout: DS_Coordinate (pickle) and photo/<photo>.png.")
@click.option("--bundle", type=click.Path(path_type=Path), envvar="DCSSA_BUNDLE", default=Path("dcssa-bundle"),
              show_default=True, help="Bundle folder (or $DCSSA_BUNDLE).")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Sketches whose key contains this word; the gallery is the photos they target.")
@click.option("--protocol", type=click.Choice(PROTOCOL_CHOICES), default="causal", show_default=True,
              help="causal: what a live user gets (stroke session, prefix by prefix); paper: the authors' "
              "non-causal protocol and their metric code, reported beside corrected values.")
@click.option("--steps", type=click.Choice(STEP_CHOICES), default=None,
              help="Partial sketches cut at pen-up (strokes) or the authors' 20 point slices (points20) "
              "[default: strokes for causal, points20 for paper; paper needs points20].")
@click.option("--backend", default="auto", show_default=True, help="Backend: auto, ort-cpu, ort-cuda, ort-trt, tensorrt, openvino.")
@click.option("--precision", default="fp32", show_default=True,
              help="Graph precision present in the bundle, or bf16 (an openvino execution mode).")
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
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
@click.option("--force", is_flag=True, help="Replace an existing OUT folder.")
@click.option("--json", "as_json", is_flag=True, help="Print eval.json on stdout (no progress bar).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def eval_command(dataset: Path, bundle: Path, split: str, protocol: str, steps: str | None, backend: str,
                 precision: str, compare: str | None, gallery: Path | None, out: Path, limit: int | None,
                 threads: int | None, force: bool, as_json: bool, quiet: bool) -> None:
    """Measure retrieval accuracy (acc@1/5/10, m@A, m@B, wm@A, wm@B) of a bundle on a dataset.

    Every sketch of the split is replayed step by step; after each step the rank of its target
    photo among the split's photos is recorded. Writes OUT/eval.json, OUT/eval.md (one row per
    backend/precision, with agreement against fp32) and OUT/rank_vs_progress.png.
    """
    from ..cli_util import DEMO_WARNING, fail_cleanly

    if protocol == "paper" and steps == "strokes":
        raise click.BadParameter("the paper protocol slices by points: use points20 (or --protocol causal)",
                                 param_hint="--steps")
    with fail_cleanly():
        from ..bundle import Bundle
        from .pipeline import RunConfig, parse_compare, run_evaluation
        from .report import EVAL_MD

        b = Bundle.load(bundle)
        configs = parse_compare(compare, backend) if compare else [RunConfig(backend, precision)]
        if b.demo and not as_json:
            click.echo(DEMO_WARNING, err=True)
        doc = run_evaluation(
            dataset, b, out, split=split, protocol=protocol, steps=steps, configs=configs, gallery=gallery,
            threads=threads, limit=limit, force=force, progress=not (as_json or quiet),
            warn=lambda m: click.echo(f"warning: {m}", err=True),
        )
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    md = (out / EVAL_MD).read_text()
    table = [line for line in md.splitlines() if line.startswith(("|", "## "))]
    click.echo("\n".join(table))
    click.echo(f"report written: {out} ({', '.join(doc['files'])})")
