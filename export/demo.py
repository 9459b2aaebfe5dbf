"""Demo checkpoints: random weights in the authors' exact key layout, for demos and tests.

Random convolution weights give activations that grow or vanish layer by layer; recalibrating every
BatchNorm's running statistics on realistic inputs (rasterised partial sketches for the sketch
trunk, synthetic photos for the photo trunk) brings them back to a trained-like scale, so exported
graphs are exercised in a numerically honest regime.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dcssa.runtime import manifest as mf
from dcssa.runtime.raster import preprocess_photo
from dcssa.runtime.synthetic import line_drawing, random_shape, textured_photo

from .checkpoint import DEMO_MARKER_KEY
from .model import DCSSA, DEFAULT_EMBED, DEFAULT_HEADS
from .parity import partial_sketch_rasters

Say = Callable[[str], None]


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
    recipe = mf.default_preprocessing()["photo"]
    images = []
    for i in range(count):
        img = textured_photo(rng, 299, 299) if i % 2 else line_drawing(random_shape(rng)).resize((299, 299))
        images.append(preprocess_photo(img, recipe)[0])
    stack = np.stack(images)
    return [torch.from_numpy(stack[i : i + batch]) for i in range(0, len(stack), batch)]


def plain_random_model(
    *, seed: int = 0, phase: int = 2, embed: int = DEFAULT_EMBED, num_heads: int = DEFAULT_HEADS, say: Say = lambda _m: None
) -> DCSSA:
    torch.manual_seed(seed)
    model = DCSSA(embed=embed, num_heads=num_heads, phase=phase)
    say("demo: recalibrating BatchNorm of the sketch trunk")
    recalibrate_batchnorm(model.sketch_embedding_network, sketch_batches(seed))
    say("demo: recalibrating BatchNorm of the photo trunk")
    recalibrate_batchnorm(model.sample_embedding_network, photo_batches(seed))
    return model.eval()


def save_checkpoint(model: DCSSA, out: str | Path, *, seed: int) -> Path:
    """``torch.save(model.state_dict())`` as the authors do, plus the demo marker; atomic."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    sd[DEMO_MARKER_KEY] = torch.tensor(seed)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        torch.save(sd, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def write_demo_checkpoint(
    out: str | Path, *, seed: int = 0, phase: int = 2, embed: int = DEFAULT_EMBED, say: Say = lambda _m: None
) -> Path:
    model = plain_random_model(seed=seed, phase=phase, embed=embed, say=say)
    return save_checkpoint(model, out, seed=seed)
