"""Checkpoint -> verified bundle folder (graphs + manifest.json), written atomically."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from dcssa.runtime import manifest as mf
from dcssa.runtime.atomic import refuse_existing, staged_dir

from .checkpoint import LoadedCheckpoint, load_checkpoint, sha256_file
from .graphs import PhotoEncoder, SketchEncoder, SketchProjection, StrokeHeadFull, StrokeHeadStep
from .model import D, DCSSA, DEFAULT_HEADS
from .onnx_io import export_onnx
from .parity import check_parity

Say = Callable[[str], None]


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def tool_versions() -> dict:
    import onnx
    import onnxruntime
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


def export_graphs(model: DCSSA, folder: Path, heads: int, say: Say = lambda _m: None) -> list[str]:
    """Write the phase's graphs into ``folder``; returns their names."""
    d = D
    names = []
    torch.manual_seed(0)
    say("export: sketch encoder")
    export_onnx(
        SketchEncoder(model, heads),
        (torch.randn(2, 3, 299, 299),),
        folder / f"{mf.SKETCH_ENCODER}.onnx",
        name=mf.SKETCH_ENCODER,
        dynamic_axes={"images": {0: "N"}, "features": {0: "N"}},
    )
    names.append(mf.SKETCH_ENCODER)
    say("export: photo encoder")
    export_onnx(
        PhotoEncoder(model, heads),
        (torch.randn(2, 3, 299, 320),),
        folder / f"{mf.PHOTO_ENCODER}.onnx",
        name=mf.PHOTO_ENCODER,
        dynamic_axes={"images": {0: "N", 2: "H", 3: "W"}, "embeddings": {0: "N"}},
    )
    names.append(mf.PHOTO_ENCODER)
    if model.phase == 2:
        say("export: stroke head (step and full)")
        feat = torch.nn.functional.normalize(torch.rand(1, d), dim=-1)
        export_onnx(
            StrokeHeadStep(model.attn, heads),
            (feat, torch.randn(3, d), torch.randn(3, d)),
            folder / f"{mf.HEAD_STEP}.onnx",
            name=mf.HEAD_STEP,
            dynamic_axes={"past_keys": {0: "T"}, "past_values": {0: "T"}},
        )
        export_onnx(
            StrokeHeadFull(model.attn, heads),
            (torch.nn.functional.normalize(torch.rand(5, d), dim=-1),),
            folder / f"{mf.HEAD_FULL}.onnx",
            name=mf.HEAD_FULL,
            dynamic_axes={"features": {0: "T"}, "embeddings": {0: "T"}},
        )
        names += [mf.HEAD_STEP, mf.HEAD_FULL]
    else:
        say("export: sketch projection")
        export_onnx(
            SketchProjection(model),
            (torch.nn.functional.normalize(torch.rand(2, d), dim=-1),),
            folder / f"{mf.SKETCH_PROJECTION}.onnx",
            name=mf.SKETCH_PROJECTION,
            dynamic_axes={"features": {0: "N"}, "embeddings": {0: "N"}},
        )
        names.append(mf.SKETCH_PROJECTION)
    return names


def build_manifest(
    ckpt: LoadedCheckpoint, folder: Path, names: Sequence[str], heads: int, parity: dict, demo: bool
) -> dict:
    files, graphs = {}, {}
    for name in names:
        fname = f"{name}.onnx"
        files[fname] = {"sha256": sha256_file(folder / fname), "bytes": (folder / fname).stat().st_size}
        graphs[name] = {"fp32": {"file": fname, "precision": "fp32", **mf.signature(name, D, ckpt.embed)}}
    return {
        "schema_version": mf.SCHEMA_VERSION,
        "family": mf.FAMILY,
        "phase": ckpt.phase,
        "demo": demo,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dims": {"feature": D, "embedding": ckpt.embed, "heads": heads, "head_dim": D // heads},
        "limits": {"max_strokes": mf.DEFAULT_MAX_STROKES},
        "preprocessing": mf.default_preprocessing(),
        "graphs": graphs,
        "precisions": ["fp32"],
        "files": files,
        "onnx": {"opset": mf.OPSET, "ir_version": mf.IR_VERSION},
        "tools": tool_versions(),
        "source": {
            "layout": ckpt.layout,
            "checkpoints": ckpt.files,
            "ignored_keys": len(ckpt.ignored_keys),
            "unexpected_keys": ckpt.unexpected_keys,
        },
        "parity": parity,
    }


def export_bundle(
    ckpt_paths: Sequence[str | Path],
    out: str | Path = "dcssa-bundle",
    *,
    num_heads: int = DEFAULT_HEADS,
    phase: int | None = None,
    force: bool = False,
    say: Say = lambda _m: None,
) -> dict:
    """The whole export; leaves either a complete verified bundle at ``out`` or nothing."""
    out = Path(out)
    refuse_existing(out, force)
    say("loading checkpoint")
    ckpt = load_checkpoint(ckpt_paths, num_heads=num_heads, phase=phase)
    with staged_dir(out, force=force) as tmp:
        names = export_graphs(ckpt.model, tmp, num_heads, say)
        parity = check_parity(ckpt.model, tmp, progress=say)
        manifest = build_manifest(ckpt, tmp, names, num_heads, parity, demo=ckpt.demo)
        (tmp / mf.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
