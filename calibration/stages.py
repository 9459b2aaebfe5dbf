"""The precision stages of the calibrate job: each writes its graphs and reports into the work folder.

Every stage measures against the same :class:`~.yardstick.Yardstick` and returns a
:class:`StageOutput`; :func:`dcssa.calibration.job.commit_stages` puts them all into the bundle in
one manifest swap. The int8 stage is the quantiser's (:mod:`.quantisers`): ours (:func:`int8_stage`)
or NNCF's (:func:`nncf_int8_stage`), both recording their two graphs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dcssa.calibration import fidelity as fd
from dcssa.calibration.fp16 import convert_fp16
from dcssa.calibration.int8 import Int8Recipe
from dcssa.calibration.options import CalibrationOptions
from dcssa.calibration.search import SearchContext, plot_curve, run_search
from dcssa.calibration.yardstick import Yardstick
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import sha256_file

if TYPE_CHECKING:
    from dcssa.calibration.nncf_ptq import NncfOptions
    from dcssa.calibration.quantisers import Quantiser

FP16_GRAPHS = (mf.SKETCH_ENCODER, mf.PHOTO_ENCODER)
CURVE_PNG = "int8-tradeoff.png"
BF16_CURVE_PNG = "bf16-tradeoff.png"
SEARCH_RECORD = ("objective", "methods", "sensitivity", "sensitivity_sketches", "order", "curve", "chosen", "float_blocks",
                 "seconds")  # kept in the manifest
TENSORRT_NOTE = "symmetric-activation Q/DQ graph for TensorRT, measured on onnxruntime CPU"


@dataclass
class StageOutput:
    """What one precision stage adds: staged files (final name -> temp file), entries, reports."""

    files: dict[str, Path] = field(default_factory=dict)
    entries: dict[tuple[str, str], dict] = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)
    int8: dict | None = None  # the manifest's calibration.int8 record
    bf16: dict | None = None  # the manifest's calibration.bf16 record (the plan is the encoder spec's f32_scopes)


def hashed_name(graph: str, tag: str, tmp: Path) -> str:
    """The bundle's name of a new graph file: content-addressed, so no current manifest uses it."""
    return f"{graph}.{tag}-{sha256_file(tmp)[:8]}.onnx"


def fp16_stage(yard: Yardstick) -> StageOutput:
    """FP16 sketch and photo encoders, and the sketch encoder's fidelity report."""
    out = StageOutput()
    for name in FP16_GRAPHS:
        yard.say(f"fp16: converting {name}")
        tmp = yard.work / f"{name}.fp16.onnx"
        typing = convert_fp16(yard.bundle.graph_path(name, "fp32"), tmp)
        fname = hashed_name(name, "fp16", tmp)
        out.files[fname] = tmp
        out.entries[(name, "fp16")] = {"file": fname, "precision": "fp16", "fp32_nodes": typing["fp32_nodes"]}
    with yard.bar(len(yard.held), "fp16 fidelity") as bar:
        rep = yard.report(yard.work / f"{mf.SKETCH_ENCODER}.fp16.onnx", "fp16", latency_rasters=0,
                          on_batch=bar.update)
    rep["note"] = "fp16 targets GPU backends; onnxruntime CPU runs it through casts, so no CPU latency is reported"
    out.reports["fp16"] = rep
    yard.say(fd.summary_line("fp16", rep))
    return out


def int8_graphs(yard: Yardstick) -> tuple[Path, Path]:
    """Where an int8 stage writes its CPU and its TensorRT graph."""
    return yard.work / f"{mf.SKETCH_ENCODER}.int8.onnx", yard.work / f"{mf.SKETCH_ENCODER}.int8sym.onnx"


def add_int8_graphs(out: StageOutput, quantiser: Quantiser, cpu: Path, sym: Path) -> None:
    """Stage both int8 graphs under their bundle names, as one manifest entry labelled by ``quantiser``."""
    fname, sname = hashed_name(mf.SKETCH_ENCODER, "int8", cpu), hashed_name(mf.SKETCH_ENCODER, "int8sym", sym)
    out.files[fname], out.files[sname] = cpu, sym
    out.entries[(mf.SKETCH_ENCODER, "int8")] = {"file": fname, "precision": "int8",
                                                "activations": quantiser.cpu_activations, "tensorrt_file": sname,
                                                "tensorrt_activations": quantiser.tensorrt_activations,
                                                "quantiser": quantiser.name}


def _quantised(ctx: SearchContext, recipe: Int8Recipe, out: Path, what: str, *, latency: bool) -> dict:
    """Calibrate (cached per method) and write ``recipe``'s graph for ``ctx``'s target; its report."""
    tag = ", symmetric" if ctx.symmetric else ""
    with ctx.yard.bar(len(ctx.yard.calib), f"calibrating ({recipe.method}{tag})") as bar:
        ctx.on_batch = bar.update
        ctx.cache(recipe.method)
    with ctx.yard.bar(len(ctx.yard.held), f"{what} fidelity") as bar:
        ctx.on_batch = bar.update
        return ctx.evaluate(recipe, latency=latency, keep=out)


def int8_stage(yard: Yardstick, options: CalibrationOptions, recipe: Int8Recipe | None = None, *,
               search_record: dict | None = None, quantiser: Quantiser) -> StageOutput:
    """The int8 sketch encoder twice from one recipe: uint8 asymmetric activations for onnxruntime
    CPU (with latency) and int8 symmetric ones for TensorRT. ``recipe=None`` searches for it."""
    out = StageOutput()
    ctx = SearchContext(yard, options)
    search = search_record
    if recipe is None:
        search = run_search(ctx)
        recipe = Int8Recipe.from_dict(search["chosen"]["recipe"])
    png = plot_curve(search, yard.work / "int8-curve.png") if search is not None else None
    if png is not None:
        out.files[CURVE_PNG] = png
    yard.say(f"int8: quantising with {recipe.short(symmetric=False)}")
    cpu, sym = int8_graphs(yard)
    out.reports["int8"] = _quantised(ctx, recipe, cpu, "int8", latency=True)
    add_error_ranking(yard, out.reports["int8"], cpu)
    yard.say(fd.summary_line("int8", out.reports["int8"]))
    rep_sym = _quantised(SearchContext(yard, options, symmetric=True), recipe, sym, "int8 (TensorRT graph)",
                         latency=False)
    rep_sym["note"] = TENSORRT_NOTE
    out.reports["int8-tensorrt"] = rep_sym
    yard.say(fd.summary_line("int8 (TensorRT graph)", rep_sym))
    add_int8_graphs(out, quantiser, cpu, sym)
    out.int8 = {
        "quantiser": quantiser.name,
        "recipe": recipe.record(symmetric=False),
        "tensorrt_recipe": recipe.record(symmetric=True),
        "search": None if search is None else {k: search[k] for k in SEARCH_RECORD if k in search},
    }
    if png is not None:
        out.int8["curve_png"] = CURVE_PNG
    return out


def _nncf_graph(yard: Yardstick, opts: NncfOptions, path: Path) -> dict:
    """One NNCF graph at ``path``, by NNCF's accuracy control on the task when ``opts`` ask for it; its summary."""
    from dcssa.calibration.nncf_control import TaskScore, quantize_with_task_control
    from dcssa.calibration.nncf_ptq import quantize_nncf

    if not opts.accuracy_control:
        with yard.bar(len(yard.calib), f"nncf ({opts.preset})") as bar:
            return quantize_nncf(yard.fp32, path, yard.calib, opts, quiet=yard.quiet, on_batch=bar.update)
    score = TaskScore(yard)
    yard.say(f"nncf accuracy control: validation on {len(score)} held-out sketches, ranking on "
             f"{min(opts.ranking_sketches, len(score))}; {yard.objective.describe()}")
    with yard.bar(len(yard.calib), f"nncf ({opts.preset})") as bar:
        summary = quantize_with_task_control(yard.fp32, path, yard.calib, score, opts, quiet=yard.quiet,
                                             on_batch=bar.update)
    yard.say(f"nncf accuracy control: {len(summary['float_layers'])} layers kept float after {summary['validations']} "
             f"validations in {summary['seconds']:.0f} s")
    return summary


def _nncf_search(yard: Yardstick, options: NncfOptions, report: dict) -> dict | None:
    """The manifest's record of NNCF's accuracy-controlled search (None without one)."""
    if not options.accuracy_control:
        return None
    q = report["quantisation"]
    return {"kind": "nncf.quantize_with_accuracy_control, validated on the task objective",
            "objective": yard.objective.record(), "float_layers": q["float_layers"],
            "validations": q["validations"], "full_validations": q["full_validations"],
            "seconds": round(q["seconds"], 1), "meets_objective": report.get("meets_objective")}


def nncf_int8_stage(yard: Yardstick, options: NncfOptions, *, latency_rasters: int,
                    quantiser: Quantiser) -> StageOutput:
    """The int8 sketch encoder twice by NNCF from the same options and calibration rasters: preset
    MIXED (asymmetric activations) for onnxruntime CPU, with latency, and PERFORMANCE with signed
    activations (int8, zero point 0) for TensorRT. The manifest records the options as the recipe."""
    from dcssa.calibration.nncf_control import tensorrt_options

    out = StageOutput()
    cpu, sym = int8_graphs(yard)
    records, float_layers = {}, []
    targets = ((False, "int8", "int8", cpu), (True, "int8 (TensorRT graph)", "int8-tensorrt", sym))
    for symmetric, what, key, path in targets:
        opts = options.for_target(symmetric=symmetric)
        if symmetric and options.accuracy_control:
            opts = tensorrt_options(options, float_layers)  # the layers the CPU graph's search kept float
        yard.say(f"{what}: quantising with {opts.short()}")
        summary = _nncf_graph(yard, opts, path)
        if opts.accuracy_control:
            float_layers = summary["float_layers"]
        with yard.bar(len(yard.held), f"{what} fidelity") as bar:
            rep = yard.report(path, "int8", latency_rasters=0 if symmetric else latency_rasters, on_batch=bar.update)
        records[symmetric] = opts.record()
        rep["recipe"], rep["quantisation"] = records[symmetric], summary
        if symmetric:
            rep["note"] = TENSORRT_NOTE
        else:
            add_error_ranking(yard, rep, path)
        out.reports[key] = rep
        yard.say(fd.summary_line(what, rep))
    add_int8_graphs(out, quantiser, cpu, sym)
    out.int8 = {"quantiser": quantiser.name, "recipe": records[False], "tensorrt_recipe": records[True],
                "search": _nncf_search(yard, options, out.reports["int8"])}
    return out


def add_error_ranking(yard: Yardstick, report: dict, candidate: Path, rasters: int = 2) -> None:
    """The per-tensor SQNR ranking of ``candidate`` against fp32 on the first held-out rasters."""
    from dcssa.calibration.transformer import error_ranking

    report["error_ranking"] = error_ranking(yard.fp32, candidate, yard.held.images(0, min(rasters, len(yard.held))))


def weight_plan_stage(yard: Yardstick, options: CalibrationOptions, recipe: Int8Recipe, *,
                      quantiser: Quantiser) -> StageOutput:
    """The int8 sketch encoder by onnxruntime's dynamic int8 or by int8 weights only, of ``recipe``'s
    MatMuls. The TensorRT graph: the same weight-only graph, or for dynamic the static symmetric
    graph of the recipe (TensorRT has no dynamic int8), calibrated with the recipe's method."""
    from dcssa.calibration.int8 import collect_ranges, quantize_int8
    from dcssa.calibration.transformer import quantize_dynamic_int8, weight_only_int8

    out = StageOutput()
    cpu, sym = int8_graphs(yard)
    yard.say(f"int8 ({quantiser.name}): {len(recipe.blocks)} blocks' MatMuls")
    make = quantize_dynamic_int8 if quantiser.name == "dynamic" else weight_only_int8
    summary = make(yard.fp32, cpu, recipe)
    if quantiser.name == "dynamic":
        with yard.bar(len(yard.calib), f"calibrating ({recipe.method}, symmetric)") as bar:
            cache = collect_ranges(yard.fp32, yard.calib, recipe.method, yard.work / "ranges-sym.json", symmetric=True,
                                   on_batch=bar.update)
        quantize_int8(yard.fp32, sym, recipe, cache, symmetric=True)
    else:
        sym.write_bytes(cpu.read_bytes())
    for path, what, key, lat in ((cpu, "int8", "int8", options.latency_rasters), (sym, "int8 (TensorRT graph)", "int8-tensorrt", 0)):
        with yard.bar(len(yard.held), f"{what} fidelity") as bar:
            rep = yard.report(path, "int8", latency_rasters=lat, on_batch=bar.update)
        if key == "int8":
            rep["quantisation"] = summary
            add_error_ranking(yard, rep, path)
        else:
            rep["note"] = TENSORRT_NOTE
        out.reports[key] = rep
        yard.say(fd.summary_line(what, rep))
    add_int8_graphs(out, quantiser, cpu, sym)
    out.int8 = {"quantiser": quantiser.name, "recipe": {**recipe.record(symmetric=False), "mode": quantiser.name},
                "tensorrt_recipe": recipe.record(symmetric=True), "search": None}
    return out


def bf16_stage(yard: Yardstick, options: CalibrationOptions) -> StageOutput:
    """The OpenVINO bf16 plan of the sketch encoder: searched, reported, written into its spec."""
    from dcssa.calibration.bf16 import Bf16Search, check_bf16_machine, run_bf16_search

    check_bf16_machine()
    out = StageOutput()
    ctx = Bf16Search(yard, options)
    record = run_bf16_search(ctx)
    chosen = record["chosen"]["f32_scopes"]
    with yard.bar(len(yard.held), "bf16 fidelity") as bar:
        ctx.on_batch = bar.update
        rep = ctx.evaluate(chosen)
    rep["note"] = "OpenVINO bf16 execution of the fp32 graph with the chosen f32 scopes; latency against OpenVINO fp32"
    out.reports["bf16"] = rep
    yard.say(fd.summary_line("bf16", rep) + f" (f32: {', '.join(chosen) or 'none'})")
    if record["curve"]:
        png = plot_curve({**record, "chosen": {"blocks": record["chosen"]["blocks"]}}, yard.work / "bf16-curve.png",
                         title="bf16 sketch encoder (OpenVINO): fidelity vs latency",
                         xlabel="blocks in bf16, cumulatively, least sensitive first (the rest f32)")
        if png is not None:
            out.files[BF16_CURVE_PNG] = png
            record["curve_png"] = BF16_CURVE_PNG
    out.bf16 = {**record, "plan": {"graph": mf.SKETCH_ENCODER, "f32_scopes": chosen}}
    return out
