"""Checkpoint -> verified bundle folder (graphs + manifest.json), written atomically."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dcssa.export.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint, read_pickle
from dcssa.export.graphs import PhotoEncoder, SketchEncoder, SketchProjection, StrokeHeadFull, StrokeHeadStep
from dcssa.export.model import DCSSA, DEFAULT_HEADS, D
from dcssa.export.onnx_io import export_onnx
from dcssa.export.parity import check_parity
from dcssa.runtime.atomic import refuse_existing, staged_dir
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import new_manifest
from dcssa.runtime.progress import Say, silent


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


def _graph_modules(model: DCSSA, heads: int) -> list[tuple[str, torch.nn.Module, tuple, dict]]:
    """(graph name, module, example inputs, dynamic axes) of every graph of the model's phase."""
    d = D
    unit = lambda n: torch.nn.functional.normalize(torch.rand(n, d), dim=-1)  # noqa: E731
    graphs = [
        (mf.SKETCH_ENCODER, SketchEncoder(model, heads), (torch.randn(2, 3, 299, 299),),
         {mf.IMAGES: {0: "N"}, mf.FEATURES: {0: "N"}}),
        (mf.PHOTO_ENCODER, PhotoEncoder(model, heads), (torch.randn(2, 3, 299, 320),),
         {mf.IMAGES: {0: "N", 2: "H", 3: "W"}, mf.EMBEDDINGS: {0: "N"}}),
    ]
    if model.phase == 2:
        graphs += [
            (mf.HEAD_STEP, StrokeHeadStep(model.attn, heads), (unit(1), torch.randn(3, d), torch.randn(3, d)),
             {mf.PAST_KEYS: {0: "T"}, mf.PAST_VALUES: {0: "T"}}),
            (mf.HEAD_FULL, StrokeHeadFull(model.attn, heads), (unit(5),), {mf.FEATURES: {0: "T"}, mf.EMBEDDINGS: {0: "T"}}),
        ]
    else:
        graphs.append((mf.SKETCH_PROJECTION, SketchProjection(model), (unit(2),),
                       {mf.FEATURES: {0: "N"}, mf.EMBEDDINGS: {0: "N"}}))
    return graphs


def export_graphs(model: DCSSA, folder: Path, heads: int, say: Say = silent) -> list[str]:
    """Write the phase's graphs into ``folder``; returns their names."""
    torch.manual_seed(0)
    names = []
    for name, module, args, axes in _graph_modules(model, heads):
        say(f"export: {name}")
        export_onnx(module, args, folder / f"{name}.onnx", name=name, dynamic_axes=axes)
        names.append(name)
    return names


def build_manifest(
    ckpt: LoadedCheckpoint, folder: Path, names: Sequence[str], heads: int, parity: dict, demo: bool
) -> dict:
    source = {"layout": ckpt.layout, "checkpoints": ckpt.files, "ignored_keys": len(ckpt.ignored_keys),
              "unexpected_keys": ckpt.unexpected_keys}
    return new_manifest(folder, names, phase=ckpt.phase, feature_dim=D, embed_dim=ckpt.embed, heads=heads, demo=demo,
                        tools=tool_versions(), source=source, parity=parity)


def detect_family(ckpt_paths: Sequence[str | Path]) -> tuple[str, object | None]:
    """The model family of a checkpoint from its keys, and the file already read (one file only)."""
    paths = [Path(p) for p in ckpt_paths]
    if len(paths) != 1 or paths[0].is_dir():
        return mf.DCSSA, None  # only DC-SSA's phase-1 trio comes in several files
    obj = read_pickle(paths[0])
    from dcssa.export.arnet import is_arnet

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
    if family == mf.ARNET:
        if phase is not None:
            raise CheckpointError("--phase is a DC-SSA option; ARNet has no phases", hint="drop --phase")
        if len(ckpt_paths) != 1:
            raise CheckpointError("an ARNet checkpoint is one file (model_Best.pth)", hint="pass --ckpt once")
        from dcssa.export.arnet import export_arnet_bundle

        return export_arnet_bundle(Path(ckpt_paths[0]), out, num_heads=num_heads, force=force,
                                   sketch_canvas=sketch_canvas, line_width=line_width, obj=obj,
                                   tools=tool_versions(), say=say)
    if sketch_canvas is not None or line_width is not None:
        raise CheckpointError("--sketch-canvas / --line-width apply to ARNet bundles only: DC-SSA's rasteriser "
                              "is fixed by its training (SPEC section 4)", hint="drop them")
    num_heads = num_heads or DEFAULT_HEADS
    say("loading checkpoint")
    ckpt = load_checkpoint(ckpt_paths, num_heads=num_heads, phase=phase)
    with staged_dir(out, force=force) as tmp:
        names = export_graphs(ckpt.model, tmp, num_heads, say)
        parity = check_parity(ckpt.model, tmp, progress=say)
        manifest = build_manifest(ckpt, tmp, names, num_heads, parity, demo=ckpt.demo)
        (tmp / mf.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
