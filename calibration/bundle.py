"""Add FP16 / INT8 graphs, their fidelity reports and the chosen recipe to an existing bundle.

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
from collections.abc import Callable, Sequence
from pathlib import Path

from dcssa.runtime import manifest as mf
from dcssa.runtime.backends import get_backend
from dcssa.runtime.bundle import Bundle, sha256_file
from dcssa.runtime.errors import DcssaError

from . import fidelity as fd
from .calibset import bundle_prefix_set, load_sketch_data, split_heldout
from .fp16 import convert_fp16
from .int8 import Int8Recipe
from .search import SearchContext, plot_curve, run_search

Say = Callable[[str], None]
PRECISIONS = ("fp16", "int8")
FP16_GRAPHS = (mf.SKETCH_ENCODER, mf.PHOTO_ENCODER)
# The recipe the search chose on the structured demo model (see README, "Precision"): used when
# no search is asked for. A trained checkpoint deserves its own search (--recipe search).
DEFAULT_RECIPE = Int8Recipe(
    method="entropy",
    blocks=["stem_pools", "attention.proj", "Mixed_7a", "Mixed_7c", "Mixed_7b", "Mixed_6e", "Mixed_6d", "Mixed_6c"],
    symmetric_activations=False,
)


def parse_precisions(text: str, allowed: Sequence[str] = ("fp32", *PRECISIONS)) -> list[str]:
    items = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in items if p not in allowed]
    if bad or not items:
        raise DcssaError(f"unknown precision {', '.join(bad) or repr(text)}", hint=f"use a comma list of {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def load_recipe(spec: str | Path | None) -> Int8Recipe | None:
    """``None``/"search" -> None (search), "default" -> DEFAULT_RECIPE, else a JSON file.

    The file may be a recipe, a ``search.json`` (its chosen recipe) or a manifest (its int8 recipe).
    """
    if spec is None or str(spec) == "search":
        return None
    if str(spec) == "default":
        return Int8Recipe.from_dict(DEFAULT_RECIPE.to_dict())
    path = Path(spec)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DcssaError(f"cannot read the recipe ({exc})", path=path, hint="pass search, default or a recipe JSON file") from None
    for key in ("chosen", "calibration"):
        if isinstance(doc, dict) and key in doc:
            doc = doc[key].get("recipe", doc[key].get("int8", {}).get("recipe", doc[key]))
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


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="raster", disable=quiet, leave=False)


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
    say: Say = lambda _m: None,
) -> dict:
    """Add ``precisions`` to the bundle; returns the new manifest. ``recipe=None`` runs the search."""
    bundle_path = Path(bundle_path)
    bundle = Bundle.load(bundle_path)
    precisions = [p for p in precisions if p != "fp32"]
    for p in precisions:
        if p not in PRECISIONS:
            raise DcssaError(f"cannot calibrate precision {p!r}", hint=f"choose among {', '.join(PRECISIONS)}")
    backend = get_backend("ort-cpu", threads=threads)
    say(f"reading calibration data: {data}")
    sk = load_sketch_data(data)
    calib_sketches, held_sketches = split_heldout(sk.sketches, heldout_share)
    calib = bundle_prefix_set(bundle, calib_sketches).subsample(max_calib)
    held = bundle_prefix_set(bundle, held_sketches).subsample(max_heldout)
    say(f"{len(calib)} calibration prefixes ({len(calib_sketches)} sketches), "
        f"{len(held)} held-out prefixes ({len(held_sketches)} sketches)")
    gal = fd.gallery_matrix(bundle, photos=photos or (None if gallery else sk.photos), gallery=gallery, backend=backend)
    with _progress(len(held), "fp32 reference", quiet) as bar:
        ref = fd.reference(bundle, held, gal, backend, on_batch=bar.update)
    staged: dict[str, Path] = {}
    entries: dict[tuple[str, str], dict] = {}
    reports: dict[str, dict] = {}
    calibration: dict = {}
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix=".calibrate-", dir=bundle_path)) if own_tmp else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        if "fp16" in precisions:
            typing = {}
            for name in FP16_GRAPHS:
                say(f"fp16: converting {name}")
                tmp = work / f"{name}.fp16.onnx"
                typing[name] = convert_fp16(bundle.graph_path(name, "fp32"), tmp)
                fname = _hashed_name(name, "fp16", tmp)
                staged[fname] = tmp
                entries[(name, "fp16")] = {"file": fname, "precision": "fp16", "fp32_nodes": typing[name]["fp32_nodes"]}
            with _progress(len(held), "fp16 fidelity", quiet) as bar:
                rep = fd.fidelity_report(bundle, work / f"{mf.SKETCH_ENCODER}.fp16.onnx", "fp16", held, gal, ref,
                                         backend=backend, latency_rasters=0, on_batch=bar.update)
            rep["note"] = "fp16 targets GPU backends; onnxruntime CPU runs it through casts, so no CPU latency is reported"
            reports["fp16"] = rep
            say(fd.summary_line("fp16", rep))
        if "int8" in precisions:
            ctx = SearchContext(bundle, calib, held, gal, ref, work, backend, symmetric=False, say=say,
                                latency_rasters=latency_rasters)
            search = search_record
            if recipe is None:
                search = run_search(ctx, methods)
                recipe = Int8Recipe.from_dict(search["chosen"]["recipe"])
            if search is not None:
                png = plot_curve(search, work / "int8-curve.png")
                if png is not None:
                    staged["int8-tradeoff.png"] = png
            recipe.symmetric_activations = False
            say(f"int8: quantising with {recipe.short()}")
            with _progress(len(calib), f"calibrating ({recipe.method})", quiet) as bar:
                ctx.on_batch = bar.update
                ctx.cache(recipe.method)
            cpu = work / f"{mf.SKETCH_ENCODER}.int8.onnx"
            with _progress(len(held), "int8 fidelity", quiet) as bar:
                ctx.on_batch = bar.update
                rep = ctx.evaluate(recipe, keep=cpu)
            reports["int8"] = rep
            say(fd.summary_line("int8", rep))
            # the TensorRT graph: same recipe and data, symmetric int8 activations (zero point 0)
            trt_recipe = Int8Recipe.from_dict({**recipe.to_dict(), "symmetric_activations": True})
            ctx_sym = SearchContext(bundle, calib, held, gal, ref, work, backend, symmetric=True, say=say)
            sym = work / f"{mf.SKETCH_ENCODER}.int8sym.onnx"
            with _progress(len(calib), f"calibrating ({recipe.method}, symmetric)", quiet) as bar:
                ctx_sym.on_batch = bar.update
                ctx_sym.cache(recipe.method)
            with _progress(len(held), "int8 (TensorRT graph) fidelity", quiet) as bar:
                ctx_sym.on_batch = bar.update
                rep_sym = ctx_sym.evaluate(trt_recipe, latency=False, keep=sym)
            rep_sym["note"] = "symmetric-activation Q/DQ graph for TensorRT, measured on onnxruntime CPU"
            reports["int8-tensorrt"] = rep_sym
            say(fd.summary_line("int8 (TensorRT graph)", rep_sym))
            fname, sname = _hashed_name(mf.SKETCH_ENCODER, "int8", cpu), _hashed_name(mf.SKETCH_ENCODER, "int8sym", sym)
            staged[fname], staged[sname] = cpu, sym
            entries[(mf.SKETCH_ENCODER, "int8")] = {
                "file": fname, "precision": "int8", "activations": "uint8 asymmetric (onnxruntime CPU)",
                "tensorrt_file": sname, "tensorrt_activations": "int8 symmetric (zero point 0)",
            }
            calibration = {
                "recipe": recipe.to_dict(),
                "tensorrt_recipe": trt_recipe.to_dict(),
                "search": None if search is None else {k: search[k] for k in ("methods", "sensitivity", "order", "curve", "chosen", "float_blocks")},
            }
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

        def update(m: dict) -> None:
            for (name, prec), entry in entries.items():
                m["graphs"][name][prec] = {**entry, **mf.signature(name, bundle.feature_dim, bundle.embed_dim)}
            m["precisions"] = sorted({p for per in m["graphs"].values() for p in per},
                                     key=lambda p: ("fp32", "fp16", "int8").index(p) if p in ("fp32", "fp16", "int8") else 9)
            m.setdefault("fidelity", {}).update(reports)
            info = m.setdefault("calibration", {})
            info.update({"data": str(data), "calibration_prefixes": len(calib), "heldout_prefixes": len(held),
                         "heldout_sketches": len(held_sketches), "gallery": gal.source, "created": stamp})
            if calibration:
                info["int8"] = calibration
            if "int8-tradeoff.png" in staged:
                info["int8"]["curve_png"] = "int8-tradeoff.png"

        return commit(bundle_path, staged, update)
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
