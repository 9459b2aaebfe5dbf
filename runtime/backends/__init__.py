"""Backend registry: names users type (``--backend``) to :class:`Backend` factories."""

from __future__ import annotations

from pathlib import Path

from ..errors import BackendError
from .base import Backend, Runner
from .ort import PROVIDERS, OrtBackend

__all__ = ["Backend", "Runner", "available_backends", "get_backend", "BACKEND_NAMES"]

BACKEND_NAMES = tuple(PROVIDERS)


def available_backends() -> list[str]:
    """Backends that can run on this machine now."""
    return [n for n in BACKEND_NAMES if OrtBackend.available_for(n)]


def get_backend(name: str = "auto", *, threads: int | None = None, cache_dir: Path | None = None) -> Backend:
    """Resolve a backend name; ``auto`` picks the fastest available (GPU providers first)."""
    if name == "auto":
        have = available_backends()
        for pick in ("ort-trt", "ort-cuda", "ort-cpu"):
            if pick in have:
                name = pick
                break
    if name not in BACKEND_NAMES:
        raise BackendError(
            f"unknown backend {name!r}",
            hint=f"choose one of: auto, {', '.join(BACKEND_NAMES)} (available here: {', '.join(available_backends())})",
        )
    return OrtBackend(name, threads=threads, cache_dir=cache_dir)
