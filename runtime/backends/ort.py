"""onnxruntime backends: CPU (the default everywhere), CUDA and TensorRT execution providers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import BackendError
from .base import Backend, Runner

PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is a base dependency
        raise BackendError(f"onnxruntime is not installed ({exc})", hint="pip install onnxruntime") from None
    return onnxruntime


class OrtRunner(Runner):
    def __init__(self, session, label: str) -> None:
        self.session = session
        self.name = label
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())
        self.calls = 0

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        outs = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, outs))


class OrtBackend(Backend):
    """One onnxruntime execution provider (CPU fallback kept last, as onnxruntime requires)."""

    def __init__(
        self,
        name: str = "ort-cpu",
        *,
        threads: int | None = None,
        cache_dir: Path | None = None,
        fp16: bool = False,
    ) -> None:
        if name not in PROVIDERS:
            raise BackendError(f"unknown onnxruntime backend {name!r}", hint=f"use one of {', '.join(PROVIDERS)}")
        self.name = name
        self.provider = PROVIDERS[name]
        self.threads = threads
        self.cache_dir = cache_dir
        self.fp16 = fp16
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

    def session_options(self):
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return so

    def provider_list(self) -> list:
        if self.name == "ort-cpu":
            return ["CPUExecutionProvider"]
        if self.name == "ort-cuda":
            return [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"]
        opts: dict = {"trt_fp16_enable": self.fp16}
        if self.cache_dir is not None:
            os.makedirs(self.cache_dir, exist_ok=True)
            opts.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(self.cache_dir),
                trt_timing_cache_enable=True,
                trt_timing_cache_path=str(self.cache_dir),
            )
        return [("TensorrtExecutionProvider", opts), "CUDAExecutionProvider", "CPUExecutionProvider"]

    def load(self, path: Path, *, label: str | None = None) -> Runner:
        ort = _ort()
        try:
            session = ort.InferenceSession(str(path), sess_options=self.session_options(), providers=self.provider_list())
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BackendError(
                f"onnxruntime could not load the graph ({str(exc).splitlines()[0]})",
                path=path,
                hint="the file may be corrupted: re-export the bundle with dcssa-export",
            ) from None
        # onnxruntime-gpu on a machine without a usable GPU silently falls back to the CPU.
        if self.provider not in session.get_providers():
            raise BackendError(
                f"onnxruntime fell back to {session.get_providers()} instead of {self.provider}",
                path=path,
                hint="check the CUDA/TensorRT libraries and the driver, or use --backend ort-cpu",
            )
        return OrtRunner(session, label or Path(path).stem)

    def describe(self) -> dict:
        return {"backend": self.name, "provider": self.provider, "onnxruntime": _ort().__version__, "threads": self.threads}
