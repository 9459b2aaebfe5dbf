"""TensorRT engines from the bundle's precision-typed ONNX graphs (run on the GPU box).

Networks are STRONGLY TYPED: every layer's precision comes from the ONNX types and the Q/DQ nodes
written by :mod:`dcssa.calibration.fp16` / :mod:`dcssa.calibration.int8`. The creation flags follow
the TensorRT release (:func:`network_flags`): 11.x is always strongly typed (its STRONGLY_TYPED flag
is deprecated and set only while it exists; ``BuilderFlag.FP16/INT8`` are gone there and never
used); 10.x sets STRONGLY_TYPED; 9.x sets STRONGLY_TYPED and EXPLICIT_BATCH (its ONNX parser still
needs an explicit-batch network); only < 9 falls back to EXPLICIT_BATCH plus the precision builder
flags. One optimisation profile per graph covers the runtime's shapes (batch 1..max_batch tuned at
the serving batch, stroke caches 0..max_strokes); the timing cache is kept in the bundle so a
rebuild reuses the kernel timings. ``version_compatible`` builds plans a later TensorRT of the same
major can load (a Triton server's, say), at some cost in speed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcssa.calibration.job import commit
from dcssa.calibration.options import EngineOptions
from dcssa.runtime.backends.profiles import Shapes, graph_profiles
from dcssa.runtime.backends.tensorrt import local_metadata, shared_logger, trt_major
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import Bundle
from dcssa.runtime.errors import BundleError, DcssaError
from dcssa.runtime.extras import require
from dcssa.runtime.progress import Say, silent

TIMING_CACHE = "tensorrt.timing-cache"


class EngineBuildError(DcssaError):
    """TensorRT could not parse or build a graph."""


def profiles(bundle: Bundle, *, max_batch: int = EngineOptions.max_batch, max_strokes: int | None = None,
             photo_max_side: int = EngineOptions.photo_max_side, opt_batch: int | None = None) -> dict[str, dict[str, Shapes]]:
    """(min, opt, max) shape per dynamic input of each graph (:func:`dcssa.runtime.backends.profiles.graph_profiles`,
    which ``--backend ort-trt`` passes to onnxruntime too)."""
    try:
        return graph_profiles(bundle, max_batch=max_batch, max_strokes=max_strokes, photo_max_side=photo_max_side,
                              opt_batch=opt_batch)
    except BundleError as exc:
        raise EngineBuildError(exc.message, path=exc.path, hint=exc.hint) from None


def engine_sources(bundle: Bundle, precisions: Sequence[str], graphs: Sequence[str] = ()) -> list[tuple[str, str, str, str]]:
    """(graph, precision, ONNX file to build from, graph file the runtime loads) of ``graphs`` (all when
    empty). A graph without the precision gets its fp32 engine, as the runtime falls back to fp32 for
    it; int8 builds from the symmetric (TensorRT) Q/DQ file while the runtime names the graph by its
    CPU int8 file."""
    unknown = sorted(set(graphs) - set(bundle.manifest["graphs"]))
    if unknown:
        raise EngineBuildError(f"the bundle has no graph {', '.join(unknown)}", path=bundle.path,
                               hint=f"--graphs takes {', '.join(bundle.manifest['graphs'])}")
    out, seen = [], set()
    for graph, per in bundle.manifest["graphs"].items():
        if graphs and graph not in graphs:
            continue
        for p in precisions:
            prec = p if p in per else "fp32"
            if (graph, prec) in seen:
                continue
            seen.add((graph, prec))
            entry = per[prec]
            out.append((graph, prec, entry.get("tensorrt_file") or entry["file"], entry["file"]))
    return out


def _tensorrt() -> Any:
    return require("tensorrt", "building engines (TensorRT 10.x or 11.x, on a machine with an NVIDIA GPU)",
                   hint="run this on the GPU box (pip install tensorrt, or JetPack's python3-libnvinfer); "
                        "CPU machines use --backend ort-cpu")


def network_flags(trt: Any) -> tuple[int, bool]:
    """(create_network flags, strongly typed?) for this TensorRT release; see the module docstring."""
    kinds, major = trt.NetworkDefinitionCreationFlag, trt_major(trt)
    typed = hasattr(kinds, "STRONGLY_TYPED")
    flags = 1 << int(kinds.STRONGLY_TYPED) if typed else 0
    if major >= 11:  # always strongly typed; the deprecated flag only while it exists
        return flags, True
    if major < 10 and hasattr(kinds, "EXPLICIT_BATCH"):  # < 10: flags 0 is implicit batch, which the parser refuses
        flags |= 1 << int(kinds.EXPLICIT_BATCH)
    return flags, typed


@dataclass
class _EngineBuilder:
    """One TensorRT builder for a bundle's engines; the timing cache carries over between builds."""

    trt: Any
    bundle: Bundle
    shapes: dict[str, dict[str, Shapes]]
    workspace_mib: int
    work: Path
    sm: str
    cache_blob: bytes = b""
    cache: Any = None
    records: dict[str, dict] = field(default_factory=dict)
    staged: dict[str, Path] = field(default_factory=dict)

    verbose: bool = False
    say: Say = silent
    version_compatible: bool = False

    def __post_init__(self) -> None:
        self.logger = shared_logger(self.trt, verbose=self.verbose)
        self.builder = self.trt.Builder(self.logger)
        self.flags, self.strongly_typed = network_flags(self.trt)

    def network_flags(self) -> int:
        return self.flags

    def _parse(self, onnx_file: str) -> Any:
        trt = self.trt
        network = self.builder.create_network(self.network_flags())
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(self.bundle.verified_file(onnx_file))):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(f"TensorRT could not parse {onnx_file}: {errors}", path=self.bundle.path / onnx_file,
                                   hint="check the TensorRT version (10.x or newer) or re-export the bundle")
        return network

    def _config(self, prec: str) -> Any:
        trt = self.trt
        config = self.builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mib << 20)
        if not self.strongly_typed and trt_major(trt) < 11:  # TensorRT < 9: precision from builder flags
            if prec == "fp16":
                config.set_flag(trt.BuilderFlag.FP16)
            if prec == "int8":
                config.set_flag(trt.BuilderFlag.INT8)
        if self.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        self._timing_cache(config)
        return config

    def _timing_cache(self, config: Any) -> None:
        """Set the carried-over timing cache; a cache from another GPU / TensorRT build is replaced by an
        empty one (said, not silently unused); TensorRT may return no cache at all (then: none, said)."""
        blob = bytes(self.cache.serialize()) if self.cache is not None else self.cache_blob
        self.cache = config.create_timing_cache(blob)
        if self.cache is not None and config.set_timing_cache(self.cache, ignore_mismatch=False):
            return
        if self.cache is not None:
            self.say(f"tensorrt: the bundle's {TIMING_CACHE} was made on another GPU or TensorRT build; "
                     "starting a new timing cache")
        self.cache_blob = b""
        self.cache = config.create_timing_cache(b"")
        if self.cache is None:
            self.say("tensorrt: TensorRT could not create a timing cache; building without one (slower builds)")
            return
        if not config.set_timing_cache(self.cache, ignore_mismatch=False):
            raise EngineBuildError("TensorRT refused an empty timing cache", path=self.bundle.path / TIMING_CACHE,
                                   hint="check the TensorRT installation")

    def _profile(self, network: Any, config: Any, graph: str) -> dict:
        """One optimisation profile over the dynamic inputs; returns it as recorded in the manifest."""
        profile = self.builder.create_optimization_profile()
        used = {}
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if any(d < 0 for d in tuple(tensor.shape)):
                lo, opt, hi = self.shapes[graph][tensor.name]
                profile.set_shape(tensor.name, lo, opt, hi)
                used[tensor.name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
        config.add_optimization_profile(profile)
        return used

    def build(self, graph: str, prec: str, onnx_file: str, graph_file: str) -> None:
        """Build, stage and record the engine of ``graph`` at ``prec``."""
        network = self._parse(onnx_file)
        config = self._config(prec)
        used = self._profile(network, config, graph)
        blob = self.builder.build_serialized_network(network, config)
        if blob is None:
            raise EngineBuildError(f"TensorRT failed to build {graph} ({prec})", path=self.bundle.path / onnx_file,
                                   hint="see the TensorRT log above; try a larger --workspace-mib")
        self.cache = config.get_timing_cache() or self.cache
        data = bytes(blob)
        fname = f"{graph}.{prec}.sm{self.sm}-{hashlib.sha256(data).hexdigest()[:8]}.engine"  # never overwrites
        (self.work / fname).write_bytes(data)
        self.staged[fname] = self.work / fname
        self.records.setdefault(graph, {})[prec] = {"file": fname, "onnx": onnx_file, "graph_file": graph_file,
                                                    "profile": used, "strongly_typed": self.strongly_typed,
                                                    "version_compatible": self.version_compatible}

    def stage_timing_cache(self) -> str | None:
        if self.cache is None:
            return None
        (self.work / TIMING_CACHE).write_bytes(bytes(self.cache.serialize()))
        self.staged[TIMING_CACHE] = self.work / TIMING_CACHE
        return TIMING_CACHE


def merged_records(old: dict | None, record: dict, new: dict[str, dict]) -> dict[str, dict]:
    """The engines of this build over those already recorded, when those were built with the same
    TensorRT, GPU and limits (else only the new ones: an engine from another build cannot run beside)."""
    same = old is not None and all(old.get(k) == v for k, v in record.items())
    out = {g: dict(per) for g, per in (old or {}).get("graphs", {}).items()} if same else {}
    for graph, per in new.items():
        out.setdefault(graph, {}).update(per)
    return out


def _check_sources(bundle: Bundle, precisions: Sequence[str]) -> None:
    missing = [p for p in precisions if p != "fp32" and p not in bundle.precisions(mf.SKETCH_ENCODER)]
    if missing:
        raise EngineBuildError(
            f"the bundle has no {', '.join(missing)} graphs to build engines from",
            path=bundle.path,
            hint=f"add them first: `dcssa-export calibrate {bundle.path} --data DATA --precision {','.join(missing)}`",
        )


def build_engines(
    bundle_path: str | Path,
    precisions: Sequence[str] = EngineOptions.precisions,
    *,
    max_batch: int = EngineOptions.max_batch,
    max_strokes: int | None = EngineOptions.max_strokes,
    workspace_mib: int = EngineOptions.workspace_mib,
    verbose: bool = EngineOptions.verbose,
    graphs: Sequence[str] = EngineOptions.graphs,
    opt_batch: int | None = EngineOptions.opt_batch,
    photo_max_side: int = EngineOptions.photo_max_side,
    version_compatible: bool = EngineOptions.version_compatible,
    say: Say = silent,
) -> dict:
    """Build and record an engine per graph and precision; returns the new manifest.

    ``verbose``: TensorRT's builder log at VERBOSE (layer precisions, tactics) instead of WARNING.
    ``graphs``: only these (gpu-check builds the per-stroke graphs first); the engines already recorded
    for other graphs or precisions are kept when they were built here with the same limits."""
    trt = _tensorrt()
    from dcssa.runtime.backends.cuda_memory import cuda_api

    bundle_path = Path(bundle_path)
    bundle = Bundle.load(bundle_path)
    _check_sources(bundle, precisions)
    device = cuda_api().device()
    cache_file = bundle_path / TIMING_CACHE
    work = Path(tempfile.mkdtemp(prefix=".engines-", dir=bundle_path))
    try:
        shapes = profiles(bundle, max_batch=max_batch, max_strokes=max_strokes, photo_max_side=photo_max_side,
                          opt_batch=opt_batch)
        eb = _EngineBuilder(trt, bundle, shapes, workspace_mib, work, device["compute_capability"].replace(".", ""),
                            cache_file.read_bytes() if cache_file.is_file() else b"", verbose=verbose, say=say,
                            version_compatible=version_compatible)
        for graph, prec, onnx_file, graph_file in engine_sources(bundle, precisions, graphs):
            say(f"tensorrt: building {graph} ({prec}) from {onnx_file}")
            eb.build(graph, prec, onnx_file, graph_file)
        timing_cache = eb.stage_timing_cache()
        record = {**local_metadata(trt.__version__, device), "max_batch": max_batch,
                  "max_strokes": max_strokes or bundle.max_strokes, "photo_max_side": photo_max_side}

        def update(m: dict) -> None:
            m["engines"] = {
                **record,
                "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "workspace_mib": workspace_mib,
                "version_compatible": version_compatible,
                "timing_cache": timing_cache,
                "graphs": merged_records(m.get("engines"), record, eb.records),
            }

        return commit(bundle_path, eb.staged, update)
    finally:
        shutil.rmtree(work, ignore_errors=True)
