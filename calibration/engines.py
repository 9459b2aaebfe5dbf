"""TensorRT engines from the bundle's precision-typed ONNX graphs (run on the GPU box).

Networks are created STRONGLY TYPED: every layer's precision comes from the ONNX types and the Q/DQ
nodes written by :mod:`dcssa.calibration.fp16` / :mod:`dcssa.calibration.int8`, which is the only
mode TensorRT 11 has (it removed ``BuilderFlag.FP16/INT8`` and the INT8 calibrators) and works the
same on JetPack's TensorRT 10.x. Only a TensorRT without the strongly typed flag (< 9) falls back to
the precision builder flags. One optimisation profile per graph covers the runtime's shapes
(batch 1..max_batch, stroke caches 0..max_strokes); the timing cache is kept in the bundle so a
rebuild (another precision, a new checkpoint) reuses the kernel timings.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from dcssa.runtime import manifest as mf
from dcssa.runtime.backends.tensorrt import local_metadata
from dcssa.runtime.bundle import Bundle
from dcssa.runtime.errors import DcssaError

from .bundle import commit

Say = Callable[[str], None]
TIMING_CACHE = "tensorrt.timing-cache"


class EngineBuildError(DcssaError):
    """TensorRT could not parse or build a graph."""


def profiles(bundle: Bundle, *, max_batch: int = 8, max_strokes: int | None = None,
             photo_max_side: int = 896) -> dict[str, dict[str, tuple[tuple[int, ...], ...]]]:
    """(min, opt, max) shape per dynamic input of each graph: what the runtime feeds."""
    d, t = bundle.feature_dim, max_strokes or bundle.max_strokes
    side = 299
    return {
        mf.SKETCH_ENCODER: {"images": ((1, 3, side, side), (1, 3, side, side), (max_batch, 3, side, side))},
        mf.PHOTO_ENCODER: {"images": ((1, 3, side, side), (max(1, max_batch // 2), 3, side, side * 4 // 3),
                                      (max_batch, 3, photo_max_side, photo_max_side))},
        mf.HEAD_STEP: {"past_keys": ((0, d), (min(16, t), d), (t, d)),
                       "past_values": ((0, d), (min(16, t), d), (t, d))},
        mf.HEAD_FULL: {"features": ((1, d), (min(16, t), d), (t, d))},
        mf.SKETCH_PROJECTION: {"features": ((1, d), (1, d), (max_batch, d))},
    }


def engine_sources(bundle: Bundle, precisions: Sequence[str]) -> list[tuple[str, str, str, str]]:
    """(graph, precision, ONNX file to build from, graph file the runtime loads). A graph without the
    precision gets its fp32 engine, as the runtime falls back to fp32 for it; int8 builds from the
    symmetric (TensorRT) Q/DQ file while the runtime names the graph by its CPU int8 file."""
    out, seen = [], set()
    for graph, per in bundle.manifest["graphs"].items():
        for p in ["fp32", *precisions]:
            prec = p if p in per else "fp32"
            if (graph, prec) in seen:
                continue
            seen.add((graph, prec))
            entry = per[prec]
            out.append((graph, prec, entry.get("tensorrt_file") or entry["file"], entry["file"]))
    return out


def build_engines(
    bundle_path: str | Path,
    precisions: Sequence[str] = ("fp16", "int8"),
    *,
    max_batch: int = 8,
    max_strokes: int | None = None,
    workspace_mib: int = 2048,
    say: Say = lambda _m: None,
) -> dict:
    """Build and record an engine per graph and precision; returns the new manifest."""
    try:
        import tensorrt as trt
    except ImportError:
        raise EngineBuildError(
            "building engines needs TensorRT's Python package (10.x or 11.x) on a machine with an NVIDIA GPU",
            hint="run this on the GPU box (pip install tensorrt, or JetPack's python3-libnvinfer); "
                 "CPU machines use --backend ort-cpu",
        ) from None
    from dcssa.runtime.backends.cuda_memory import cuda_api

    bundle_path = Path(bundle_path)
    bundle = Bundle.load(bundle_path)
    missing = [p for p in precisions if p != "fp32" and p not in bundle.precisions(mf.SKETCH_ENCODER)]
    if missing:
        raise EngineBuildError(
            f"the bundle has no {', '.join(missing)} graphs to build engines from",
            path=bundle_path,
            hint=f"add them first: `dcssa-export calibrate {bundle_path} --data DATA --precision {','.join(missing)}`",
        )
    device = cuda_api().device()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    shapes = profiles(bundle, max_batch=max_batch, max_strokes=max_strokes)
    cache_file = bundle_path / TIMING_CACHE
    cache_blob = cache_file.read_bytes() if cache_file.is_file() else b""
    work = Path(tempfile.mkdtemp(prefix=".engines-", dir=bundle_path))
    staged, records = {}, {}
    cache = None
    for graph, prec, onnx_file, graph_file in engine_sources(bundle, precisions):
        say(f"tensorrt: building {graph} ({prec}) from {onnx_file}")
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(bundle.verified_file(onnx_file))):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(f"TensorRT could not parse {onnx_file}: {errors}", path=bundle_path / onnx_file,
                                   hint="check the TensorRT version (10.x or newer) or re-export the bundle")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
        if not strongly_typed:  # TensorRT < 9: precision from builder flags
            if prec == "fp16":
                config.set_flag(trt.BuilderFlag.FP16)
            if prec == "int8":
                config.set_flag(trt.BuilderFlag.INT8)
        cache = config.create_timing_cache(cache.serialize() if cache is not None else cache_blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
        profile = builder.create_optimization_profile()
        used = {}
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if any(d < 0 for d in tuple(tensor.shape)):
                lo, opt, hi = shapes[graph][tensor.name]
                profile.set_shape(tensor.name, lo, opt, hi)
                used[tensor.name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
        config.add_optimization_profile(profile)
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise EngineBuildError(f"TensorRT failed to build {graph} ({prec})", path=bundle_path / onnx_file,
                                   hint="see the TensorRT log above; try a larger --workspace-mib")
        cache = config.get_timing_cache()
        sm = device["compute_capability"].replace(".", "")
        data = bytes(blob)
        fname = f"{graph}.{prec}.sm{sm}-{hashlib.sha256(data).hexdigest()[:8]}.engine"  # never overwrites
        (work / fname).write_bytes(data)
        staged[fname] = work / fname
        records.setdefault(graph, {})[prec] = {"file": fname, "onnx": onnx_file, "graph_file": graph_file, "profile": used,
                                               "strongly_typed": strongly_typed}
    if cache is not None:
        (work / TIMING_CACHE).write_bytes(bytes(cache.serialize()))
        staged[TIMING_CACHE] = work / TIMING_CACHE

    def update(m: dict) -> None:
        m["engines"] = {
            **local_metadata(trt.__version__, device),
            "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "max_batch": max_batch,
            "max_strokes": max_strokes or bundle.max_strokes,
            "workspace_mib": workspace_mib,
            "timing_cache": TIMING_CACHE if cache is not None else None,
            "graphs": records,
        }

    try:
        return commit(bundle_path, staged, update)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
