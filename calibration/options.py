"""Every setting of the calibrate job, its one default and its help: :class:`CalibrationOptions`.

``dcssa-export calibrate`` and the one-shot ``dcssa-export --precision ... --calib`` generate their
options from these fields (:func:`dcssa.runtime.options.click_options`), and the stages, searches
and NNCF options take their defaults from them, so a default cannot differ between the Python API,
the CLI and the CLI reference. This module is the bottom of the package: it imports no other
calibration module (they all may import it), and nothing heavy.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dcssa.runtime.errors import DcssaError
from dcssa.runtime.options import setting

if TYPE_CHECKING:
    from dcssa.calibration.int8 import Int8Recipe
    from dcssa.calibration.nncf_ptq import NncfOptions

#: what `calibrate` can add, in the order the stages run
PRECISIONS = ("fp16", "int8", "bf16")
#: the calibration methods the int8 search compares, in this order
SEARCH_METHODS = ("minmax", "percentile", "entropy")
#: default --max-drop: absolute, on the one-sided 95% upper bound of the drop (issue 19)
DEFAULT_MAX_DROP = {"m@B": 0.01, "acc@10": 0.02}

DATA_HELP = ("Sketches: a QMUL *_Coordinate pickle, a folder of strokes JSON, a `dcssa-rt make-dataset` "
             "folder (its photo/ folder, or testB/ in ARNet's layout, becomes the fidelity gallery), or synthetic:N[:SEED].")
RECIPE_HELP = ("INT8 recipe: 'search' (measure methods, per-block sensitivity and the trade-off curve, then "
               "choose; slow), 'default' (the recipe chosen on the demo model), or a JSON file (a recipe, a "
               "search.json, or another bundle's manifest.json). With `calibrate --quantiser nncf`: the recipe "
               "whose float blocks NNCF ignores ('default' or a file), 'all' (ignore none), or 'search' (NNCF's "
               "quantize_with_accuracy_control chooses the float layers, validated on the task objective). "
               "[default: search; default with --quantiser nncf]")


def parse_precisions(text: str, allowed: Sequence[str] = ("fp32", *PRECISIONS)) -> list[str]:
    items = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in items if p not in allowed]
    if bad or not items:
        raise DcssaError(f"unknown precision {', '.join(bad) or repr(text)}", hint=f"use a comma list of {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def parse_max_drop(text: str | None) -> dict[str, float]:
    """``"m@B=0.01,acc@10=0.02"`` -> {metric: limit}; None or "" -> the default."""
    from dcssa.runtime.evaluation.paired import HIGHER_IS_BETTER

    if not text:
        return dict(DEFAULT_MAX_DROP)
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in HIGHER_IS_BETTER:
            raise DcssaError(f"--max-drop: unknown metric {name!r}",
                             hint=f"write METRIC=DROP pairs, metrics among {', '.join(HIGHER_IS_BETTER)}; e.g. m@B=0.01,acc@10=0.02")
        try:
            out[name] = float(value)
        except ValueError:
            raise DcssaError(f"--max-drop: {item.strip()!r} has no number", hint="e.g. m@B=0.01,acc@10=0.02") from None
    if not out:
        raise DcssaError("--max-drop names no metric", hint="e.g. m@B=0.01,acc@10=0.02")
    return out


def parse_smooth_quant(text: str | None) -> dict[str, float] | None:
    """``'matmul=0.95,convolution=0.5'`` -> alphas; None / '' / 'off' -> None."""
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


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def _calibrated_precisions(text: str) -> tuple[str, ...]:
    return tuple(parse_precisions(text, PRECISIONS))


def _max_drop_text(max_drop: Mapping[str, float]) -> str:
    return ",".join(f"{m}={v:g}" for m, v in max_drop.items())


def _path(help: str) -> Any:
    return setting(None, help, type=click.Path(path_type=Path))


@dataclass(frozen=True)
class CalibrationOptions:
    """How `calibrate` works; the fields up to ``workdir`` are its command-line options, in --help order.

    ``recipe``: an :class:`~.int8.Int8Recipe`, or what ``--recipe`` takes (``search``, ``default``,
    ``all``, a JSON file), read per quantiser (:mod:`.quantisers`). ``threads`` comes from the
    shared ``--threads`` option of :mod:`dcssa.runtime.cli.options`.
    """

    precisions: tuple[str, ...] = setting(
        ("int8",), "Comma list of fp16, int8, bf16 (bf16: search which blocks OpenVINO keeps in f32; needs a CPU "
        "with native bf16).", flag="--precision", to_cli=",".join, from_cli=_calibrated_precisions)
    recipe: str | Path | Int8Recipe | None = setting(None, RECIPE_HELP)
    objective: str = setting(
        "task", "What a plan must keep: the task accuracy on held-out sketches (within --max-drop), or "
        "agreement with fp32 (top-1 and top-10 >= 90%). Data without ground truth uses agreement.",
        type=click.Choice(["task", "agreement"]))
    max_drop: Mapping[str, float] = setting(
        help="Largest loss against fp32 a plan may have, on the one-sided 95% upper bound over held-out "
        "sketches (paired bootstrap); metrics: acc@1, acc@10, stroke_acc@1, stroke_acc@10, m@A, m@B.",
        default_factory=lambda: dict(DEFAULT_MAX_DROP), metavar="METRIC=DROP,...", to_cli=_max_drop_text,
        from_cli=parse_max_drop)
    patience: int | None = setting(2, "Stop a trade-off curve after this many points in a row miss the objective.",
                                   type=click.IntRange(1))
    sensitivity_sketches: int | None = setting(
        32, "Held-out sketches the per-block sensitivity order is measured on (the curve uses all); with "
        "--quantiser nncf --recipe search, NNCF's ranking subset.", type=click.IntRange(2))
    noise_floor: bool = setting(True, "Also measure fp32 on the same sketches moved by one pixel and jittered again.",
                                flag="--noise-floor/--no-noise-floor")
    photos: Path | None = _path("Photo folder for the fidelity gallery [default: the sketch data's photo/ folder, "
                                "else BUNDLE/gallery].")
    fidelity_gallery: Path | None = setting(
        None, "An existing gallery folder of this bundle's photo encoder, instead of --photos.", flag="--gallery",
        type=click.Path(path_type=Path))
    max_calib: int = setting(96, "Calibration rasters (stroke prefixes), spread over the calibration sketches.",
                             type=click.IntRange(1))
    max_heldout: int | None = setting(
        None, "Cap on held-out prefixes, met with whole sketches spread over the held-out ones (at least one).",
        type=click.IntRange(1))
    methods: tuple[str, ...] = setting(SEARCH_METHODS, "Calibration methods the search compares.", to_cli=",".join,
                                       from_cli=_comma_list)
    quantiser: str = setting(
        "ort", "What makes the int8 graphs: onnxruntime.quantization with our ranges and --recipe (ort), "
        "NNCF's post-training quantisation (nncf; pip install 'dcssa-rt[nncf]'), where --recipe default "
        "or FILE gives the float blocks NNCF ignores and --recipe all ignores none, or the recipe's MatMuls "
        "with onnxruntime's dynamic int8 (dynamic) or int8 weights only (weight-only).")
    smooth_quant: Mapping[str, float] | None = setting(
        None, "nncf only: SmoothQuant alphas, e.g. 'matmul=0.95,convolution=0.5' (a negative alpha turns a "
        "layer type off); NNCF applies it with model_type TRANSFORMER. [default: off]", metavar="ALPHAS",
        from_cli=parse_smooth_quant)
    threads: int | None = setting(None, "Intra-op threads of the backends (None: all cores).", cli=False)
    workdir: Path | None = _path("Keep range caches and the search record (search.json, curve PNG) here.")
    # -- the Python API only -------------------------------------------------------------------------
    heldout_share: float = setting(0.5, "Share of the sketches held out for the fidelity reports.", cli=False)
    latency_rasters: int = setting(8, "Rasters each latency measurement times (0: no latency).", cli=False)
    search_record: dict | None = setting(
        None, "A finished search's record (search.json) to keep in the manifest with its recipe.", cli=False)
    nncf: NncfOptions | None = setting(
        None, "Every NNCF option (--quantiser nncf); --recipe and --smooth-quant still apply to them.", cli=False)

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in ("fp32", *PRECISIONS)]
        if bad:
            raise DcssaError(f"cannot calibrate precision {bad[0]!r}", hint=f"choose among {', '.join(PRECISIONS)}")

    @property
    def calibrated(self) -> list[str]:
        """The precisions to add (fp32 is the bundle's own)."""
        return [p for p in self.precisions if p != "fp32"]


@dataclass(frozen=True)
class EngineOptions:
    """How `engines` builds TensorRT engines (its command-line options; :func:`~.engines.build_engines`'s defaults)."""

    precisions: tuple[str, ...] = setting(("fp16", "int8"), "Comma list of fp32, fp16, int8.", flag="--precision",
                                          to_cli=",".join, from_cli=lambda text: tuple(parse_precisions(text)))
    max_batch: int = setting(8, type=click.IntRange(1))
    max_strokes: int | None = setting(None, "K/V cache rows [default: the bundle's].", type=click.IntRange(1))
    workspace_mib: int = setting(2048, type=click.IntRange(64))
    verbose: bool = setting(False, "TensorRT's builder log at VERBOSE (layer precisions, tactics).", is_flag=True)
    graphs: tuple[str, ...] = setting((), "Comma list of graphs to build [default: every graph of the bundle].",
                                      to_cli=",".join, show_default=False,
                                      from_cli=lambda text: tuple(g for g in text.split(",") if g) if text else ())
    opt_batch: int | None = setting(None, "Batch TensorRT tunes the kernels for [default: --max-batch, the "
                                    "server's batch; 1 for a single-user device].", type=click.IntRange(1))
    photo_max_side: int = setting(896, "Longest photo side the photo encoder's engine takes (photos are resized "
                                  "to the recipe's shorter side first).", type=click.IntRange(1))
    version_compatible: bool = setting(False, "Version-compatible plans: later TensorRT releases of the same major "
                                       "load them (a Triton server's); somewhat slower.", is_flag=True)


#: keywords of the 0.1 ``calibrate_bundle`` / ``prepare`` whose setting is named otherwise here
LEGACY_NAMES = {"gallery": "fidelity_gallery"}


def legacy_options(options: CalibrationOptions | Sequence[str] | None, legacy: Mapping[str, Any]) -> CalibrationOptions:
    """``options``, or the options the 0.1 keyword arguments describe (``calibrate_bundle(path, data,
    ["int8"], recipe=..., gallery=...)``: deprecated, removed in 0.3)."""
    if isinstance(options, CalibrationOptions) and not legacy:
        return options
    if options is None and not legacy:
        return CalibrationOptions()
    warnings.warn("calibration keyword arguments are deprecated (removed in 0.3): pass CalibrationOptions",
                  DeprecationWarning, stacklevel=3)
    values = {LEGACY_NAMES.get(k, k): v for k, v in legacy.items()}
    if options is not None and not isinstance(options, CalibrationOptions):
        values["precisions"] = tuple(options)
    objective = values.pop("objective", None)
    if objective is not None:  # a task.Objective
        values.update(objective=objective.kind, max_drop=dict(objective.max_drop))
    if values.get("quantiser") == "nncf" and values.get("recipe") is None:
        values["recipe"] = "all"  # 0.1: NNCF on every layer unless a recipe or NNCF options said otherwise
    known = {f.name for f in fields(CalibrationOptions)}
    if set(values) - known:
        raise TypeError(f"unknown calibration options {sorted(set(values) - known)}")
    base = options if isinstance(options, CalibrationOptions) else CalibrationOptions()
    from dataclasses import replace

    return replace(base, **values)
