"""Add FP16 / INT8 graphs, their fidelity reports and the chosen recipe to an existing bundle.

Calibration runs in stages: :func:`prepare` reads the data and computes what every precision is
compared against (the fp32 reference on held-out prefixes), :func:`fp16_stage` and
:func:`int8_stage` each write graphs and reports into the work folder, and :func:`commit_stages`
puts them into the bundle in one manifest swap.

The bundle is never half-updated: new graphs are written under content-addressed names
(``sketch_encoder.int8-<sha8>.onnx``) that no current manifest entry uses, then ``manifest.json`` is
replaced atomically (temp file + ``os.replace``), and only then are files the new manifest no longer
references deleted. A crash at any point leaves the old manifest pointing at intact files.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dcssa.calibration import fidelity as fd
from dcssa.calibration import task as T
from dcssa.calibration.calibset import PrefixSet, bundle_prefix_set, load_sketch_data, split_heldout, spread_sketches
from dcssa.calibration.fp16 import convert_fp16
from dcssa.calibration.int8 import CPU_ACTIVATIONS, TENSORRT_ACTIVATIONS, Int8Recipe
from dcssa.calibration.nncf_ptq import NNCF_CPU_ACTIVATIONS, NNCF_TENSORRT_ACTIVATIONS, QUANTISERS, NncfOptions
from dcssa.calibration.search import SearchContext, plot_curve, run_search
from dcssa.runtime.backends import Backend, get_backend
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import Bundle, sha256_file
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.progress import Progress, Say, silent

PRECISIONS = ("fp16", "int8", "bf16")
FP16_GRAPHS = (mf.SKETCH_ENCODER, mf.PHOTO_ENCODER)
CURVE_PNG = "int8-tradeoff.png"
BF16_CURVE_PNG = "bf16-tradeoff.png"
SEARCH_RECORD = ("objective", "methods", "sensitivity", "sensitivity_sketches", "order", "curve", "chosen", "float_blocks",
                 "seconds")  # kept in the manifest
# The recipe the search chose on the structured demo model (see README, "Precision"): used when
# no search is asked for. A trained checkpoint deserves its own search (--recipe search).
DEFAULT_RECIPE = Int8Recipe(
    method="entropy",
    blocks=["stem_pools", "attention.proj", "Mixed_7a", "Mixed_7c", "Mixed_7b", "Mixed_6e", "Mixed_6d", "Mixed_6c"],
)
# ARNet (ViT): every transformer block's linear layers; the patch embedding, the score path
# (q.k^T, softmax, attention.v) and LayerNorms stay float (see README, "ARNet").
ARNET_RECIPE = Int8Recipe(method="percentile", blocks=["vit.blocks.*"])
DEFAULT_RECIPES = {mf.DCSSA: DEFAULT_RECIPE, mf.ARNET: ARNET_RECIPE}


def parse_precisions(text: str, allowed: Sequence[str] = ("fp32", *PRECISIONS)) -> list[str]:
    items = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in items if p not in allowed]
    if bad or not items:
        raise DcssaError(f"unknown precision {', '.join(bad) or repr(text)}", hint=f"use a comma list of {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def load_recipe(spec: str | Path | None, family: str = mf.DCSSA) -> Int8Recipe | None:
    """``None``/"search" -> None (search), "default" -> the family's default recipe, else a JSON file.

    The file may be a recipe, a ``search.json`` (its chosen recipe) or a manifest (its int8 recipe).
    """
    if spec is None or str(spec) == "search":
        return None
    if str(spec) == "default":
        return Int8Recipe.from_dict(DEFAULT_RECIPES[family].to_dict())  # a copy: its lists are the caller's
    path = Path(spec)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DcssaError(f"cannot read the recipe ({exc})", path=path, hint="pass search, default or a recipe JSON file") from None
    for key in ("chosen", "calibration"):
        if isinstance(doc, dict) and key in doc:
            doc = doc[key].get("recipe", doc[key].get("int8", {}).get("recipe", doc[key]))
    if isinstance(doc, dict) and doc.get("quantiser") == "nncf":
        # an NNCF graph's record: the recipe whose float blocks were its ignored scope, if any
        if not isinstance(doc.get("ignored_recipe"), dict):
            raise DcssaError("that int8 graph was made by NNCF on every layer: it has no recipe of blocks", path=path,
                             hint="pass --recipe all with --quantiser nncf, or default / a recipe JSON file")
        doc = doc["ignored_recipe"]
    if not isinstance(doc, dict) or "blocks" not in doc:
        raise DcssaError("not a recipe (no 'blocks')", path=path, hint="pass search, default or a recipe JSON file")
    return Int8Recipe.from_dict(doc)


def load_search_record(spec: str | Path | None) -> dict | None:
    """The search record (methods, sensitivity, curve) when ``spec`` is a ``search.json``."""
    if spec is None or str(spec) in ("search", "default"):
        return None
    try:
        doc = json.loads(Path(spec).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "curve" in doc and "chosen" in doc else None


def _write_manifest(bundle_path: Path, manifest: dict) -> None:
    fd_, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=bundle_path)
    try:
        with os.fdopen(fd_, "w") as f:
            f.write(json.dumps(manifest, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, bundle_path / mf.MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _referenced(manifest: dict) -> set[str]:
    names = set()
    for per in manifest.get("graphs", {}).values():
        for entry in per.values():
            names.add(entry["file"])
            if entry.get("tensorrt_file"):
                names.add(entry["tensorrt_file"])
    for per in manifest.get("engines", {}).get("graphs", {}).values():
        for entry in per.values():
            names.add(entry["file"])
    if manifest.get("engines", {}).get("timing_cache"):
        names.add(manifest["engines"]["timing_cache"])
    return names


def commit(bundle_path: Path, staged: dict[str, Path], update: Callable[[dict], None]) -> dict:
    """Move ``staged`` {final name: temp file} into the bundle, apply ``update`` to the manifest, swap.

    Files get their final (content-addressed) names before the manifest is swapped; the old
    manifest never references them, so an interruption leaves a consistent bundle.
    """
    manifest = json.loads((bundle_path / mf.MANIFEST).read_text())
    before = _referenced(manifest)
    for name, tmp in staged.items():
        manifest["files"][name] = {"sha256": sha256_file(tmp), "bytes": tmp.stat().st_size}
        os.replace(tmp, bundle_path / name)
    update(manifest)
    after = _referenced(manifest)
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k in after or k not in before}
    _write_manifest(bundle_path, manifest)
    for stale in before - after:
        (bundle_path / stale).unlink(missing_ok=True)
    return manifest


def _hashed_name(graph: str, tag: str, tmp: Path) -> str:
    return f"{graph}.{tag}-{sha256_file(tmp)[:8]}.onnx"


@dataclass
class Prepared:
    """What every precision stage works from: the prefix sets, the gallery and the fp32 reference."""

    bundle: Bundle
    data: str
    calib: PrefixSet
    held: PrefixSet
    gallery: fd.GalleryMatrix
    ref: fd.Reference
    backend: Backend
    work: Path
    quiet: bool = False
    say: Say = silent
    objective: T.Objective = field(default_factory=T.Objective)
    noise: dict = field(default_factory=dict)
    threads: int | None = None
    patience: int | None = 2
    sensitivity_sketches: int | None = 32

    def bar(self, total: int, desc: str):
        return Progress(self.quiet).bar(total, desc, "raster")


@dataclass
class StageOutput:
    """What one precision stage adds: staged files (final name -> temp file), entries, reports."""

    files: dict[str, Path] = field(default_factory=dict)
    entries: dict[tuple[str, str], dict] = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)
    int8: dict | None = None  # the manifest's calibration.int8 record
    bf16: dict | None = None  # the manifest's calibration.bf16 record (the plan is the encoder spec's f32_scopes)


def prepare(bundle: Bundle, data: str | Path, work: Path, *, photos: Path | None = None,
            gallery: Path | None = None, max_calib: int = 96, max_heldout: int | None = None,
            heldout_share: float = 0.5, threads: int | None = None, quiet: bool = False,
            say: Say = silent, objective: T.Objective | None = None, noise_floor: bool = True,
            patience: int | None = 2, sensitivity_sketches: int | None = 32) -> Prepared:
    """Read the sketches, split them by sketch, rank the gallery and run the fp32 reference once
    (and the noise floor: fp32 on the same sketches moved by a pixel, jittered again)."""
    backend = get_backend("ort-cpu", threads=threads)
    say(f"reading calibration data: {data}")
    sk = load_sketch_data(data)
    calib_sketches, held_sketches = split_heldout(sk.sketches, heldout_share)
    calib = bundle_prefix_set(bundle, calib_sketches).subsample(max_calib)
    held = bundle_prefix_set(bundle, spread_sketches(held_sketches, max_heldout))  # whole sketches: causal head
    say(f"{len(calib)} calibration prefixes ({len(calib_sketches)} sketches), "
        f"{len(held)} held-out prefixes ({len(held.sketches)} of {len(held_sketches)} sketches)")
    # the gallery of every held-out sketch, as `dcssa-rt eval --limit` keeps every photo of the split
    gal = fd.protocol_gallery(fd.gallery_matrix(bundle, photos=photos or (None if gallery else sk.photos),
                                                gallery=gallery, backend=backend), held_sketches)
    say(f"fidelity gallery: {len(gal.ids)} photos ({gal.rule})")
    with Progress(quiet).bar(len(held), "fp32 reference", "raster") as bar:
        ref = fd.reference(bundle, held, gal, backend, on_batch=bar.update)
    objective = objective or T.Objective()
    if ref.task is None:
        say("the held-out sketches name no photo of the gallery: agreement with fp32 is the only yardstick")
    else:
        say(f"task yardstick on {len(ref.targets)} held-out sketches with their photo; {objective.describe()}")
    noise = {}
    if noise_floor:
        with Progress(quiet).bar(len(held) * len(T.PERTURBATIONS), "noise floor (fp32, moved strokes)", "raster") as bar:
            noise = fd.noise_floor(bundle, held, gal, ref, backend, on_batch=bar.update)
        for kind, rec in noise.items():
            say(fd.noise_line(kind, rec))
    return Prepared(bundle, str(data), calib, held, gal, ref, backend, work, quiet, say, objective, noise, threads,
                    patience, sensitivity_sketches)


def fp16_stage(prep: Prepared) -> StageOutput:
    """FP16 sketch and photo encoders, and the sketch encoder's fidelity report."""
    out = StageOutput()
    for name in FP16_GRAPHS:
        prep.say(f"fp16: converting {name}")
        tmp = prep.work / f"{name}.fp16.onnx"
        typing = convert_fp16(prep.bundle.graph_path(name, "fp32"), tmp)
        fname = _hashed_name(name, "fp16", tmp)
        out.files[fname] = tmp
        out.entries[(name, "fp16")] = {"file": fname, "precision": "fp16", "fp32_nodes": typing["fp32_nodes"]}
    with prep.bar(len(prep.held), "fp16 fidelity") as bar:
        rep = fd.fidelity_report(prep.bundle, prep.work / f"{mf.SKETCH_ENCODER}.fp16.onnx", "fp16", prep.held,
                                 prep.gallery, prep.ref, backend=prep.backend, latency_rasters=0, on_batch=bar.update,
                                 objective=prep.objective)
    rep["note"] = "fp16 targets GPU backends; onnxruntime CPU runs it through casts, so no CPU latency is reported"
    out.reports["fp16"] = rep
    prep.say(fd.summary_line("fp16", rep))
    return out


def _context(prep: Prepared, *, symmetric: bool, latency_rasters: int = 6) -> SearchContext:
    return SearchContext(prep.bundle, prep.calib, prep.held, prep.gallery, prep.ref, prep.work, prep.backend,
                         symmetric=symmetric, say=prep.say, latency_rasters=latency_rasters, objective=prep.objective,
                         patience=prep.patience, sensitivity_sketches=prep.sensitivity_sketches)


def _quantised(prep: Prepared, ctx: SearchContext, recipe: Int8Recipe, out: Path, what: str, *,
               latency: bool) -> dict:
    """Calibrate (cached per method) and write ``recipe``'s graph for ``ctx``'s target; its report."""
    tag = ", symmetric" if ctx.symmetric else ""
    with prep.bar(len(prep.calib), f"calibrating ({recipe.method}{tag})") as bar:
        ctx.on_batch = bar.update
        ctx.cache(recipe.method)
    with prep.bar(len(prep.held), f"{what} fidelity") as bar:
        ctx.on_batch = bar.update
        return ctx.evaluate(recipe, latency=latency, keep=out)


def int8_stage(prep: Prepared, recipe: Int8Recipe | None = None, *, search_record: dict | None = None,
               methods: Sequence[str] = ("minmax", "percentile", "entropy"), latency_rasters: int = 8) -> StageOutput:
    """The int8 sketch encoder twice from one recipe: uint8 asymmetric activations for onnxruntime
    CPU (with latency) and int8 symmetric ones for TensorRT. ``recipe=None`` searches for it."""
    out = StageOutput()
    ctx = _context(prep, symmetric=False, latency_rasters=latency_rasters)
    search = search_record
    if recipe is None:
        search = run_search(ctx, methods)
        recipe = Int8Recipe.from_dict(search["chosen"]["recipe"])
    png = plot_curve(search, prep.work / "int8-curve.png") if search is not None else None
    if png is not None:
        out.files[CURVE_PNG] = png
    prep.say(f"int8: quantising with {recipe.short(symmetric=False)}")
    cpu, sym = prep.work / f"{mf.SKETCH_ENCODER}.int8.onnx", prep.work / f"{mf.SKETCH_ENCODER}.int8sym.onnx"
    out.reports["int8"] = _quantised(prep, ctx, recipe, cpu, "int8", latency=True)
    prep.say(fd.summary_line("int8", out.reports["int8"]))
    rep_sym = _quantised(prep, _context(prep, symmetric=True), recipe, sym, "int8 (TensorRT graph)", latency=False)
    rep_sym["note"] = "symmetric-activation Q/DQ graph for TensorRT, measured on onnxruntime CPU"
    out.reports["int8-tensorrt"] = rep_sym
    prep.say(fd.summary_line("int8 (TensorRT graph)", rep_sym))
    fname, sname = _hashed_name(mf.SKETCH_ENCODER, "int8", cpu), _hashed_name(mf.SKETCH_ENCODER, "int8sym", sym)
    out.files[fname], out.files[sname] = cpu, sym
    out.entries[(mf.SKETCH_ENCODER, "int8")] = {"file": fname, "precision": "int8", "activations": CPU_ACTIVATIONS,
                                                "tensorrt_file": sname, "tensorrt_activations": TENSORRT_ACTIVATIONS,
                                                "quantiser": "ort"}
    out.int8 = {
        "quantiser": "ort",
        "recipe": recipe.record(symmetric=False),
        "tensorrt_recipe": recipe.record(symmetric=True),
        "search": None if search is None else {k: search[k] for k in SEARCH_RECORD if k in search},
    }
    if png is not None:
        out.int8["curve_png"] = CURVE_PNG
    return out


def bf16_stage(prep: Prepared, *, latency_rasters: int = 6) -> StageOutput:
    """The OpenVINO bf16 plan of the sketch encoder: searched, reported, written into its spec."""
    from dcssa.calibration.bf16 import Bf16Search, check_bf16_machine, run_bf16_search

    check_bf16_machine()
    out = StageOutput()
    ctx = Bf16Search(prep.bundle, prep.held, prep.gallery, prep.ref, prep.backend, prep.work, threads=prep.threads,
                     objective=prep.objective, latency_rasters=latency_rasters, patience=prep.patience,
                     sensitivity_sketches=prep.sensitivity_sketches, say=prep.say)
    record = run_bf16_search(ctx)
    chosen = record["chosen"]["f32_scopes"]
    with prep.bar(len(prep.held), "bf16 fidelity") as bar:
        ctx.on_batch = bar.update
        rep = ctx.evaluate(chosen)
    rep["note"] = "OpenVINO bf16 execution of the fp32 graph with the chosen f32 scopes; latency against OpenVINO fp32"
    out.reports["bf16"] = rep
    prep.say(fd.summary_line("bf16", rep) + f" (f32: {', '.join(chosen) or 'none'})")
    if record["curve"]:
        from dcssa.calibration.search import plot_curve

        png = plot_curve({**record, "chosen": {"blocks": record["chosen"]["blocks"]}}, prep.work / "bf16-curve.png",
                         title="bf16 sketch encoder (OpenVINO): fidelity vs latency",
                         xlabel="blocks in bf16, cumulatively, least sensitive first (the rest f32)")
        if png is not None:
            out.files[BF16_CURVE_PNG] = png
            record["curve_png"] = BF16_CURVE_PNG
    out.bf16 = {**record, "plan": {"graph": mf.SKETCH_ENCODER, "f32_scopes": chosen}}
    return out


def nncf_int8_stage(prep: Prepared, options: NncfOptions, *, latency_rasters: int = 8) -> StageOutput:
    """The int8 sketch encoder twice by NNCF from the same options and calibration rasters: preset
    MIXED (asymmetric activations) for onnxruntime CPU, with latency, and PERFORMANCE with signed
    activations (int8, zero point 0) for TensorRT. The manifest records the options as the recipe."""
    from dcssa.calibration.nncf_control import TaskScore, quantize_with_task_control, tensorrt_options
    from dcssa.calibration.nncf_ptq import quantize_nncf

    out = StageOutput()
    fp32 = prep.bundle.graph_path(mf.SKETCH_ENCODER, "fp32")
    graphs = {False: prep.work / f"{mf.SKETCH_ENCODER}.int8.onnx", True: prep.work / f"{mf.SKETCH_ENCODER}.int8sym.onnx"}
    records = {}
    float_layers: list[str] = []
    for symmetric, what, key in ((False, "int8", "int8"), (True, "int8 (TensorRT graph)", "int8-tensorrt")):
        opts = options.for_target(symmetric=symmetric)
        if symmetric and options.accuracy_control:
            opts = tensorrt_options(options, float_layers)  # the layers the CPU graph's search kept float
        prep.say(f"{what}: quantising with {opts.short()}")
        if opts.accuracy_control:
            score = TaskScore(prep.bundle, prep.held, prep.gallery, prep.ref, prep.backend, prep.objective, prep.work,
                              say=prep.say)
            prep.say(f"nncf accuracy control: validation on {len(score)} held-out sketches, ranking on "
                     f"{min(opts.ranking_sketches, len(score))}; {prep.objective.describe()}")
            with prep.bar(len(prep.calib), f"nncf ({opts.preset})") as bar:
                summary = quantize_with_task_control(fp32, graphs[symmetric], prep.calib, score, opts,
                                                     quiet=prep.quiet, on_batch=bar.update)
            float_layers = summary["float_layers"]
            prep.say(f"nncf accuracy control: {len(float_layers)} layers kept float after {summary['validations']} "
                     f"validations in {summary['seconds']:.0f} s")
        else:
            with prep.bar(len(prep.calib), f"nncf ({opts.preset})") as bar:
                summary = quantize_nncf(fp32, graphs[symmetric], prep.calib, opts, quiet=prep.quiet,
                                        on_batch=bar.update)
        with prep.bar(len(prep.held), f"{what} fidelity") as bar:
            rep = fd.fidelity_report(prep.bundle, graphs[symmetric], "int8", prep.held, prep.gallery, prep.ref,
                                     backend=prep.backend, latency_rasters=0 if symmetric else latency_rasters,
                                     on_batch=bar.update, objective=prep.objective)
        records[symmetric] = opts.record()
        rep["recipe"], rep["quantisation"] = records[symmetric], summary
        if symmetric:
            rep["note"] = "symmetric-activation Q/DQ graph for TensorRT, measured on onnxruntime CPU"
        out.reports[key] = rep
        prep.say(fd.summary_line(what, rep))
    cpu, sym = graphs[False], graphs[True]
    fname, sname = _hashed_name(mf.SKETCH_ENCODER, "int8", cpu), _hashed_name(mf.SKETCH_ENCODER, "int8sym", sym)
    out.files[fname], out.files[sname] = cpu, sym
    out.entries[(mf.SKETCH_ENCODER, "int8")] = {"file": fname, "precision": "int8", "activations": NNCF_CPU_ACTIVATIONS,
                                                "tensorrt_file": sname, "tensorrt_activations": NNCF_TENSORRT_ACTIVATIONS,
                                                "quantiser": "nncf"}
    search = None
    if options.accuracy_control:
        q = out.reports["int8"]["quantisation"]
        search = {"kind": "nncf.quantize_with_accuracy_control, validated on the task objective",
                  "objective": prep.objective.record(), "float_layers": q["float_layers"],
                  "validations": q["validations"], "full_validations": q["full_validations"],
                  "seconds": round(q["seconds"], 1), "meets_objective": out.reports["int8"].get("meets_objective")}
    out.int8 = {"quantiser": "nncf", "recipe": records[False], "tensorrt_recipe": records[True], "search": search}
    return out


def _precision_order(p: str) -> tuple[int, str]:
    known = ("fp32", "fp16", "int8")
    return (known.index(p) if p in known else len(known), p)


def commit_stages(prep: Prepared, stages: Sequence[StageOutput]) -> dict:
    """Every stage's files, entries and reports into the bundle in one manifest swap."""
    bundle = prep.bundle
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    files = {name: tmp for st in stages for name, tmp in st.files.items()}
    int8 = next((st.int8 for st in stages if st.int8 is not None), None)
    bf16 = next((st.bf16 for st in stages if st.bf16 is not None), None)

    def update(m: dict) -> None:
        for st in stages:
            for (name, prec), entry in st.entries.items():
                # the fp32 entry's spec: the same tensors, whatever the family
                m["graphs"][name][prec] = {**entry, **bundle.graph_spec(name, "fp32").to_dict()}
            m.setdefault("fidelity", {}).update(st.reports)
        m["precisions"] = sorted({p for per in m["graphs"].values() for p in per}, key=_precision_order)
        info = m.setdefault("calibration", {})
        info.update({"data": prep.data, "calibration_prefixes": len(prep.calib), "heldout_prefixes": len(prep.held),
                     "heldout_sketches": len(prep.held.sketches), "gallery": prep.gallery.source,
                     "gallery_photos": len(prep.gallery.ids), "gallery_rule": prep.gallery.rule, "created": stamp})
        info["objective"] = prep.objective.record()
        info.pop("noise_floor", None)  # measured on these held-out sketches, or not at all
        if prep.noise:
            info["noise_floor"] = prep.noise
        if int8 is not None:
            info["int8"] = int8
        if bf16 is not None:
            info["bf16"] = bf16
            # the plan is data of the graph: OpenVINO's bf16 mode reads the fp32 entry's f32_scopes
            entry = m["graphs"][mf.SKETCH_ENCODER]["fp32"]
            entry.pop("f32_scopes", None)
            if bf16["plan"]["f32_scopes"]:
                entry["f32_scopes"] = list(bf16["plan"]["f32_scopes"])

    return commit(bundle.path, files, update)


@contextmanager
def _workdir(bundle_path: Path, workdir: Path | None) -> Iterator[Path]:
    """``workdir`` (kept), else a temporary folder inside the bundle (same file system; removed)."""
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        yield Path(workdir)
        return
    work = Path(tempfile.mkdtemp(prefix=".calibrate-", dir=bundle_path))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def calibrate_bundle(
    bundle_path: str | Path,
    data: str | Path,
    precisions: Sequence[str] = ("int8",),
    *,
    recipe: Int8Recipe | None = None,
    search_record: dict | None = None,
    methods: Sequence[str] = ("minmax", "percentile", "entropy"),
    photos: Path | None = None,
    gallery: Path | None = None,
    max_calib: int = 96,
    max_heldout: int | None = None,
    heldout_share: float = 0.5,
    threads: int | None = None,
    latency_rasters: int = 8,
    workdir: Path | None = None,
    quiet: bool = False,
    say: Say = silent,
    objective: T.Objective | None = None,
    noise_floor: bool = True,
    patience: int | None = 2,
    sensitivity_sketches: int | None = 32,
    quantiser: str = "ort",
    nncf: NncfOptions | None = None,
) -> dict:
    """Add ``precisions`` to the bundle; returns the new manifest. ``recipe=None`` runs the search.

    ``bf16`` is a plan, not a graph file: which blocks OpenVINO keeps in f32 (searched).
    ``quantiser="nncf"``: the int8 graphs come from NNCF with ``nncf`` options (default: MIXED, fast
    bias correction, every layer); ``recipe``, when given, becomes its ignored scope (its float blocks)
    unless ``nncf`` names one itself.
    """
    bundle_path = Path(bundle_path)
    if quantiser not in QUANTISERS:
        raise DcssaError(f"unknown quantiser {quantiser!r}", hint=f"choose among {', '.join(QUANTISERS)}")
    if quantiser == "nncf":
        from dataclasses import replace

        nncf = nncf or NncfOptions()
        if recipe is not None and nncf.ignored_recipe is None:
            nncf = replace(nncf, ignored_recipe=recipe)
    precisions = [p for p in precisions if p != "fp32"]
    for p in precisions:
        if p not in PRECISIONS:
            raise DcssaError(f"cannot calibrate precision {p!r}", hint=f"choose among {', '.join(PRECISIONS)}")
    bundle = Bundle.load(bundle_path)
    with _workdir(bundle_path, workdir) as work:
        prep = prepare(bundle, data, work, photos=photos, gallery=gallery, max_calib=max_calib,
                       max_heldout=max_heldout, heldout_share=heldout_share, threads=threads, quiet=quiet, say=say,
                       objective=objective, noise_floor=noise_floor, patience=patience,
                       sensitivity_sketches=sensitivity_sketches)
        stages = []
        if "fp16" in precisions:
            stages.append(fp16_stage(prep))
        if "int8" in precisions and quantiser == "nncf":
            stages.append(nncf_int8_stage(prep, nncf, latency_rasters=latency_rasters))
        elif "int8" in precisions:
            stages.append(int8_stage(prep, recipe, search_record=search_record, methods=methods,
                                     latency_rasters=latency_rasters))
        if "bf16" in precisions:
            stages.append(bf16_stage(prep, latency_rasters=latency_rasters))
        return commit_stages(prep, stages)
