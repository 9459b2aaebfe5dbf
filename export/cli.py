"""``dcssa-export``: checkpoint -> verified bundle, and demo checkpoints."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from dcssa.runtime.cli_util import DEMO_WARNING, fail_cleanly

from .model import DEFAULT_EMBED, DEFAULT_HEADS


class _Steps:
    """Progress for a job of a few long steps: one line per step with the time it took."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = self.last = time.perf_counter()

    def __call__(self, msg: str) -> None:
        now = time.perf_counter()
        if not self.quiet:
            click.echo(f"[{now - self.t0:6.1f}s] {msg}", err=True)
        self.last = now


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
@click.option("--force", is_flag=True, help="Replace an existing bundle folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@click.option("--precision", default="fp32", show_default=True,
              help="Comma list of fp32, fp16, int8: reduced precisions are calibrated on --calib right after export.")
@click.option("--calib", default=None, help="Calibration/held-out sketches for --precision (see `calibrate --help`).")
@click.option("--recipe", default="search", show_default=True, help="INT8 recipe: search, default or a JSON file.")
@click.pass_context
def main(ctx: click.Context, ckpt: tuple[Path, ...], out: Path, num_heads: int, phase: str | None,
         force: bool, as_json: bool, quiet: bool, precision: str, calib: str | None, recipe: str) -> None:
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

    say = _Steps(quiet)
    with fail_cleanly():
        check_precision_args(precision, calib)  # before the export, not after 40 s of it
        manifest = export_bundle(list(ckpt), out, num_heads=num_heads,
                                 phase=int(phase) if phase else None, force=force, say=say)
        manifest = export_precisions(out, precision, calib, recipe, quiet, as_json, say) or manifest
    say(f"bundle written: {out}")
    if manifest["demo"]:
        click.echo(DEMO_WARNING, err=True)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
    elif not quiet:
        for name, rep in manifest["parity"].items():
            click.echo(f"  parity {name:18s} max abs err {rep['max_abs_err']:.2e} (<= {rep['tolerance']:.0e})")


@main.command("demo-checkpoint")
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
@click.option("-q", "--quiet", is_flag=True)
def demo_checkpoint(out: Path, seed: int, phase: str, embed: int, catalogue: Path | None, shapes: int,
                    catalogue_seed: int, plain_random: bool, quiet: bool) -> None:
    """Write a DEMO checkpoint in the authors' exact layout (no training involved).

    By default a structured model that retrieves line drawings of the catalogue from tracings of
    them: shared random trunk, projections fitted by PCA on the catalogue. It is no trained model:
    it demonstrates and tests the pipeline.
    """
    from .demo import write_demo_checkpoint

    say = _Steps(quiet)
    with fail_cleanly():
        write_demo_checkpoint(out, seed=seed, phase=int(phase), embed=embed, structured=not plain_random,
                              catalogue=catalogue, shapes=shapes, catalogue_seed=catalogue_seed, say=say)
    say(f"demo checkpoint written: {out}")


def _add_precision_commands() -> None:
    from dcssa.calibration.cli import calibrate, engines

    main.add_command(calibrate)
    main.add_command(engines)


_add_precision_commands()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
