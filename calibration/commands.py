"""``dcssa-export calibrate`` and ``dcssa-export engines`` (registered on the dcssa-export group)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dcssa.calibration.options import DATA_HELP, CalibrationOptions, EngineOptions
from dcssa.calibration.quantisers import QUANTISERS
from dcssa.runtime.cli.console import fail_cleanly, stdout_for_json
from dcssa.runtime.cli.options import output_options, threads_option
from dcssa.runtime.options import click_options, from_cli
from dcssa.runtime.progress import Progress

#: ``--quantiser`` lists the table's names (the options module cannot import the table: it is the package's bottom)
QUANTISER_CHOICE = {"quantiser": {"type": click.Choice(list(QUANTISERS))}}

#: ``--recipe``, ``--photos`` and ``--gallery``: the same on ``dcssa-export`` (with ``--precision``) and
#: ``dcssa-export calibrate``, generated from :class:`~.options.CalibrationOptions`
ONE_SHOT = ("recipe", "photos", "fidelity_gallery")
one_shot_options = click_options(CalibrationOptions, only=ONE_SHOT)


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
    from dcssa.calibration.options import parse_precisions
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


def export_precisions(out: Path, precision: str, calib: str | None, options: CalibrationOptions,
                      say: Progress) -> dict | None:
    """The ``--precision/--calib`` step of the main export command, after the fp32 bundle exists;
    ``options``: those of :data:`ONE_SHOT` (the rest keep their defaults)."""
    from dataclasses import replace

    from dcssa.calibration.job import calibrate_bundle

    wanted = check_precision_args(precision, calib, photos=options.photos, gallery=options.fidelity_gallery)
    if not wanted:
        return None
    manifest = calibrate_bundle(out, calib, replace(options, precisions=tuple(wanted)), say=say, quiet=say.quiet)
    if not say.quiet:
        _print_fidelity(manifest, wanted, False)
    return manifest


@click.command("calibrate")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", required=True, help=DATA_HELP)
@click_options(CalibrationOptions, exclude=("workdir",), overrides=QUANTISER_CHOICE)
@threads_option()
@click_options(CalibrationOptions, only=("workdir",))
@output_options(json="the fidelity reports and the recipe")
def calibrate(bundle: Path, data: str, as_json: bool, quiet: bool, **settings) -> None:
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
    from dcssa.calibration.job import calibrate_bundle
    from dcssa.calibration.recipes import load_search_record

    say = Progress(quiet or as_json)
    with fail_cleanly(), stdout_for_json(as_json):  # onnxruntime's calibrators (and NNCF) print to stdout
        options, _ = from_cli(CalibrationOptions, settings, search_record=load_search_record(settings["recipe"]))
        manifest = calibrate_bundle(bundle, data, options, say=say, quiet=say.quiet)
    _print_fidelity(manifest, options.calibrated, as_json)


@click.command("engines")
@click.argument("bundle", type=click.Path(path_type=Path))
@click_options(EngineOptions)
@output_options(json="the engines record")
def engines(bundle: Path, as_json: bool, quiet: bool, **settings) -> None:
    """Build TensorRT engines for BUNDLE on this GPU machine (TensorRT 10.x / 11.x).

    Engines are strongly typed from the bundle's fp16 / int8 graphs and recorded with this
    machine's TensorRT version, GPU and compute capability; `--backend tensorrt` refuses them
    anywhere else.
    """
    from dataclasses import asdict

    from dcssa.calibration.engines import build_engines

    say = Progress(quiet or as_json)
    with fail_cleanly(), stdout_for_json(as_json):
        options, _ = from_cli(EngineOptions, settings)
        manifest = build_engines(bundle, say=say, **asdict(options))
    rec = manifest["engines"]
    if as_json:
        click.echo(json.dumps(rec, indent=2))
    else:
        click.echo(f"engines for TensorRT {rec['tensorrt']} on {rec['gpu']} (sm {rec['compute_capability']}):")
        for graph, per in rec["graphs"].items():
            click.echo(f"  {graph:18s} {', '.join(per)}")
