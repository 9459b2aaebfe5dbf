"""Backend registry: the names users type (``--backend``) mapped to their factories, in one table.

Each :class:`BackendEntry` knows how to tell whether its backend can run here and how to build it
from the options that backend uses (no backend receives an argument it ignores). ``auto`` walks
:data:`AUTO_ORDER`, fastest first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendError, MissingExtra
from .base import Backend, Runner, SerializedRunner, thread_safe
from .openvino import OpenVINOBackend
from .ort import INT8_HINT, PROVIDERS, OrtBackend, refusal
from .tensorrt import TensorRTBackend
from .triton import TritonBackend

__all__ = [
    "AUTO_ORDER",
    "Backend",
    "BackendEntry",
    "REGISTRY",
    "Runner",
    "SerializedRunner",
    "available_backends",
    "backend_names",
    "execution_precisions",
    "get_backend",
    "thread_safe",
]


@dataclass(frozen=True)
class BackendEntry:
    """One ``--backend`` name: availability probe, factory, and what ``auto`` should know."""

    cls: type[Backend]
    make: Callable[[int | None, Path | None], Backend]  # (threads, cache_dir) -> backend
    available: Callable[[], bool]
    #: ``auto`` may pick it for graph precisions (not only for its execution modes)
    auto_default: Callable[[], bool] = lambda: True
    #: why it refuses a precision (None: runs it), decided without looking at the machine
    refuses: Callable[[str | None], str | None] = lambda precision: None


def _ort_entry(name: str) -> BackendEntry:
    return BackendEntry(OrtBackend, lambda threads, cache_dir: OrtBackend(name, threads=threads, cache_dir=cache_dir),
                        lambda: OrtBackend.available_for(name), refuses=lambda precision: refusal(name, precision))


#: name -> entry, in the order the CLIs list them
REGISTRY: dict[str, BackendEntry] = {
    **{name: _ort_entry(name) for name in PROVIDERS},
    # probes looked up at call time (tests and plugins may replace a class's probe)
    "tensorrt": BackendEntry(TensorRTBackend, lambda threads, cache_dir: TensorRTBackend(),
                             lambda: TensorRTBackend.available()),
    "openvino": BackendEntry(
        OpenVINOBackend, lambda threads, cache_dir: OpenVINOBackend(threads=threads, cache_dir=cache_dir),
        lambda: OpenVINOBackend.available(), auto_default=lambda: OpenVINOBackend.preferred(),
    ),
    # remote encoders: only with a server named (--triton-url / $DCSSA_TRITON_URL); never `auto`'s pick
    "triton": BackendEntry(TritonBackend, lambda threads, cache_dir: TritonBackend(threads=threads),
                           lambda: TritonBackend.available(), auto_default=lambda: False),
}
#: ``auto``'s one preference list, fastest first: native TensorRT, onnxruntime's GPU providers,
#: OpenVINO (on Intel CPUs, or wherever a precision only it runs is asked for), onnxruntime CPU
AUTO_ORDER = ("tensorrt", "ort-trt", "ort-cuda", "openvino", "ort-cpu")


def backend_names() -> tuple[str, ...]:
    """Every backend name ``--backend`` takes (besides ``auto``)."""
    return tuple(REGISTRY)


def execution_precisions(name: str) -> tuple[str, ...]:
    """Precisions backend ``name`` runs as an execution mode of the fp32 graph (``openvino``: bf16)."""
    return REGISTRY[name].cls.execution_precisions if name in REGISTRY else ()


def _runs_modes() -> set[str]:
    return {p for e in REGISTRY.values() for p in e.cls.execution_precisions}


def _auto_fits(name: str, precision: str | None) -> bool:
    """Whether ``auto`` may pick ``name`` for ``precision`` (availability is checked apart)."""
    entry = REGISTRY[name]
    if entry.refuses(precision):
        return False
    if precision in _runs_modes():
        return precision in entry.cls.execution_precisions
    return entry.auto_default()


def available_backends() -> list[str]:
    """Backends that can run on this machine now."""
    return [n for n, e in REGISTRY.items() if e.available()]


def _auto(threads: int | None, cache_dir: Path | None, precision: str | None) -> Backend:
    reasons = []
    for pick in AUTO_ORDER:
        if not (REGISTRY[pick].available() and _auto_fits(pick, precision)):
            continue
        try:
            return get_backend(pick, threads=threads, cache_dir=cache_dir, precision=precision)
        except (BackendError, MissingExtra) as exc:  # not installed or not working here: try the next one
            reasons.append(f"{pick}: {exc.message}")
    raise BackendError(
        f"no backend available here runs {precision or 'fp32'}" + (f" ({'; '.join(reasons)})" if reasons else ""),
        hint="bf16 needs the openvino backend (pip install 'dcssa-rt[openvino]') on a CPU with AMX or "
        "AVX512-BF16; or pick another --precision",
    )


def get_backend(name: str = "auto", *, threads: int | None = None, cache_dir: Path | None = None,
                precision: str | None = None) -> Backend:
    """Resolve a backend name; ``auto`` picks the first of :data:`AUTO_ORDER` that is available
    and runs ``precision`` here (GPU first, then OpenVINO on Intel CPUs, then onnxruntime CPU)."""
    if name == "auto":
        return _auto(threads, cache_dir, precision)
    if name not in REGISTRY:
        raise BackendError(
            f"unknown backend {name!r}",
            hint=f"choose one of: auto, {', '.join(REGISTRY)} (available here: {', '.join(available_backends())})",
        )
    why = REGISTRY[name].refuses(precision)
    if why:  # before the provider is looked up: the same refusal on every machine
        raise BackendError(why, hint=INT8_HINT)
    try:
        backend = REGISTRY[name].make(threads, cache_dir)  # raises BackendError saying why not
    except MissingExtra as exc:  # asked for by name: the backend is what is unavailable, the extra is why
        raise BackendError(f"backend {name!r} is not available here: {exc.message}", hint=exc.hint) from None
    if precision in _runs_modes():
        if precision not in backend.execution_precisions:
            runs = [n for n, e in REGISTRY.items() if precision in e.cls.execution_precisions]
            raise BackendError(
                f"backend {name!r} cannot run {precision}: it is an execution mode of {', '.join(runs)}, not a graph file",
                hint=f"use --backend {runs[0]} (or auto), or another --precision",
            )
        backend.check_precision(precision)  # e.g. no native bf16 on this CPU
    return backend
