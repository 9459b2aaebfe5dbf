"""``dcssa-export``: checkpoint -> verified bundle, and demo checkpoints.

The group itself exports (``--ckpt``); its subcommands are standalone ``click.command``s registered
from :data:`COMMANDS`, with the option groups of :mod:`dcssa.runtime.cli_options`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dcssa.calibration.cli import DATA_HELP, calibrate, engines, recipe_option
from dcssa.runtime.cli_options import output_options
from dcssa.runtime.cli_util import DEMO_WARNING, fail_cleanly, stdout_for_json
from dcssa.runtime.progress import Progress

from .model import DEFAULT_EMBED, DEFAULT_HEADS


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--ckpt", "ckpt", multiple=True, type=click.Path(path_type=Path),
              help="Checkpoint: a phase-2 or phase-1 .pth file, a folder with the phase-1 split trio, "
                   "or --ckpt given three times for the trio.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("dcssa-bundle"), show_default=True,
              help="Bundle folder to write.")
@click.option("--num-heads", type=int, default=DEFAULT_HEADS, show_default=True,
              help="Attention heads the model was trained with (cannot be read from the weights).")
@click.option("--phase", type=click.Choice(["1", "2"]), default=None,
              help="Force phase 1 (no stroke head) or 2; default: detected from the keys.")
@output_options(json="the manifest", force="bundle folder")
@click.option("--precision", default="fp32", show_default=True,
              help="Comma list of fp32, fp16, int8: reduced precisions are calibrated on --calib right after export.")
@click.option("--calib", default=None, help=f"Data for --precision. {DATA_HELP}")
@recipe_option
@click.pass_context
def main(ctx: click.Context, ckpt: tuple[Path, ...], out: Path, num_heads: int, phase: str | None,
         as_json: bool, quiet: bool, force: bool, precision: str, calib: str | None, recipe: str) -> None:
    """Export a trained DC-SSA checkpoint to a verified ONNX bundle the runtime can serve.

    \b
    dcssa-export --ckpt best_top5_model.pth            # -> ./dcssa-bundle
    dcssa-export --ckpt phase1_folder/ --out b1        # phase-1 split trio
    dcssa-export demo-checkpoint demo.pth              # random-weight demo checkpoint
    """
    if ctx.invoked_subcommand is not None:
        return
    if not ckpt:
        click.echo(ctx.get_help())
        ctx.exit(2)
    from dcssa.calibration.cli import check_precision_args, export_precisions

    from .bundle import export_bundle

    say = Progress(quiet or as_json)
    with fail_cleanly(), stdout_for_json(as_json):
        check_precision_args(precision, calib)  # before the export, not after 40 s of it
        manifest = export_bundle(list(ckpt), out, num_heads=num_heads,
                                 phase=int(phase) if phase else None, force=force, say=say)
        manifest = export_precisions(out, precision, calib, recipe, say) or manifest
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
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--phase", type=click.Choice(["1", "2"]), default="2", show_default=True)
@click.option("--embed", type=int, default=DEFAULT_EMBED, show_default=True, help="Embedding size E.")
@click.option("--catalogue", type=click.Path(path_type=Path), default=None,
              help="Folder of catalogue photos to fit the projections on [default: the generated "
                   "catalogue of `dcssa-rt make-dataset --photos SHAPES --seed CATALOGUE-SEED`].")
@click.option("--shapes", type=click.IntRange(2), default=40, show_default=True)
@click.option("--catalogue-seed", type=int, default=0, show_default=True)
@click.option("--plain-random", is_flag=True, help="Independent random branches, no fitted projections "
              "(every photo embeds nearly alike: the worst case).")
@output_options(json="the checkpoint path")
def demo_checkpoint(out: Path, seed: int, phase: str, embed: int, catalogue: Path | None, shapes: int,
                    catalogue_seed: int, plain_random: bool, as_json: bool, quiet: bool) -> None:
    """Write a DEMO checkpoint in the authors' exact layout (no training involved).

    By default a structured model that retrieves line drawings of the catalogue from tracings of
    them: shared random trunk, projections fitted by PCA on the catalogue. It is no trained model:
    it demonstrates and tests the pipeline.
    """
    from .demo import write_demo_checkpoint

    say = Progress(quiet or as_json)
    with fail_cleanly(), stdout_for_json(as_json):
        path = write_demo_checkpoint(out, seed=seed, phase=int(phase), embed=embed, structured=not plain_random,
                                     catalogue=catalogue, shapes=shapes, catalogue_seed=catalogue_seed, say=say)
    say(f"demo checkpoint written: {path}")
    if as_json:
        click.echo(json.dumps({"path": str(path)}))


#: every ``dcssa-export`` subcommand, registered the one way below
COMMANDS: tuple[click.Command, ...] = (demo_checkpoint, calibrate, engines)
for _command in COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
