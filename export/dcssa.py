"""The DC-SSA family: checkpoint (phase 2, phase 1, or the phase-1 split trio) -> verified graphs and manifest."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from dcssa.export.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from dcssa.export.graphs import PhotoEncoder, SketchEncoder, SketchProjection, StrokeHeadFull, StrokeHeadStep
from dcssa.export.model import DCSSA, DEFAULT_HEADS, D
from dcssa.export.onnx_io import export_onnx
from dcssa.export.parity import check_parity
from dcssa.runtime.atomic import staged_dir
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import new_manifest
from dcssa.runtime.progress import Say, silent


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
    ckpt: LoadedCheckpoint, folder: Path, names: Sequence[str], heads: int, parity: dict, demo: bool,
    tools: dict | None = None,
) -> dict:
    source = {"layout": ckpt.layout, "checkpoints": ckpt.files, "ignored_keys": len(ckpt.ignored_keys),
              "unexpected_keys": ckpt.unexpected_keys}
    return new_manifest(folder, names, phase=ckpt.phase, feature_dim=D, embed_dim=ckpt.embed, heads=heads, demo=demo,
                        tools=tools, source=source, parity=parity)


def export_dcssa(ckpt_paths: Sequence[str | Path], out: Path, *, num_heads: int | None = None,
                 phase: int | None = None, sketch_canvas: int | None = None, line_width: int | None = None,
                 obj: object | None = None, force: bool = False, tools: dict | None = None,
                 say: Say = silent) -> dict:
    """The DC-SSA export into ``out`` (staged, then swapped in); ``obj`` is unused (the checkpoint
    loader reads its files itself), accepted as every family's exporter is."""
    if sketch_canvas is not None or line_width is not None:
        raise CheckpointError("--sketch-canvas / --line-width apply to ARNet bundles only: DC-SSA's rasteriser "
                              "is fixed by its training (SPEC section 4)", hint="drop them")
    num_heads = num_heads or DEFAULT_HEADS
    say("loading checkpoint")
    ckpt = load_checkpoint(ckpt_paths, num_heads=num_heads, phase=phase)
    with staged_dir(out, force=force) as tmp:
        names = export_graphs(ckpt.model, tmp, num_heads, say)
        parity = check_parity(ckpt.model, tmp, progress=say)
        manifest = build_manifest(ckpt, tmp, names, num_heads, parity, demo=ckpt.demo, tools=tools)
        (tmp / mf.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
