"""The environment block of a benchmark report: which machine, which libraries, how many threads."""

from __future__ import annotations

import os
import platform
import subprocess


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where there is none)."""
    try:
        return set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration, IndexError):
        return set()


def isa() -> str:
    """The vector extensions that decide which kernels the backends pick (fp32 / int8 / bf16)."""
    flags = cpu_flags()
    return " ".join(f for f in ISA_FLAGS if f in flags)


def _torch_threads() -> int | None:
    import sys

    torch = sys.modules.get("torch")  # only if the benchmark imported it: never import torch here
    return torch.get_num_threads() if torch is not None else None


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001 - absent or broken optional library
        return None


def environment(threads: int | None) -> dict:
    return {
        "cpu": cpu_model(),
        "isa": isa(),
        "cores": os.cpu_count(),
        "threads": threads or os.cpu_count(),
        "torch_threads": _torch_threads(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
        "tensorrt": _version("tensorrt"),
        "torch": _version("torch"),
        "faiss": _version("faiss"),
        "gpu": gpu_name(),
    }
