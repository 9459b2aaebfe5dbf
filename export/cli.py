"""``dcssa-export``: checkpoint -> verified bundle, and demo checkpoints.

The group itself exports (``--ckpt``); its subcommands are standalone ``click.command``s registered
from :data:`COMMANDS`, with the option groups of :mod:`dcssa.runtime.cli.options`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dcssa.calibration.commands import calibrate, engines, one_shot_options
from dcssa.calibration.options import DATA_HELP
from dcssa.export.defaults import DEFAULT_ARNET_EMBED, DEFAULT_EMBED, DEFAULT_HEADS
from dcssa.runtime.cli.console import fail_cleanly, stdout_for_json
from dcssa.runtime.cli.options import output_options
from dcssa.runtime.contract.bundle import DEMO_WARNING
from dcssa.runtime.contract.recipes import ARNET_LINE_WIDTH, ARNET_SKETCH_CANVAS
from dcssa.runtime.progress import Progress


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--ckpt", "ckpt", multiple=True, type=click.Path(path_type=Path),
              help="Checkpoint: a phase-2 or phase-1 .pth file, a folder with the phase-1 split trio, "
                   "or --ckpt given three times for the trio.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("dcssa-bundle"), show_default=True,
              help="Bundle folder to write.")
@click.option("--family", type=click.Choice(["dcssa", "arnet"]), default=None,
              help="Model family; default: detected from the checkpoint's keys.")
@click.option("--num-heads", type=click.IntRange(1), default=None,
              help=f"Attention heads the model was trained with (cannot be read from the weights) "
                   f"[default: DC-SSA {DEFAULT_HEADS}; ARNet ViT width / 64, i.e. 12 for ViT-B].")
@click.option("--phase", type=click.Choice(["1", "2"]), default=None,
              help="DC-SSA: force phase 1 (no stroke head) or 2; default: detected from the keys.")
@click.option("--sketch-canvas", type=click.IntRange(3), default=None,
              help=f"ARNet: side of the canvas live strokes are drawn on, in pixels, to match your training "
                   f"sketch PNGs [default: {ARNET_SKETCH_CANVAS}].")
@click.option("--line-width", type=click.IntRange(1, 31), default=None,
              help=f"ARNet: stroke width in canvas pixels (odd) [default: {ARNET_LINE_WIDTH}].")
@output_options(json="the manifest", force="bundle folder")
@click.option("--precision", default="fp32", show_default=True,
              help="Comma list of fp32, fp16, int8: reduced precisions are calibrated on --calib right after export.")
@click.option("--calib", default=None, help=f"Data for --precision. {DATA_HELP}")
@one_shot_options
@click.pass_context
def main(ctx: click.Context, ckpt: tuple[Path, ...], out: Path, family: str | None, num_heads: int | None,
         phase: str | None, sketch_canvas: int | None, line_width: int | None,
         as_json: bool, quiet: bool, force: bool, precision: str, calib: str | None, **calibration) -> None:
    """Export a trained DC-SSA or ARNet checkpoint to a verified ONNX bundle the runtime can serve.

    \b
    dcssa-export --ckpt best_top5_model.pth            # DC-SSA -> ./dcssa-bundle
    dcssa-export --ckpt phase1_folder/ --out b1        # DC-SSA phase-1 split trio
    dcssa-export --ckpt model_Best.pth --out arnet     # ARNet (family detected from the keys)
    dcssa-export demo-checkpoint demo.pth              # structured demo checkpoint
    """
    if ctx.invoked_subcommand is not None:
        return
    if not ckpt:
        click.echo(ctx.get_help())
        ctx.exit(2)
    from dcssa.calibration.commands import check_precision_args, export_precisions
    from dcssa.calibration.options import CalibrationOptions
    from dcssa.export.job import export_bundle
    from dcssa.runtime.options import from_cli

    say = Progress(quiet or as_json)
    with fail_cleanly(), stdout_for_json(as_json):
        options, _ = from_cli(CalibrationOptions, calibration)  # --recipe, --photos, --gallery
        # before the export, not after 40 s of it
        check_precision_args(precision, calib, photos=options.photos, gallery=options.fidelity_gallery)
        if line_width is not None and line_width % 2 == 0:
            raise click.BadParameter(f"{line_width} is even: lines are drawn symmetrically about the stroke",
                                     param_hint="--line-width")
        manifest = export_bundle(list(ckpt), out, num_heads=num_heads, phase=int(phase) if phase else None,
                                 family=family, sketch_canvas=sketch_canvas, line_width=line_width,
                                 force=force, say=say)
        manifest = export_precisions(out, precision, calib, options, say) or manifest
    say(f"bundle written: {out}")
    if manifest["demo"]:
        click.echo(DEMO_WARNING, err=True)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
    elif not quiet:
        for name, rep in manifest["parity"].items():
            click.echo(f"  parity {name:18s} max abs err {rep['max_abs_err']:.2e} (<= {rep['tolerance']:.0e})")


@click.command("demo-checkpoint")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--family", type=click.Choice(["dcssa", "arnet"]), default="dcssa", show_default=True,
              help="dcssa: DC-SSA's state_dict; arnet: ARNet's model_Best.pth (two ViT encoders).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--phase", type=click.Choice(["1", "2"]), default="2", show_default=True, help="DC-SSA only.")
@click.option("--vit", type=click.Choice(["tiny", "small", "base"]), default="base", show_default=True,
              help="ARNet only: ViT size at patch 16 / 224 px (ARNet trains base).")
@click.option("--embed", type=click.IntRange(2), default=None,
              help=f"Embedding size E [default: DC-SSA {DEFAULT_EMBED}, ARNet {DEFAULT_ARNET_EMBED}].")
@click.option("--catalogue", type=click.Path(path_type=Path), default=None,
              help="Folder of catalogue photos to fit the projections on [default: the generated "
                   "catalogue of `dcssa-rt make-dataset --photos SHAPES --seed CATALOGUE-SEED`].")
@click.option("--shapes", type=click.IntRange(2), default=40, show_default=True)
@click.option("--catalogue-seed", type=int, default=0, show_default=True)
@click.option("--plain-random", is_flag=True, help="Independent random branches, no fitted projections "
              "(every photo embeds nearly alike: the worst case).")
@click.option("--outliers", is_flag=True, help="ARNet only: edit trained-like activation outliers into the ViT "
              "(a few massive residual channels, uneven post-LayerNorm scales) before fitting the head.")
@output_options(json="the checkpoint path")
def demo_checkpoint(out: Path, family: str, seed: int, phase: str, vit: str, embed: int | None,
                    catalogue: Path | None, shapes: int, catalogue_seed: int, plain_random: bool, outliers: bool,
                    as_json: bool, quiet: bool) -> None:
    """Write a DEMO checkpoint in the authors' exact layout (no training involved).

    By default a structured model that retrieves line drawings of the catalogue from tracings of
    them: shared random trunk, projections fitted by PCA on the catalogue. It is no trained model:
    it demonstrates and tests the pipeline.
    """
    say = Progress(quiet or as_json)
    with fail_cleanly(), stdout_for_json(as_json):
        if family == "arnet":
            from dcssa.export.arnet_demo import write_arnet_demo
            from dcssa.export.vit_outliers import OutlierSpec

            if plain_random:
                raise click.BadParameter("the ARNet demo is always structured", param_hint="--plain-random")
            path = write_arnet_demo(out, size=vit, embed=embed or DEFAULT_ARNET_EMBED, seed=seed, catalogue=catalogue,
                                    shapes=shapes, catalogue_seed=catalogue_seed,
                                    outliers=OutlierSpec() if outliers else None, say=say)
        else:
            if outliers:
                raise click.BadParameter("--outliers is for --family arnet", param_hint="--outliers")
            from dcssa.export.demo import write_demo_checkpoint

            path = write_demo_checkpoint(out, seed=seed, phase=int(phase), embed=embed or DEFAULT_EMBED,
                                         structured=not plain_random, catalogue=catalogue, shapes=shapes,
                                         catalogue_seed=catalogue_seed, say=say)
    say(f"demo checkpoint written: {path}")
    if as_json:
        click.echo(json.dumps({"path": str(path)}))


@click.command("triton")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model repository folder to write.")
@click.option("--platform", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True,
              help="onnxruntime: the bundle's ONNX graphs; tensorrt: the engines of `dcssa-export engines`.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="Which of the bundle's graphs (fp16/int8: from `dcssa-export calibrate`).")
@click.option("--max-batch", type=click.IntRange(0), default=8, show_default=True,
              help="max_batch_size of the dynamic batcher (0: no batching).")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True, help="Instances per model.")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="Instance group kind.")
@click.option("--queue-delay-us", type=click.IntRange(0), default=100, show_default=True,
              help="max_queue_delay_microseconds: how long a request may wait for others to batch with.")
@click.option("--name-prefix", default="", help="Prefix of the model names (several bundles on one server); "
              "give the same to --triton-prefix.")
@output_options(json="the repository description", force="repository")
def triton(bundle: Path, out: Path, platform: str, precision: str, max_batch: int, instances: int, kind: str,
           queue_delay_us: int, name_prefix: str, as_json: bool, quiet: bool, force: bool) -> None:
    """Write a Triton Inference Server model repository serving BUNDLE's encoders.

    \b
    dcssa-export triton dcssa-bundle --out triton-repo
    tritonserver --model-repository triton-repo          # e.g. in NGC's tritonserver container
    dcssa-rt query sketch.json --backend triton --triton-url localhost:8001
    """
    from dcssa.export.triton import write_repository

    with fail_cleanly(), stdout_for_json(as_json):
        doc = write_repository(bundle, out, platform=platform, precision=precision, max_batch=max_batch,
                               instances=instances, kind=kind, queue_delay_us=queue_delay_us, prefix=name_prefix,
                               force=force)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    elif not quiet:
        click.echo(f"model repository written: {out} ({', '.join(doc['models'])}; {platform}, {precision}, "
                   f"manifest sha256 {doc['manifest_sha256'][:12]}...)")
        if doc.get("serve"):
            click.echo(f"serve it with: {doc['serve']}")


#: every ``dcssa-export`` subcommand, registered the one way below
COMMANDS: tuple[click.Command, ...] = (demo_checkpoint, calibrate, engines, triton)
for _command in COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
