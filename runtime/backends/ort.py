"""onnxruntime backends: CPU (the default everywhere), CUDA and TensorRT execution providers.

``ort-trt`` loads what TensorRT can run and tells the provider what it needs to know: for int8 the
bundle's symmetric Q/DQ graph (``tensorrt_file``; the CPU int8 graph has uint8 asymmetric
activations, which TensorRT refuses); for every graph explicit optimisation profiles, the same ones
``dcssa-export engines`` builds with (:mod:`dcssa.runtime.backends.profiles`), so the head's growing
K/V cache does not rebuild the engine. Precision flags: none on onnxruntime >= 1.18 (built against
TensorRT 10+), whose provider builds a STRONGLY TYPED network only when neither ``trt_fp16_enable``
nor ``trt_int8_enable`` is set (onnxruntime PR #24298): with a flag, TensorRT may run the typed
graphs' fp32 islands (ReduceL2's sum of squares, which overflows fp16) in fp16. Older builds
(TensorRT 8.6) have no strong typing and need the flags (:func:`trt_precision_flags`).

``ort-cuda`` runs float graphs only: the CUDA provider has no kernels for the int8 graphs' Q/DQ
pattern and would run them on the CPU, so int8 is refused by name (:func:`refusal`) before any
provider is looked up, the same on every machine, and ``auto`` never picks ort-cuda for int8.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..contract import manifest as mf
from ..errors import BackendError
from ..extras import require
from .base import REEXPORT_HINT, Backend, Runner, backend_error, spec_for
from .profiles import graph_profiles, ort_trt_options

if TYPE_CHECKING:
    from ..contract.bundle import Bundle

PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}


#: the first onnxruntime release built against TensorRT 10 (strongly typed networks)
ORT_TRT10 = (1, 18)


def _ort():
    return require("onnxruntime", "the onnxruntime backends")


def trt_precision_flags(precision: str, ort_version: str) -> dict[str, str]:
    """The provider's precision flags for a graph of ``precision``: none on TensorRT 10+ builds
    (the typed graph decides, strongly typed), the fp16/int8 flags on older ones."""
    try:
        version = tuple(int(x) for x in ort_version.split(".")[:2])
    except ValueError:
        version = ORT_TRT10
    if version >= ORT_TRT10 or precision not in ("fp16", "int8"):
        return {}
    flags = {"trt_fp16_enable": "True"}
    if precision == "int8":
        flags["trt_int8_enable"] = "True"
    return flags


def refusal(name: str, precision: str | None) -> str | None:
    """Why onnxruntime backend ``name`` refuses ``precision`` (None: it runs it); asked before the
    provider is looked up, so the answer does not depend on the machine."""
    if name == "ort-cuda" and precision == "int8":
        return ("ort-cuda does not run int8: onnxruntime's CUDA provider has no kernels for the int8 graphs' "
                "quantize/dequantize pattern and would run them on the CPU")
    return None


INT8_HINT = "use --backend ort-trt or tensorrt for int8 on a GPU, ort-cpu / openvino on a CPU, or --precision fp16"


class OrtRunner(Runner):
    """``InferenceSession.run`` is thread-safe, so the server's threads may share one runner."""

    def __init__(self, session, spec: mf.GraphSpec) -> None:
        self.session = session
        self.spec = spec
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())

    def _run_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, outs))


class OrtBackend(Backend):
    """One onnxruntime execution provider (CPU fallback kept last, as onnxruntime requires)."""

    def __init__(self, name: str = "ort-cpu", *, threads: int | None = None, cache_dir: Path | None = None) -> None:
        if name not in PROVIDERS:
            raise BackendError(f"unknown onnxruntime backend {name!r}", hint=f"use one of {', '.join(PROVIDERS)}")
        self.name = name
        self.provider = PROVIDERS[name]
        self.threads = threads
        self.cache_dir = cache_dir
        self._trt_options: dict[Path, dict[str, str]] = {}  # ort-trt: per graph file, set by artifact()
        if not self.available_for(name):
            have = [n for n, p in PROVIDERS.items() if p in _ort().get_available_providers()]
            raise BackendError(
                f"backend {name!r} needs onnxruntime's {self.provider}, which this installation lacks "
                f"(available here: {', '.join(have)})",
                hint="install onnxruntime-gpu on a machine with an NVIDIA GPU, or pick an available backend",
            )

    @staticmethod
    def available_for(name: str) -> bool:
        return PROVIDERS[name] in _ort().get_available_providers()

    @classmethod
    def available(cls) -> bool:
        return True

    def session_options(self, *, spin: bool = True):
        """Options of one InferenceSession; ``spin``: may its thread pool spin-wait between runs.

        Every session owns a thread pool whose workers, by default, keep spinning after a run. A
        stroke runs the encoder and then the small head step: with both pools spinning, the head's
        idle workers take the cores from the next encoder run (measured on a 2-core EPYC: 116 -> 76
        ms per fp32 encoder pass, 91 -> 49 ms int8, once only the encoders spin). Spinning still
        pays for an encoder's own op-to-op hand-offs, so heavy graphs (``GraphSpec.heavy``) spin
        and every other graph blocks when idle.
        """
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        return so

    def artifact(self, bundle: Bundle, name: str, precision: str) -> Path:
        """The graph file this provider runs; for ``ort-trt`` also its TensorRT provider options."""
        why = refusal(self.name, precision)
        if why:
            raise BackendError(why, path=bundle.path, hint=INT8_HINT)
        if self.name != "ort-trt":
            return super().artifact(bundle, name, precision)
        entry = bundle.graph_entry(name, precision)
        path = bundle.verified_file(entry.get("tensorrt_file") or entry["file"])
        opts = ort_trt_options(graph_profiles(bundle).get(name, {}))
        opts.update(trt_precision_flags(precision, _ort().__version__))
        self._trt_options[Path(path)] = opts
        return path

    def provider_list(self, path: Path | None = None) -> list:
        if self.name == "ort-cpu":
            return ["CPUExecutionProvider"]
        if self.name == "ort-cuda":
            return [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"]
        opts: dict = dict(self._trt_options.get(Path(path), {})) if path is not None else {}
        if self.cache_dir is not None:
            os.makedirs(self.cache_dir, exist_ok=True)
            opts.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(self.cache_dir),
                trt_timing_cache_enable=True,
                trt_timing_cache_path=str(self.cache_dir),
            )
        return [("TensorrtExecutionProvider", opts), "CUDAExecutionProvider", "CPUExecutionProvider"]

    def load(self, path: Path, spec: mf.GraphSpec | None = None, *, precision: str | None = None) -> Runner:
        if precision not in (None, "fp32"):
            raise BackendError(f"{self.name} has no {precision} execution mode", hint="load the graph file of that precision")
        ort = _ort()
        spec = spec_for(path, spec)
        options = self.session_options(spin=spec.heavy)
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=self.provider_list(path))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise backend_error("onnxruntime could not load the graph", exc, path=path, hint=REEXPORT_HINT) from None
        # onnxruntime-gpu on a machine without a usable GPU silently falls back to the CPU.
        if self.provider not in session.get_providers():
            raise BackendError(
                f"onnxruntime fell back to {session.get_providers()} instead of {self.provider}",
                path=path,
                hint="check the CUDA/TensorRT libraries and the driver, or use --backend ort-cpu",
            )
        return OrtRunner(session, spec)

    def describe(self) -> dict:
        return {"backend": self.name, "provider": self.provider, "onnxruntime": _ort().__version__, "threads": self.threads}
