"""The ARNet family: checkpoint -> two verified ViT encoder graphs and their manifest.

ARNet's ``train_main.py`` saves ``{'img_model': state_dict, 'skt_model': state_dict, 'epoch',
'loss', 'top1', 'top5', 'top10'}``: two separate encoders (weights not shared), each a whole timm
ViT under ``encoder.*`` (with its unused 1000-class ``encoder.head``) and ``mlp_head.0``. A family is
data plus this loader: the runtime serves the bundle with the graph specs and preprocessing the
manifest records (:data:`dcssa.runtime.contract.manifest.ARNET`), no ARNet code of its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dcssa.export.checkpoint import DEMO_MARKER_KEY, CheckpointError, read_pickle
from dcssa.export.onnx_io import export_onnx
from dcssa.export.parity import PARITY_STROKES, TOLERANCE, ParityError, max_abs_error
from dcssa.export.vit import ARNetEncoder, ViTConfig
from dcssa.runtime.atomic import refuse_existing, staged_dir
from dcssa.runtime.backends import get_backend
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import new_manifest, sha256_file
from dcssa.runtime.contract.recipes import (
    ARNET_LINE_WIDTH,
    ARNET_SKETCH_CANVAS,
    PhotoRecipe,
    SketchRecipe,
    arnet_preprocessing,
)
from dcssa.runtime.data.synthetic import random_sketch, textured_photo
from dcssa.runtime.progress import Say, silent
from dcssa.runtime.stroke.pipeline import PhotoPipeline, SketchPipeline

ENCODERS = {"skt_model": mf.SKETCH_ENCODER, "img_model": mf.PHOTO_ENCODER}
#: the unused ImageNet classifier of the timm ViT: in every checkpoint, never part of the embedding
UNUSED_PREFIXES = ("encoder.head.",)
PLUS_PREFIX = "recycle_model."
PLUS_REASON = (
    "this is an ARNet 'plus' (MSTR) checkpoint: its multi-scale transformers are held in a plain Python "
    "list, so their weights were never saved (nor trained: only recycle_model.fc.* is in the file, and "
    "dropout stayed on at evaluation). The model it evaluated cannot be reproduced from this file, and "
    "re-initialising the missing modules would serve a different model"
)
META_KEYS = ("epoch", "loss", "top1", "top5", "top10")


def is_arnet(obj: object) -> bool:
    """ARNet's checkpoint dict: the two encoders' state_dicts under ``img_model`` / ``skt_model``."""
    return isinstance(obj, Mapping) and all(isinstance(obj.get(k), Mapping) for k in ENCODERS)


@dataclass
class ARNetCheckpoint:
    sketch: ARNetEncoder
    photo: ARNetEncoder
    files: list[dict] = field(default_factory=list)
    ignored_keys: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # epoch, loss, top1/5/10 as saved by the training code
    demo: bool = False

    @property
    def embed(self) -> int:
        return self.sketch.cfg.embed

    @property
    def image_size(self) -> int:
        return self.sketch.cfg.image_size


def _strip_module(sd: Mapping) -> dict:
    if sd and all(str(k).startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:10]) + (f" ... ({len(keys)} in all)" if len(keys) > 10 else "")


def _load_encoder(sd: Mapping, which: str, path: Path, heads: int | None) -> tuple[ARNetEncoder, list[str]]:
    tensors = {k: v for k, v in _strip_module(sd).items() if isinstance(v, torch.Tensor)}
    plus = sorted(k for k in tensors if k.startswith(PLUS_PREFIX))
    if plus:
        raise CheckpointError(f"refused: {PLUS_REASON} ({which} holds {_shown(plus)})", path=path,
                              hint="export the basic model's checkpoint (src/train_main.py), or retrain the plus model "
                                   "with its transformers in an nn.ModuleList")
    try:
        cfg = ViTConfig.from_state_dict(tensors, heads)
    except KeyError as exc:
        raise CheckpointError(f"{which} misses key {exc.args[0]!r}, so it is no ARNet ViT encoder", path=path,
                              hint="expected encoder.* (a timm vit_base_patch16_224) and mlp_head.0.*") from None
    except ValueError as exc:
        raise CheckpointError(f"{which}: {exc}", path=path, hint="pass --num-heads to match the training") from None
    model = ARNetEncoder(cfg)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in tensors)
    if missing:
        raise CheckpointError(f"{which} misses keys: {_shown(missing)}", path=path,
                              hint="the file does not match ARNet's EncoderViT (timm vit_base_patch16_224 + mlp_head)")
    ignored = sorted(k for k in tensors if k not in expected and k.startswith(UNUSED_PREFIXES))
    extra = sorted(k for k in tensors if k not in expected and k not in ignored)
    if extra:
        raise CheckpointError(f"{which} has keys the ARNet encoder does not use: {_shown(extra)}", path=path,
                              hint="a modified encoder cannot be exported as ARNet: its extra weights would be dropped")
    wrong = [f"{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if tuple(tensors[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{which}: tensor shapes do not match a ViT: {'; '.join(wrong[:5])}", path=path)
    model.load_state_dict({k: tensors[k].float() for k in expected})
    return model.eval(), [f"{which}.{k}" for k in ignored]


def load_arnet_checkpoint(path: str | Path, *, num_heads: int | None = None, obj: object | None = None) -> ARNetCheckpoint:
    """Both encoders of ``model_Best.pth`` (``obj``: the file already read), checked key by key."""
    path = Path(path)
    obj = read_pickle(path) if obj is None else obj
    if not is_arnet(obj):
        have = ", ".join(sorted(map(str, obj))[:8]) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"not an ARNet checkpoint: expected 'img_model' and 'skt_model' state_dicts, found {have}",
                              path=path, hint="pass the model_Best.pth written by ARNet's train_main.py, or drop --family arnet")
    sketch, ign_s = _load_encoder(obj["skt_model"], "skt_model", path, num_heads)
    photo, ign_p = _load_encoder(obj["img_model"], "img_model", path, num_heads)
    if sketch.cfg.embed != photo.cfg.embed or sketch.cfg.image_size != photo.cfg.image_size:
        raise CheckpointError(
            f"the encoders disagree: sketch embeds {sketch.cfg.embed}-d at {sketch.cfg.image_size} px, "
            f"photo {photo.cfg.embed}-d at {photo.cfg.image_size} px", path=path,
            hint="both encoders of one ARNet model share the embedding size and input size")
    meta = {k: _plain(obj[k]) for k in META_KEYS if k in obj}
    files = [{"name": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}]
    return ARNetCheckpoint(sketch, photo, files, ign_s + ign_p, meta, demo=DEMO_MARKER_KEY in obj)


def _plain(v: object) -> object:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


# -- graphs and parity ---------------------------------------------------------------------------------


def export_graphs(ckpt: ARNetCheckpoint, folder: Path, say: Say = silent) -> list[str]:
    s = ckpt.image_size
    for module, name in ((ckpt.sketch, mf.SKETCH_ENCODER), (ckpt.photo, mf.PHOTO_ENCODER)):
        say(f"export: {name}")
        torch.manual_seed(0)
        export_onnx(module, (torch.rand(2, 3, s, s),), folder / f"{name}.onnx", name=name,
                    dynamic_axes={mf.IMAGES: {0: "N"}, mf.EMBEDDINGS: {0: "N"}},
                    spec=mf.graph_spec(name, ckpt.embed, ckpt.embed, family=mf.ARNET, image_size=s))
    return [mf.SKETCH_ENCODER, mf.PHOTO_ENCODER]


@torch.no_grad()
def check_parity(ckpt: ARNetCheckpoint, folder: Path, preprocessing: dict, *, seed: int = 0,
                 tolerance: float = TOLERANCE, progress: Say = silent) -> dict:
    """Both graphs on onnxruntime against the PyTorch encoders, on inputs made by the bundle's pipelines."""
    backend = get_backend("ort-cpu")
    rng = np.random.default_rng(seed)
    sketches = SketchPipeline(SketchRecipe.from_dict(preprocessing["sketch"]))
    photos = PhotoPipeline(PhotoRecipe.from_dict(preprocessing["photo"]))
    s = ckpt.image_size
    inputs = {
        mf.SKETCH_ENCODER: (ckpt.sketch, sketches.prefix_images(random_sketch(rng, PARITY_STROKES)),
                            f"{PARITY_STROKES} rasterised partial sketches, batches of 8"),
        mf.PHOTO_ENCODER: (ckpt.photo, np.concatenate([photos.preprocess(textured_photo(rng, w, h))
                                                       for w, h in ((s, s), (s + 76, s), (2 * s, s + 10))]),
                           "synthetic photos of 3 sizes (squashed to the ViT's input)"),
    }
    report = {}
    for name, (module, x, what) in inputs.items():
        progress(f"parity: {name}")
        spec = mf.graph_spec(name, ckpt.embed, ckpt.embed, family=mf.ARNET, image_size=s)
        runner = backend.load(folder / f"{name}.onnx", spec)
        got = np.concatenate([runner.run({mf.IMAGES: x[i:i + 8]})[mf.EMBEDDINGS] for i in range(0, len(x), 8)])
        err = max_abs_error(got, module(torch.from_numpy(x)).numpy())
        report[name] = {"max_abs_err": err, "tolerance": tolerance, "inputs": what, "passed": err <= tolerance}
    failed = {k: v for k, v in report.items() if not v["passed"]}
    if failed:
        lines = ", ".join(f"{k}: max abs error {v['max_abs_err']:.2e} > {tolerance:.0e}" for k, v in failed.items())
        raise ParityError(f"exported graphs disagree with the PyTorch encoders ({lines})", path=folder,
                          hint="check --num-heads (ViT heads cannot be read from the weights; ViT-B has 12)")
    return report


def export_arnet_bundle(path: Path, out: Path, *, num_heads: int | None = None, force: bool = False,
                        sketch_canvas: int | None = None, line_width: int | None = None, obj: object | None = None,
                        tools: dict | None = None, say: Say = silent) -> dict:
    """The whole ARNet export; leaves either a complete verified bundle at ``out`` or nothing."""
    refuse_existing(out, force)
    say("loading ARNet checkpoint")
    ckpt = load_arnet_checkpoint(path, num_heads=num_heads, obj=obj)
    pre = arnet_preprocessing(ckpt.image_size, sketch_canvas or ARNET_SKETCH_CANVAS, line_width or ARNET_LINE_WIDTH)
    with staged_dir(out, force=force) as tmp:
        names = export_graphs(ckpt, tmp, say)
        parity = check_parity(ckpt, tmp, pre, progress=say)
        cfg_s, cfg_p = ckpt.sketch.cfg, ckpt.photo.cfg
        encoder = {"kind": "vit", "sketch": cfg_s.to_dict(), "photo": cfg_p.to_dict(),
                   "head_dim": cfg_s.width // cfg_s.heads}
        source = {"layout": "arnet", "checkpoints": ckpt.files, "ignored_keys": len(ckpt.ignored_keys),
                  "unexpected_keys": [], "training": ckpt.meta}
        manifest = new_manifest(tmp, names, phase=None, feature_dim=ckpt.embed, embed_dim=ckpt.embed,
                                heads=cfg_s.heads, demo=ckpt.demo, tools=tools, source=source, parity=parity,
                                family=mf.ARNET, preprocessing=pre, image_size=ckpt.image_size, encoder=encoder)
        (tmp / mf.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def export_arnet(ckpt_paths: Sequence[str | Path], out: Path, *, num_heads: int | None = None,
                 phase: int | None = None, sketch_canvas: int | None = None, line_width: int | None = None,
                 obj: object | None = None, force: bool = False, tools: dict | None = None,
                 say: Say = silent) -> dict:
    """:func:`export_arnet_bundle` behind the signature every family's exporter has (one file, no phase)."""
    if phase is not None:
        raise CheckpointError("--phase is a DC-SSA option; ARNet has no phases", hint="drop --phase")
    if len(ckpt_paths) != 1:
        raise CheckpointError("an ARNet checkpoint is one file (model_Best.pth)", hint="pass --ckpt once")
    return export_arnet_bundle(Path(ckpt_paths[0]), out, num_heads=num_heads, force=force,
                               sketch_canvas=sketch_canvas, line_width=line_width, obj=obj, tools=tools, say=say)
