"""The one place optional packages are imported: lazily, and a missing one is a :class:`MissingExtra`
that names the pip extra to install.

The runtime's base install is numpy, onnxruntime, Pillow, click and tqdm; everything else (FAISS, Ray,
OpenVINO, TensorRT, the Triton client, the server, plots, scikit-learn, NNCF) is an extra that a
command needs only when it is asked for.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtra

#: the extra of pyproject.toml that installs each optional top-level package
EXTRAS = {
    "faiss": "faiss",
    "ray": "ray",
    "openvino": "openvino",
    "tritonclient": "triton",
    "cuda": "cu12",
    "fastapi": "serve",
    "uvicorn": "serve",
    "redis": "serve",
    "prometheus_client": "serve",
    "matplotlib": "report",
    "sklearn": "confidence",
    "onnx": "calibrate",
    "torch": "export",
    "torchvision": "export",
}
#: packages that no extra brings (NVIDIA ships them): how to get them instead
NOT_ON_PYPI = {
    "tensorrt": "on a machine with an NVIDIA GPU: pip install tensorrt (x86_64), or JetPack's python3-libnvinfer "
                "(Jetson); plus pip install 'dcssa-rt[cu12]' (CUDA 12 drivers) or 'dcssa-rt[cu13]'",
    "pycuda": "pip install pycuda on a machine with the CUDA toolkit",
    "aimet_onnx": "pip install aimet-onnx (needs torch)",
}


def install_hint(module: str) -> str:
    """How to get ``module``'s top-level package."""
    top = module.split(".")[0]
    if top in NOT_ON_PYPI:
        return NOT_ON_PYPI[top]
    if top in EXTRAS:
        return f"pip install 'dcssa-rt[{EXTRAS[top]}]'"
    return f"pip install {top}"


def require(module: str, needed_for: str, *, hint: str | None = None) -> ModuleType:
    """``module``, imported; a :class:`MissingExtra` naming what needs it and how to install it otherwise
    (``hint``: when the extra alone does not say it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or module
        raise MissingExtra(f"{needed_for} needs {module.split('.')[0]} ({missing} is not importable)",
                           hint=hint or install_hint(module), package=missing) from None


def optional(module: str) -> ModuleType | None:
    """``module`` if it imports, else None: for what a command can do without (a plot, a comparison)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None
