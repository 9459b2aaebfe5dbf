"""``dcssa-export calibrate`` and ``dcssa-export engines`` (registered on the dcssa-export group)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dcssa.runtime.cli.console import fail_cleanly, stdout_for_json
from dcssa.runtime.cli.options import compose, output_options, threads_option
from dcssa.runtime.progress import Progress

DATA_HELP = ("Sketches: a QMUL *_Coordinate pickle, a folder of strokes JSON, a `dcssa-rt make-dataset` "
             "folder (its photo/ folder, or testB/ in ARNet's layout, becomes the fidelity gallery), or synthetic:N[:SEED].")
RECIPE_HELP = ("INT8 recipe: 'search' (measure methods, per-block sensitivity and the trade-off curve, then "
               "choose; slow), 'default' (the recipe chosen on the demo model), or a JSON file (a recipe, a "
               "search.json, or another bundle's manifest.json). With `calibrate --quantiser nncf`: the recipe "
               "whose float blocks NNCF ignores ('default' or a file), 'all' (ignore none), or 'search' (NNCF's "
               "quantize_with_accuracy_control chooses the float layers, validated on the task objective). "
               "[default: search; default with --quantiser nncf]")


#: ``--recipe``, the same on ``dcssa-export`` (with ``--precision``) and ``dcssa-export calibrate``
recipe_option = click.option("--recipe", default=None, help=RECIPE_HELP)

#: ``--photos`` / ``--gallery`` of the fidelity report, the same on ``dcssa-export`` and ``dcssa-export calibrate``
fidelity_gallery_options = compose(
    click.option("--photos", type=click.Path(path_type=Path), default=None,
                 help="Photo folder for the fidelity gallery [default: the sketch data's photo/ folder, "
                      "else BUNDLE/gallery]."),
    click.option("--gallery", "fidelity_gallery", type=click.Path(path_type=Path), default=None,
                 help="An existing gallery folder of this bundle's photo encoder, instead of --photos."),
)


def _print_fidelity(manifest: dict, precisions, as_json: bool) -> None:
    from dcssa.calibration.fidelity import summary_line

    fid = manifest.get("fidelity", {})
    if as_json:
        click.echo(json.dumps({"precisions": manifest["precisions"], "fidelity": fid,
                               "calibration": manifest.get("calibration", {})}, indent=2))
        return
    from dcssa.calibration.fidelity import noise_line

    for p in precisions:
        for key in (p, f"{p}-tensorrt"):
            if key in fid:
                rep = fid[key]
                ok = rep.get("meets_objective", rep.get("meets_targets"))
                used = rep.get("objective_used", "agreement")
                flag = "" if ok is None else (f"  [keeps the {used} objective]" if ok
                                              else f"  [MISSES the {used} objective: see README, Precision]")
                click.echo(summary_line(key, rep) + flag)
    for kind, rec in manifest.get("calibration", {}).get("noise_floor", {}).items():
        click.echo(noise_line(kind, rec))


def check_precision_args(precision: str, calib: str | None, *, photos: Path | None = None,
                         gallery: Path | None = None) -> list[str]:
    """Validate ``--precision/--calib/--photos/--gallery`` of the main export command before the export
    runs; returns the reduced precisions.

    The bundle is new, so it has no gallery of its own: the fidelity report needs photos from the
    data, ``--photos`` or ``--gallery``. Saying so now spares the user a minute of export first.
    """
    from dcssa.calibration.calibset import data_photo_dir
    from dcssa.calibration.job import parse_precisions
    from dcssa.runtime.errors import DcssaError

    wanted = [p for p in parse_precisions(precision) if p != "fp32"]
    if wanted and calib is None:
        raise DcssaError(f"--precision {','.join(wanted)} needs --calib DATA (calibration and held-out sketches)",
                         hint="e.g. --calib Shapes/ (a make-dataset folder), or a folder of strokes JSON with "
                              "--photos CATALOGUE/ (the photos the fidelity report ranks)")
    if wanted and photos is None and gallery is None and data_photo_dir(calib) is None:
        raise DcssaError(
            f"--calib {calib} has no photo folder beside the sketches, so the fidelity report of "
            f"{','.join(wanted)} has no gallery to rank against",
            hint="pass --photos FOLDER (the catalogue images) or --gallery GALLERY (built by `dcssa-rt index` "
                 "with this checkpoint's bundle), or --calib a dataset folder holding photo/",
        )
    return wanted


def _family(bundle: Path) -> str:
    from dcssa.runtime.contract.bundle import Bundle

    return Bundle.load(bundle).family


def export_precisions(out: Path, precision: str, calib: str | None, recipe: str | None, say: Progress, *,
                      photos: Path | None = None, gallery: Path | None = None) -> dict | None:
    """The ``--precision/--calib`` step of the main export command, after the fp32 bundle exists."""
    from dcssa.calibration.job import calibrate_bundle, load_recipe

    wanted = check_precision_args(precision, calib, photos=photos, gallery=gallery)
    if not wanted:
        return None
    manifest = calibrate_bundle(out, calib, wanted, recipe=load_recipe(recipe, _family(out)), photos=photos,
                                gallery=gallery, quiet=say.quiet, say=say)
    if not say.quiet:
        _print_fidelity(manifest, wanted, False)
    return manifest


@click.command("calibrate")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", required=True, help=DATA_HELP)
@click.option("--precision", default="int8", show_default=True,
              help="Comma list of fp16, int8, bf16 (bf16: search which blocks OpenVINO keeps in f32; needs a CPU "
                   "with native bf16).")
@recipe_option
@click.option("--objective", type=click.Choice(["task", "agreement"]), default="task", show_default=True,
              help="What a plan must keep: the task accuracy on held-out sketches (within --max-drop), or "
                   "agreement with fp32 (top-1 and top-10 >= 90%). Data without ground truth uses agreement.")
@click.option("--max-drop", default=None, metavar="METRIC=DROP,...",
              help="Largest loss against fp32 a plan may have, on the one-sided 95% upper bound over held-out "
                   "sketches (paired bootstrap) [default: m@B=0.01,acc@10=0.02]; metrics: acc@1, acc@10, "
                   "stroke_acc@1, stroke_acc@10, m@A, m@B.")
@click.option("--patience", type=click.IntRange(1), default=2, show_default=True,
              help="Stop a trade-off curve after this many points in a row miss the objective.")
@click.option("--sensitivity-sketches", type=click.IntRange(2), default=32, show_default=True,
              help="Held-out sketches the per-block sensitivity order is measured on (the curve uses all); with "
                   "--quantiser nncf --recipe search, NNCF's ranking subset.")
@click.option("--noise-floor/--no-noise-floor", default=True, show_default=True,
              help="Also measure fp32 on the same sketches moved by one pixel and jittered again.")
@fidelity_gallery_options
@click.option("--max-calib", type=click.IntRange(1), default=96, show_default=True,
              help="Calibration rasters (stroke prefixes), spread over the calibration sketches.")
@click.option("--max-heldout", type=click.IntRange(1), default=None,
              help="Cap on held-out prefixes, met with whole sketches spread over the held-out ones (at least one).")
@click.option("--methods", default="minmax,percentile,entropy", show_default=True,
              help="Calibration methods the search compares.")
@click.option("--quantiser", type=click.Choice(["ort", "nncf"]), default="ort", show_default=True,
              help="What makes the int8 graphs: onnxruntime.quantization with our ranges and --recipe (ort), or "
                   "NNCF's post-training quantisation (nncf; pip install 'dcssa-rt[nncf]'), where --recipe default "
                   "or FILE gives the float blocks NNCF ignores and --recipe all ignores none.")
@click.option("--smooth-quant", default=None, metavar="ALPHAS",
              help="nncf only: SmoothQuant alphas, e.g. 'matmul=0.95,convolution=0.5' (a negative alpha turns a "
                   "layer type off); NNCF applies it with model_type TRANSFORMER. [default: off]")
@threads_option()
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Keep range caches and the search record (search.json, curve PNG) here.")
@output_options(json="the fidelity reports and the recipe")
def calibrate(bundle: Path, data: str, precision: str, recipe: str | None, photos: Path | None, fidelity_gallery: Path | None,
              max_calib: int, max_heldout: int | None, methods: str, quantiser: str, smooth_quant: str | None,
              threads: int | None, workdir: Path | None, objective: str, max_drop: str | None, patience: int,
              sensitivity_sketches: int, noise_floor: bool, as_json: bool, quiet: bool) -> None:
    """Add FP16 / INT8 graphs and a bf16 plan to an existing BUNDLE, with a fidelity report for each.

    Fidelity is judged by the task where the held-out sketches name their photo: the change of
    acc@1/acc@10 (per stroke and finished), m@A, m@B against fp32, with paired bootstrap bounds,
    beside the noise floor (fp32 on strokes moved by one pixel); agreement with fp32 is reported too.

    \b
    dcssa-export calibrate dcssa-bundle --data Shapes/ --precision int8,bf16,fp16
    dcssa-export calibrate dcssa-bundle --data Shapes/ --recipe default   # no int8 search
    dcssa-export calibrate dcssa-bundle --data Shapes/ --precision bf16 --max-drop m@B=0.005
    dcssa-export calibrate dcssa-bundle --data Shapes/ --quantiser nncf --recipe default
    """
    from dcssa.calibration.job import PRECISIONS, calibrate_bundle, load_search_record, parse_precisions
    from dcssa.calibration.task import Objective, parse_max_drop

    say = Progress(quiet or as_json)
    with fail_cleanly(), stdout_for_json(as_json):  # onnxruntime's calibrators (and NNCF) print to stdout
        wanted = parse_precisions(precision, PRECISIONS)
        goal = Objective(objective, parse_max_drop(max_drop))
        nncf_options, int8_recipe = _quantiser_args(quantiser, recipe, smooth_quant, bundle, sensitivity_sketches)
        manifest = calibrate_bundle(
            bundle, data, wanted, recipe=int8_recipe, search_record=load_search_record(recipe),
            methods=[m.strip() for m in methods.split(",") if m.strip()], photos=photos, gallery=fidelity_gallery,
            max_calib=max_calib, max_heldout=max_heldout, threads=threads, workdir=workdir, quiet=say.quiet, say=say,
            objective=goal, noise_floor=noise_floor, patience=patience, sensitivity_sketches=sensitivity_sketches,
            quantiser=quantiser, nncf=nncf_options,
        )
    _print_fidelity(manifest, wanted, as_json)


def parse_smooth_quant(text: str | None) -> dict[str, float] | None:
    """``'matmul=0.95,convolution=0.5'`` -> alphas; None / '' / 'off' -> None."""
    from dcssa.runtime.errors import DcssaError

    if text is None or text.strip().lower() in ("", "off", "none"):
        return None
    alphas = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            alphas[key.strip()] = float(value)
        except ValueError:
            raise DcssaError(f"bad --smooth-quant item {part!r}", hint="write e.g. matmul=0.95,convolution=0.5") from None
    if set(alphas) - {"matmul", "convolution"}:
        raise DcssaError(f"--smooth-quant: unknown layer type(s) {sorted(set(alphas) - {'matmul', 'convolution'})}",
                         hint="give alphas for matmul and/or convolution")
    return alphas


def _quantiser_args(quantiser: str, recipe: str | None, smooth_quant: str | None, bundle: Path,
                    sensitivity_sketches: int = 32):
    """(NNCF options or None, the int8 recipe or None) for ``--quantiser/--recipe/--smooth-quant``."""
    from dcssa.calibration.job import load_recipe
    from dcssa.runtime.errors import DcssaError

    if quantiser == "ort":
        if smooth_quant is not None:
            raise DcssaError("--smooth-quant is an NNCF option", hint="add --quantiser nncf, or drop --smooth-quant")
        if recipe == "all":
            raise DcssaError("--recipe all (no ignored scope) is for --quantiser nncf",
                             hint="with ort pass search, default or a recipe JSON file")
        return None, load_recipe(recipe, _family(bundle))
    from dcssa.calibration.nncf_ptq import NncfOptions

    recipe = "default" if recipe is None else recipe
    if recipe == "search":  # NNCF's own search of the float layers, validated on the task objective
        return NncfOptions(accuracy_control=True, smooth_quant=parse_smooth_quant(smooth_quant),
                           ranking_sketches=sensitivity_sketches), None
    ignored = None if recipe == "all" else load_recipe(recipe, _family(bundle))
    return NncfOptions(ignored_recipe=ignored, smooth_quant=parse_smooth_quant(smooth_quant)), None


@click.command("engines")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", default="fp16,int8", show_default=True, help="Comma list of fp32, fp16, int8.")
@click.option("--max-batch", type=click.IntRange(1), default=8, show_default=True)
@click.option("--max-strokes", type=click.IntRange(1), default=None, help="K/V cache rows [default: the bundle's].")
@click.option("--workspace-mib", type=click.IntRange(64), default=2048, show_default=True)
@click.option("--verbose", is_flag=True, help="TensorRT's builder log at VERBOSE (layer precisions, tactics).")
@output_options(json="the engines record")
def engines(bundle: Path, precision: str, max_batch: int, max_strokes: int | None, workspace_mib: int,
            verbose: bool, as_json: bool, quiet: bool) -> None:
    """Build TensorRT engines for BUNDLE on this GPU machine (TensorRT 10.x / 11.x).

    Engines are strongly typed from the bundle's fp16 / int8 graphs and recorded with this
    machine's TensorRT version, GPU and compute capability; `--backend tensorrt` refuses them
    anywhere else.
    """
    from dcssa.calibration.engines import build_engines
    from dcssa.calibration.job import parse_precisions

    say = Progress(quiet or as_json)
    with fail_cleanly(), stdout_for_json(as_json):
        manifest = build_engines(bundle, parse_precisions(precision), max_batch=max_batch, max_strokes=max_strokes,
                                 workspace_mib=workspace_mib, verbose=verbose, say=say)
    rec = manifest["engines"]
    if as_json:
        click.echo(json.dumps(rec, indent=2))
    else:
        click.echo(f"engines for TensorRT {rec['tensorrt']} on {rec['gpu']} (sm {rec['compute_capability']}):")
        for graph, per in rec["graphs"].items():
            click.echo(f"  {graph:18s} {', '.join(per)}")
