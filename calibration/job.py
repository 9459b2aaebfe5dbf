"""Add FP16 / INT8 graphs, their fidelity reports and the chosen recipe to an existing bundle.

Calibration runs in stages: :func:`~.yardstick.prepare` reads the data and computes the yardstick
every precision is compared against (the fp32 reference on held-out prefixes), each stage of
:mod:`.stages` writes graphs and reports into the work folder, and :func:`commit_stages` puts them
into the bundle in one manifest swap. What the job does is one :class:`~.options.CalibrationOptions`.

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
from pathlib import Path
from typing import Any

from dcssa.calibration.options import PRECISIONS, CalibrationOptions, legacy_options, parse_precisions
from dcssa.calibration.quantisers import Int8Plan, Quantiser, quantiser_named
from dcssa.calibration.recipes import (
    ARNET_RECIPE,
    DEFAULT_RECIPE,
    DEFAULT_RECIPES,
    load_recipe,
    load_search_record,
)
from dcssa.calibration.stages import (
    BF16_CURVE_PNG,
    CURVE_PNG,
    FP16_GRAPHS,
    SEARCH_RECORD,
    StageOutput,
    bf16_stage,
    fp16_stage,
    int8_stage,
    nncf_int8_stage,
)
from dcssa.calibration.yardstick import Yardstick, prepare
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import Bundle, sha256_file
from dcssa.runtime.progress import Say, silent

#: the job's API, with the names of the 0.1 module whose parts moved to their own modules
__all__ = [
    "ARNET_RECIPE", "BF16_CURVE_PNG", "CURVE_PNG", "DEFAULT_RECIPE", "DEFAULT_RECIPES", "FP16_GRAPHS", "PRECISIONS",
    "SEARCH_RECORD", "CalibrationOptions", "StageOutput", "Yardstick", "bf16_stage", "calibrate_bundle", "commit",
    "commit_stages", "fp16_stage", "int8_stage", "load_recipe", "load_search_record", "nncf_int8_stage",
    "parse_precisions", "prepare",
]


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


def _precision_order(p: str) -> tuple[int, str]:
    known = ("fp32", "fp16", "int8")
    return (known.index(p) if p in known else len(known), p)


def commit_stages(yard: Yardstick, stages: Sequence[StageOutput]) -> dict:
    """Every stage's files, entries and reports into the bundle in one manifest swap."""
    bundle = yard.bundle
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
        info.update({"data": yard.data, "calibration_prefixes": len(yard.calib), "heldout_prefixes": len(yard.held),
                     "heldout_sketches": len(yard.held.sketches), "gallery": yard.gallery.source,
                     "gallery_photos": len(yard.gallery.ids), "gallery_rule": yard.gallery.rule, "created": stamp})
        info["objective"] = yard.objective.record()
        info.pop("noise_floor", None)  # measured on these held-out sketches, or not at all
        if yard.noise:
            info["noise_floor"] = yard.noise
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


def _stages(yard: Yardstick, options: CalibrationOptions, quantiser: Quantiser, plan: Int8Plan) -> list[StageOutput]:
    """The stages of ``options.precisions``, run in the order of :data:`PRECISIONS`."""
    run = {"fp16": lambda: fp16_stage(yard), "int8": lambda: quantiser.stage(yard, options, plan),
           "bf16": lambda: bf16_stage(yard, options)}
    return [run[p]() for p in PRECISIONS if p in options.calibrated]


def calibrate_bundle(bundle_path: str | Path, data: str | Path, options: CalibrationOptions | None = None, *,
                     say: Say = silent, quiet: bool = False, **legacy: Any) -> dict:
    """Add ``options.precisions`` to the bundle; returns the new manifest.

    ``bf16`` is a plan, not a graph file: which blocks OpenVINO keeps in f32 (searched). The int8
    graphs come from ``options.quantiser`` (:data:`~.quantisers.QUANTISERS`), which reads
    ``options.recipe``; its plan is read before any work. ``say``: progress lines; ``quiet``: no bars.
    ``legacy``: the 0.1 keyword arguments (``calibrate_bundle(path, data, ["int8"], recipe=...,
    gallery=...)``), deprecated.
    """
    options = legacy_options(options, legacy)
    bundle_path = Path(bundle_path)
    quantiser = quantiser_named(options.quantiser)
    bundle = Bundle.load(bundle_path)
    plan = quantiser.plan(options, bundle.family)
    with _workdir(bundle_path, options.workdir) as work:
        yard = prepare(bundle, data, work, options, say=say, quiet=quiet)
        return commit_stages(yard, _stages(yard, options, quantiser, plan))
