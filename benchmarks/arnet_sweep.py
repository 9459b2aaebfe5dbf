"""Every reduced-precision plan of an ARNet (ViT) bundle judged by the task, side by side (issue 34).

One yardstick per bundle (the calibrate job's: held-out sketches, their gallery, the fp32 reference
computed once and cached on disk), then each candidate's graph is written and judged the same way:
task drops with their upper 95% bounds, agreement and cosine to fp32, latency against fp32 on
onnxruntime and OpenVINO (interleaved, so shared-machine load hits both sides), and the per-tensor
error ranking. Cells run in priority order across the bundles and the record is rewritten after
each one, so a sweep cut short still reports what it measured (the rest: "not measured").

    dcssa-bench arnet-precision run --bundle plain=B1 --bundle outliers=B2 --data DATA --out DIR

The command line is benchmarks/arnet_precision.py (light: `dcssa-bench` loads it for every command); this
module, which imports the calibration package, is loaded when the sweep runs.
"""

from __future__ import annotations

import json
import os
import pickle
import time
import traceback
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

from dcssa.calibration import fidelity as fd
from dcssa.calibration.int8 import Int8Recipe, collect_ranges, quantize_int8
from dcssa.calibration.options import CalibrationOptions
from dcssa.calibration.transformer import (
    error_ranking,
    norm_scales,
    quantize_dynamic_int8,
    reparameterise_norms,
    transformer_recipe,
    weight_only_int8,
)
from dcssa.calibration.yardstick import Yardstick, prepare
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import Bundle

from .arnet_cells import ALPHAS

#: the recipe ARNet bundles got before issue 34 (every MatMul of the blocks, percentile ranges)
OLD_ARNET_RECIPE = Int8Recipe(method="percentile", blocks=["vit.blocks.*"])


def write_text(path: Path, text: str) -> None:
    """Whole or not at all: a sweep killed mid-write keeps its last record."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


#: the real fp32 pass: every bundle's cached wrapper calls this one, never the previous bundle's wrapper
#: (which would hand the second bundle the first one's cached reference)
FP32_REFERENCE = fd.reference


def cached_reference(cache: Path):
    """``fd.reference`` reading/writing ``cache`` (the fp32 pass is the costliest step of a ViT-B sweep)."""
    original = FP32_REFERENCE

    def reference(bundle, prefixes, gallery, backend=None, on_batch=lambda _n: None):
        if cache.is_file():
            ref = pickle.loads(cache.read_bytes())
            if len(ref.features) == len(prefixes):
                return ref
        ref = original(bundle, prefixes, gallery, backend, on_batch=on_batch)
        cache.write_bytes(pickle.dumps(ref))
        return ref

    return reference


def choose_method(yard: Yardstick, work: Path, methods=("minmax", "percentile"), rasters: int = 24) -> tuple[str, dict]:
    """The calibrator of the transformer recipe: the one whose graph keeps the embedding closest to
    fp32 on ``rasters`` held-out rasters (cheap; the chosen graph is then judged on the whole task)."""
    pick = np.unique(np.linspace(0, len(yard.held) - 1, rasters).round().astype(int))
    images = np.concatenate([yard.held.images(i, i + 1) for i in pick])
    scores = {}
    for m in methods:
        path = transformer_graph(yard, work, m)
        enc = fd.load_encoder(yard.bundle, yard.backend, path)
        key = mf.encoder_output(enc.spec)
        f = np.concatenate([enc.run({mf.IMAGES: images[i:i + 8]})[key] for i in range(0, len(images), 8)])
        r = yard.ref.features[pick]
        cos = (f * r).sum(1) / np.maximum(np.linalg.norm(f, axis=1) * np.linalg.norm(r, axis=1), 1e-12)
        scores[m] = float(cos.mean())
    best = max(scores, key=scores.get)
    return best, {"rule": f"highest mean feature cosine to fp32 on {len(pick)} held-out rasters", "scores": scores}


def ranges(yard: Yardstick, fp32: Path, method: str, work: Path, tag: str = "") -> Path:
    cache = work / f"ranges-{method}{tag}.json"
    if not cache.is_file():
        collect_ranges(fp32, yard.calib, method, cache)
    return cache


def transformer_graph(yard: Yardstick, work: Path, method: str) -> Path:
    out = work / f"transformer-{method}.onnx"
    if not out.is_file():
        quantize_int8(yard.fp32, out, transformer_recipe(method), ranges(yard, yard.fp32, method, work))
    return out


def build(cell: str, yard: Yardstick, work: Path, state: dict) -> tuple[Path | None, dict]:
    """The candidate graph of ``cell`` (None: evaluated another way or refused) and its record."""
    if cell == "transformer":
        method, why = choose_method(yard, work, state["methods"])
        state["method"] = method
        return transformer_graph(yard, work, method), {"recipe": transformer_recipe(method).to_dict(), "calibrator": why}
    if cell == "old-default":
        out = work / "old-default.onnx"
        quantize_int8(yard.fp32, out, OLD_ARNET_RECIPE, ranges(yard, yard.fp32, "percentile", work))
        return out, {"recipe": OLD_ARNET_RECIPE.to_dict()}
    if cell == "dynamic":
        out = work / "dynamic.onnx"
        return out, quantize_dynamic_int8(yard.fp32, out)
    if cell == "weight-only":
        out = work / "weight-only.onnx"
        return out, weight_only_int8(yard.fp32, out)
    if cell == "reparam":
        method = state.get("method", "minmax")
        rep = work / "reparam-fp32.onnx"
        info = reparameterise_norms(yard.fp32, rep, norm_scales(__import__("onnx").load(str(yard.fp32)), yard.calib))
        out = work / "reparam.onnx"
        quantize_int8(rep, out, transformer_recipe(method), ranges(yard, rep, method, work, "-reparam"))
        return out, {"recipe": transformer_recipe(method).to_dict(), "reparameterised": {k: v for k, v in info.items() if k != "norms"}}
    if cell in ALPHAS:
        from dcssa.calibration.nncf_ptq import NncfOptions, quantize_nncf

        opts = NncfOptions(ignored_recipe=transformer_recipe(), smooth_quant={"matmul": ALPHAS[cell]})
        out = work / f"{cell}.onnx"
        return out, {"recipe": opts.record(), "quantisation": quantize_nncf(yard.fp32, out, yard.calib, opts)}
    if cell == "fp16":
        from dcssa.calibration.fp16 import convert_fp16

        out = work / "fp16.onnx"
        return out, {"typing": {k: v for k, v in convert_fp16(yard.fp32, out).items() if k != "fp32_nodes"}}
    if cell == "bf16":
        from dcssa.calibration.bf16 import check_bf16_machine

        check_bf16_machine()  # refused on a CPU without native bf16: the record says why
        return None, {}
    raise ValueError(cell)


def openvino_latency(yard: Yardstick, path: Path, rasters: int = 3) -> dict:
    """fp32 vs the candidate, both on OpenVINO, interleaved (the other CPU backend)."""
    from dcssa.runtime.backends import get_backend

    ov = get_backend("openvino", threads=yard.backend.threads)
    pick = np.unique(np.linspace(0, len(yard.held) - 1, rasters).round().astype(int))
    imgs = np.concatenate([yard.held.images(i, i + 1) for i in pick])
    lat = fd.interleaved_latency(fd.load_encoder(yard.bundle, ov), fd.load_encoder(yard.bundle, ov, path), imgs, repeats=2)
    return {**lat, "backend": "openvino"}


def noise_floor(yard: Yardstick) -> dict:
    """fp32 against itself on the held-out strokes moved by one pixel / jittered again (the calibrate
    job's noise floor; two more fp32 passes): the drops a user's hand causes, beside every plan's."""
    t0 = time.perf_counter()
    rec = fd.noise_floor(yard.bundle, yard.held, yard.gallery, yard.ref, yard.backend)
    return {"status": "measured", "perturbations": rec, "loadavg": os.getloadavg(),
            "seconds": round(time.perf_counter() - t0, 1)}


def evaluate(cell: str, yard: Yardstick, work: Path, state: dict) -> dict:
    if cell == "noise-floor":
        return noise_floor(yard)
    t0 = time.perf_counter()
    try:
        path, info = build(cell, yard, work, state)
    except Exception as exc:  # noqa: BLE001 - a refused or failed plan is a row of the table
        return {"status": "refused" if cell == "bf16" else "failed", "reason": str(exc).splitlines()[0],
                "trace": traceback.format_exc(limit=3) if cell != "bf16" else None}
    built = time.perf_counter() - t0
    precision = "fp16" if cell == "fp16" else "int8"
    rep = yard.report(path, precision, latency_rasters=0 if cell == "fp16" else 4)
    rep.update(info, status="measured", build_seconds=round(built, 1), loadavg=os.getloadavg())
    if cell != "fp16":
        try:
            rep["latency_openvino"] = openvino_latency(yard, path)
        except Exception as exc:  # noqa: BLE001
            rep["latency_openvino"] = {"error": str(exc).splitlines()[0]}
        pick = np.unique(np.linspace(0, len(yard.held) - 1, 1).round().astype(int))
        rep["error_ranking"] = error_ranking(yard.fp32, path, np.concatenate([yard.held.images(i, i + 1) for i in pick]))
    rep["seconds"] = round(time.perf_counter() - t0, 1)
    return rep


def run_sweep(bundles: tuple[str, ...], data: Path, out: Path, max_heldout: int, max_calib: int, cells: str,
         methods: str, threads: int | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "arnet-precision.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"variants": {}}
    options = CalibrationOptions(max_calib=max_calib, max_heldout=max_heldout, noise_floor=False, latency_rasters=4,
                                 threads=threads)
    yards, states = {}, {}
    for item in bundles:
        name, _, path = item.partition("=")
        work = out / name
        work.mkdir(exist_ok=True)
        fd.reference = cached_reference(work / "fp32-reference.pkl")
        t0 = time.perf_counter()
        yard = prepare(Bundle.load(path), data, work, options, say=lambda m: click.echo(m, err=True), quiet=True)
        yards[name] = replace(yard, say=lambda m: click.echo(m, err=True))
        states[name] = {"methods": tuple(m for m in methods.split(",") if m)}
        v = record["variants"].setdefault(name, {"cells": {}})
        v.update(bundle=path, held_out={"sketches": len(yard.held.sketches), "prefixes": len(yard.held)},
                 calibration_rasters=len(yard.calib), reference_seconds=round(time.perf_counter() - t0, 1),
                 fp32=fd.target_accuracy(yard.ref.task) if yard.ref.task is not None else None)
        write_text(record_path, json.dumps(record, indent=2))
    for cell in [c for c in cells.split(",") if c]:
        for name, yard in yards.items():
            done = record["variants"][name]["cells"].get(cell, {})
            if done.get("status") in ("measured", "refused"):
                if cell == "transformer":
                    states[name]["method"] = done["recipe"]["method"]
                continue
            click.echo(f"[{time.strftime('%H:%M:%S')}] {name}: {cell} (load {os.getloadavg()[0]:.1f})", err=True)
            rep = evaluate(cell, yard, out / name, states[name])
            record["variants"][name]["cells"][cell] = rep
            write_text(record_path, json.dumps(record, indent=2, default=float))
            if cell == "noise-floor":
                for kind, rec in rep["perturbations"].items():
                    click.echo(fd.noise_line(kind, rec), err=True)
            elif rep.get("status") == "measured":
                click.echo(fd.summary_line(cell, rep) + f" [{rep['seconds']} s]", err=True)
            else:
                click.echo(f"{cell}: {rep['status']}: {rep['reason']}", err=True)
