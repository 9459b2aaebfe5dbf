"""Checkpoint -> verified bundle folder (graphs + manifest.json), written atomically.

The model family is detected from the checkpoint's keys (or given); each family has its own loader
and exporter (:mod:`.dcssa`, :mod:`.arnet`), all called the same way from :data:`EXPORTERS`.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dcssa.export.arnet import export_arnet, is_arnet
from dcssa.export.checkpoint import CheckpointError, read_pickle
from dcssa.export.dcssa import export_dcssa
from dcssa.runtime.atomic import refuse_existing
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.progress import Say, silent

#: family -> its exporter: ``(ckpt_paths, out, *, num_heads, phase, sketch_canvas, line_width, obj, force,
#: tools, say) -> manifest``; each refuses the options that are not its own
EXPORTERS: dict[str, Callable[..., dict]] = {mf.DCSSA: export_dcssa, mf.ARNET: export_arnet}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def tool_versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import torchvision

    return {
        "dcssa-rt": _version("dcssa-rt"),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def detect_family(ckpt_paths: Sequence[str | Path]) -> tuple[str, object | None]:
    """The model family of a checkpoint from its keys, and the file already read (one file only)."""
    paths = [Path(p) for p in ckpt_paths]
    if len(paths) != 1 or paths[0].is_dir():
        return mf.DCSSA, None  # only DC-SSA's phase-1 trio comes in several files
    obj = read_pickle(paths[0])
    return (mf.ARNET if is_arnet(obj) else mf.DCSSA), obj


def export_bundle(
    ckpt_paths: Sequence[str | Path],
    out: str | Path = "dcssa-bundle",
    *,
    num_heads: int | None = None,
    phase: int | None = None,
    family: str | None = None,
    sketch_canvas: int | None = None,
    line_width: int | None = None,
    force: bool = False,
    say: Say = silent,
) -> dict:
    """The whole export; leaves either a complete verified bundle at ``out`` or nothing.

    ``family`` (``dcssa`` / ``arnet``) is detected from the checkpoint's keys unless given;
    ``sketch_canvas`` / ``line_width`` override ARNet's live-sketch drawing (DC-SSA's is fixed).
    """
    out = Path(out)
    refuse_existing(out, force)
    obj = None
    if family is None:
        family, obj = detect_family(ckpt_paths)
        say(f"model family: {family} (detected from the checkpoint's keys)")
    elif family == mf.DCSSA and detect_family(ckpt_paths)[0] == mf.ARNET:
        raise CheckpointError("is an ARNet checkpoint (img_model / skt_model encoders), not DC-SSA",
                              path=Path(ckpt_paths[0]), hint="drop --family dcssa (or pass --family arnet)")
    return EXPORTERS[family](ckpt_paths, out, num_heads=num_heads, phase=phase, sketch_canvas=sketch_canvas,
                             line_width=line_width, obj=obj, force=force, tools=tool_versions(), say=say)
