"""Backend registry: names users type (``--backend``) to :class:`Backend` factories."""

from __future__ import annotations

from pathlib import Path

from ..errors import BackendError
from .base import Backend, Runner
from .openvino import OpenVINOBackend
from .ort import PROVIDERS, OrtBackend
from .tensorrt import TensorRTBackend

__all__ = ["Backend", "Runner", "available_backends", "get_backend", "execution_precisions", "BACKEND_NAMES"]

BACKEND_NAMES = (*PROVIDERS, "tensorrt", "openvino")
#: ``auto``'s one preference list, fastest first: native TensorRT, onnxruntime's GPU providers,
#: OpenVINO (on Intel CPUs, or wherever a precision only it runs is asked for), onnxruntime CPU
AUTO_ORDER = ("tensorrt", "ort-trt", "ort-cuda", "openvino", "ort-cpu")
#: precisions some backend runs as an execution mode over the fp32 graph (no graph file of their own)
EXECUTION_PRECISIONS = ("bf16",)


def _backend_class(name: str) -> type[Backend]:
    return {"tensorrt": TensorRTBackend, "openvino": OpenVINOBackend}.get(name, OrtBackend)


def execution_precisions(name: str) -> tuple[str, ...]:
    """Precisions backend ``name`` runs as an execution mode of the fp32 graph (``openvino``: bf16)."""
    return _backend_class(name).execution_precisions if name in BACKEND_NAMES else ()


def _is_available(name: str) -> bool:
    if name in PROVIDERS:
        return OrtBackend.available_for(name)
    return _backend_class(name).available()


def _auto_fits(name: str, precision: str | None) -> bool:
    """Whether ``auto`` may pick ``name`` for ``precision`` (availability is checked apart)."""
    mode = precision in EXECUTION_PRECISIONS
    if mode and precision not in _backend_class(name).execution_precisions:
        return False
    return name != "openvino" or mode or OpenVINOBackend.preferred()


def available_backends() -> list[str]:
    """Backends that can run on this machine now."""
    return [n for n in BACKEND_NAMES if _is_available(n)]


def get_backend(name: str = "auto", *, threads: int | None = None, cache_dir: Path | None = None,
                precision: str | None = None) -> Backend:
    """Resolve a backend name; ``auto`` picks the first of :data:`AUTO_ORDER` that is available
    and runs ``precision`` here (GPU first, then OpenVINO on Intel CPUs, then onnxruntime CPU)."""
    if name == "auto":
        reasons = []
        for pick in AUTO_ORDER:
            if not (_is_available(pick) and _auto_fits(pick, precision)):
                continue
            try:
                return get_backend(pick, threads=threads, cache_dir=cache_dir, precision=precision)
            except BackendError as exc:  # installed but not working here: try the next one
                reasons.append(f"{pick}: {exc.message}")
        raise BackendError(
            f"no backend available here runs {precision or 'fp32'}" + (f" ({'; '.join(reasons)})" if reasons else ""),
            hint="bf16 needs the openvino backend (pip install 'dcssa-rt[openvino]') on a CPU with AMX or "
            "AVX512-BF16; or pick another --precision",
        )
    if name not in BACKEND_NAMES:
        raise BackendError(
            f"unknown backend {name!r}",
            hint=f"choose one of: auto, {', '.join(BACKEND_NAMES)} (available here: {', '.join(available_backends())})",
        )
    if name == "tensorrt":
        backend: Backend = TensorRTBackend(threads=threads, cache_dir=cache_dir)  # raises BackendError saying why not
    elif name == "openvino":
        backend = OpenVINOBackend(threads=threads, cache_dir=cache_dir)
    else:
        backend = OrtBackend(name, threads=threads, cache_dir=cache_dir)
    if precision in EXECUTION_PRECISIONS:
        if precision not in backend.execution_precisions:
            runs = [n for n in BACKEND_NAMES if precision in _backend_class(n).execution_precisions]
            raise BackendError(
                f"backend {name!r} cannot run {precision}: it is an execution mode of {', '.join(runs)}, not a graph file",
                hint=f"use --backend {runs[0]} (or auto), or another --precision",
            )
        backend.check_precision(precision)  # e.g. no native bf16 on this CPU
    return backend
