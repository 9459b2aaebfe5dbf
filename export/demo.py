"""Demo checkpoints in the authors' exact key layout, for demos and tests (no training, no download).

Two kinds:

* ``structured`` (default): behaves like a trained model on a line-drawing catalogue. Photo and sketch
  branches share one random trunk and spatial attention, and every projection (``linear``,
  ``sketch_linear``, ``attn.proj``) is the centred PCA of the catalogue's photo features, so the
  64 embedding dimensions are the directions in which catalogue photos actually differ. Rankings
  then have trained-like margins, which is what fidelity numbers (fp16/int8/bf16) need.
* ``plain-random``: independent random branches. Every photo embeds nearly the same; kept as the
  worst case.

Random convolution weights make activations grow or vanish layer by layer; recalibrating every
BatchNorm's running statistics on realistic inputs brings them back to a trained-like scale.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from dcssa.export.checkpoint import DEMO_MARKER_KEY
from dcssa.export.model import DCSSA, DEFAULT_EMBED, DEFAULT_HEADS, InceptionTrunk
from dcssa.export.parity import partial_sketch_rasters
from dcssa.runtime.data.datasets import catalogue as catalogue_shapes
from dcssa.runtime.data.photos import list_images
from dcssa.runtime.data.synthetic import line_drawing, random_shape, textured_photo
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.progress import Say, silent
from dcssa.runtime.stroke.pipeline import PhotoPipeline


@torch.no_grad()
def recalibrate_batchnorm(trunk: nn.Module, batches: list[torch.Tensor]) -> None:
    """Replace running mean/var of every BatchNorm by the exact average over ``batches``."""
    bns = [m for m in trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = plain mean over the batches
    trunk.train()
    for x in batches:
        trunk(x)
    trunk.eval()
    for m, mom in zip(bns, saved):
        m.momentum = mom


def sketch_batches(seed: int, count: int = 3, strokes: int = 10, batch: int = 10) -> list[torch.Tensor]:
    rasters = np.concatenate([partial_sketch_rasters(seed + i, strokes) for i in range(count)])
    return [torch.from_numpy(rasters[i : i + batch]) for i in range(0, len(rasters), batch)]


def photo_batches(seed: int, count: int = 30, batch: int = 10) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    pipeline = PhotoPipeline()
    images = []
    for i in range(count):
        img = textured_photo(rng, 299, 299) if i % 2 else line_drawing(random_shape(rng)).resize((299, 299))
        images.append(pipeline.preprocess(img)[0])
    stack = np.stack(images)
    return [torch.from_numpy(stack[i : i + batch]) for i in range(0, len(stack), batch)]


def plain_random_model(
    *, seed: int = 0, phase: int = 2, embed: int = DEFAULT_EMBED, num_heads: int = DEFAULT_HEADS, say: Say = silent
) -> DCSSA:
    torch.manual_seed(seed)
    model = DCSSA(embed=embed, num_heads=num_heads, phase=phase)
    say("demo: recalibrating BatchNorm of the sketch trunk")
    recalibrate_batchnorm(model.sketch_embedding_network, sketch_batches(seed))
    say("demo: recalibrating BatchNorm of the photo trunk")
    recalibrate_batchnorm(model.sample_embedding_network, photo_batches(seed))
    return model.eval()


def save_atomically(obj: object, out: str | Path) -> Path:
    """``torch.save`` to a temporary name, then renamed: no half-written checkpoint is ever left."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def save_checkpoint(model: DCSSA, out: str | Path, *, seed: int) -> Path:
    """``torch.save(model.state_dict())`` as the authors do, plus the demo marker; atomic."""
    sd = model.state_dict()
    sd[DEMO_MARKER_KEY] = torch.tensor(seed)
    return save_atomically(sd, out)


def catalogue_images(catalogue: str | Path | None, shapes: int = 40, seed: int = 0) -> list[Image.Image]:
    """The photos the projections are fitted on: a folder, or the generated line-drawing catalogue
    equal to ``dcssa-rt make-dataset --photos SHAPES --seed SEED``."""
    if catalogue is None:
        return [line_drawing(shape) for shape in catalogue_shapes(shapes, seed)]
    paths = list_images(Path(catalogue))
    if len(paths) < 2:
        raise DcssaError("a catalogue needs at least 2 images", path=catalogue)
    return [Image.open(p).convert("RGB") for p in paths]


@torch.no_grad()
def photo_features(model: DCSSA, images: list[Image.Image], batch: int = 10) -> np.ndarray:
    """2048-d unit-norm features (trunk + spatial attention) of catalogue photos, (n, D) float64."""
    if model.training:
        raise ValueError("photo_features needs the model in eval mode (BatchNorm running statistics)")
    pipeline = PhotoPipeline()
    feats = []
    for i in range(0, len(images), batch):
        arrs = [pipeline.preprocess(im) for im in images[i : i + batch]]
        if len({a.shape for a in arrs}) == 1:
            feats.append(model.attention(model.sample_embedding_network(torch.from_numpy(np.concatenate(arrs)))))
        else:
            feats.extend(model.attention(model.sample_embedding_network(torch.from_numpy(a))) for a in arrs)
    return torch.cat(feats).double().numpy()


def centred_pca(features: np.ndarray, embed: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear weight (embed x D) = leading principal directions, bias = -weight @ mean.

    No whitening (dividing by singular values overfits). With n photos only n-1 directions carry
    variance; the remaining rows are zero, so they add nothing to any score.
    """
    mean = features.mean(axis=0)
    _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
    k = min(embed, len(features) - 1, vt.shape[0])  # a trunk narrower than embed has fewer directions
    weight = np.zeros((embed, features.shape[1]))
    weight[:k] = vt[:k]
    return weight, -weight @ mean


@dataclass(frozen=True)
class DemoSpec:
    """What a structured demo model is made of: its seeds, sizes and the catalogue it is fitted on."""

    seed: int = 0
    phase: int = 2
    embed: int = DEFAULT_EMBED
    num_heads: int = DEFAULT_HEADS
    catalogue: str | Path | None = None  # a folder of photos; None: the generated line drawings
    shapes: int = 40
    catalogue_seed: int = 0


def structured_model(spec: DemoSpec = DemoSpec(), say: Say = silent) -> DCSSA:
    seed, embed, phase = spec.seed, spec.embed, spec.phase
    torch.manual_seed(seed)
    model = DCSSA(embed=embed, num_heads=spec.num_heads, phase=phase)
    # torchvision's truncated-normal init gives more discriminative random features than PyTorch's
    # default (measured on the 40-shape catalogue: last-stroke acc@1 0.68 vs 0.50, phase-1 path)
    model.sketch_embedding_network = InceptionTrunk(init_weights=True)
    images = catalogue_images(spec.catalogue, spec.shapes, spec.catalogue_seed)
    say(f"demo: recalibrating BatchNorm of the shared trunk ({len(images)} catalogue photos)")
    # Line drawings only (partial sketches + catalogue): colourful photos in the mix shift the
    # statistics away from the line-drawing regime and retrieval falls to chance (measured).
    pipeline = PhotoPipeline()
    cat = np.concatenate([pipeline.preprocess(im.resize((299, 299))) for im in images])
    recal = sketch_batches(seed) + [torch.from_numpy(cat[i : i + 10]) for i in range(0, len(cat), 10)]
    recalibrate_batchnorm(model.sketch_embedding_network, recal)
    # one trunk and one spatial attention for both branches
    model.sample_embedding_network.load_state_dict(model.sketch_embedding_network.state_dict())
    model.attention.load_state_dict(model.sketch_attention.state_dict())
    model.eval()  # the PCA must see the features the exported (eval-mode) graphs compute
    say("demo: fitting the projections (centred PCA of the catalogue's photo features)")
    weight, bias = centred_pca(photo_features(model, images), embed)
    heads = [model.linear, model.sketch_linear] + ([model.attn.proj] if phase == 2 else [])
    with torch.no_grad():
        for proj in heads:
            proj.head_layer.weight.copy_(torch.from_numpy(weight))
            proj.head_layer.bias.copy_(torch.from_numpy(bias))
    return model.eval()


def write_demo_checkpoint(out: str | Path, *, structured: bool = True, say: Say = silent, **spec: object) -> Path:
    """A demo checkpoint at ``out``; ``spec`` are :class:`DemoSpec` fields (``plain-random`` uses
    seed, phase and embed only)."""
    demo = DemoSpec(**spec)  # type: ignore[arg-type]
    if structured:
        model = structured_model(demo, say)
    else:
        model = plain_random_model(seed=demo.seed, phase=demo.phase, embed=demo.embed, say=say)
    return save_checkpoint(model, out, seed=demo.seed)
