"""A structured ARNet demo checkpoint in the authors' exact layout (no training, no download).

Like the DC-SSA demo: the sketch and photo encoders share one random ViT (timm's init), and both
``mlp_head`` layers are the centred PCA of the catalogue photos' CLS features, so the embedding
dimensions are the directions in which catalogue photos differ and rankings have trained-like
margins. Black-on-white tracings and the catalogue's line drawings then meet in one feature space.
It demonstrates and tests the pipeline; it is no trained model.

One weight edit comes first, because without it the demo's CLS features collapse: ARNet feeds
pixels in [0, 1] with no mean subtraction, so every blank (white) patch -- most of a line drawing's
patches -- enters the random patch embedding as the same large vector ``W . 1``, as large as an inked
patch's. The near-uniform attention of a random ViT averages those into every CLS token, and the
CLS features of all catalogue photos come out ~99.99 % alike (cosine between photos; the part that
differs per image is ~1 % of the norm, measured for ViT-Ti and ViT-B alike). A PCA head fitted on
such features amplifies a ~1 % difference, so any reduced-precision error of a few % swamps the
embedding: the demo, not the precision, would fail. A trained patch embedding does not answer the
background like that (ImageNet-trained ViTs see zero-mean inputs, and training makes the features
differ per image; their first-layer filters answer contrast, not a uniform level), so
:func:`blank_patches_to_zero` makes every patch filter sum to zero (its mean subtracted, bias 0):
the convolution then sees ``pixels - 1`` as well as ``pixels`` (white = 0). The filters are put on
a 2**-14 grid with an exactly zero sum, so a white patch is exactly 0 in float32: a zero reached by
cancelling sums (a bias ``-W . 1``, or zero-sum filters off the grid) leaves ~1e-6 rounding in
tokens that carry only a 0.02-scale position embedding, ~1e-4 in a near-blank sketch's embedding
(the export's parity tolerance); on the grid fp32 matches fp64 to ~1e-6. Blank patches then
carry only their position embedding, inked ones their ink, and the per-image part of the CLS
feature grows to 0.26 (ViT-Ti) and 0.40 (ViT-B) of its norm on the 40-photo catalogue (mean cosine
between photos 0.93 and 0.84; :func:`collapse_stats`, tested in ``tests/export/test_arnet_demo.py``).
Still no training and no download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dcssa.export.checkpoint import DEMO_MARKER_KEY
from dcssa.export.defaults import DEFAULT_ARNET_EMBED
from dcssa.export.demo import catalogue_images, centred_pca, save_atomically
from dcssa.export.vit import ARNetEncoder, ViTConfig
from dcssa.export.vit_outliers import OutlierSpec, add_outliers
from dcssa.runtime.contract.recipes import PhotoRecipe, arnet_preprocessing
from dcssa.runtime.data.datasets import arnet_photo
from dcssa.runtime.data.datasets import catalogue as catalogue_shapes
from dcssa.runtime.progress import Say, silent
from dcssa.runtime.stroke.pipeline import PhotoPipeline

#: timm's ViT sizes at patch 16 / 224 px (heads = width / 64)
VIT_SIZES = {
    "tiny": dict(width=192, depth=12, heads=3),
    "small": dict(width=384, depth=12, heads=6),
    "base": dict(width=768, depth=12, heads=12),  # ARNet's vit_base_patch16_224
}


def vit_config(size: str = "base", embed: int = DEFAULT_ARNET_EMBED, **override: int) -> ViTConfig:
    dims = {**VIT_SIZES[size], **override}
    return ViTConfig(width=dims["width"], depth=dims["depth"], heads=dims["heads"], patch=16, image_size=224,
                     mlp_hidden=4 * dims["width"], qkv_bias=True, embed=embed)


def photo_batch(cfg: ViTConfig, images) -> torch.Tensor:
    """Catalogue photos as the bundle's photo encoder receives them."""
    pipe = PhotoPipeline(PhotoRecipe.from_dict(arnet_preprocessing(cfg.image_size)["photo"]))
    return torch.from_numpy(np.concatenate([pipe.preprocess(im) for im in images]))


@torch.no_grad()
def cls_features(model: ARNetEncoder, images, batch: int = 8) -> np.ndarray:
    """CLS tokens after the final norm (what ``mlp_head`` sees) of catalogue photos, float64."""
    x = photo_batch(model.cfg, images)
    return torch.cat([model.encoder(x[i:i + batch])[:, 0] for i in range(0, len(x), batch)]).double().numpy()


#: the patch filters' grid: on it a white patch's sum is exact in float32 in any order (|sum| < 2**10)
FILTER_GRID = 2.0**-14


@torch.no_grad()
def blank_patches_to_zero(model: ARNetEncoder) -> ARNetEncoder:
    """Patch filters with zero sum and a zero bias: a uniform patch -- ARNet's white background
    above all -- embeds as zero, so the background stops being one vector shared by every image
    (module docstring). Each filter loses its mean (~1/30 of its weights' spread) and is rounded to
    :data:`FILTER_GRID` with its sum made exactly 0, so a white patch gives exactly 0 on every
    backend (no cancellation error in the position-only tokens of near-blank sketches)."""
    proj = model.encoder.patch_embed.proj
    units = torch.round((proj.weight.double() - proj.weight.double().mean(dim=(1, 2, 3), keepdim=True)) / FILTER_GRID)
    units = units.long()
    units[:, 0, 0, 0] -= units.sum(dim=(1, 2, 3))  # a few grid units on one weight per filter
    proj.weight.copy_((units.double() * FILTER_GRID).to(proj.weight.dtype))
    proj.bias.zero_()
    return model


def collapse_stats(features: np.ndarray) -> dict[str, float]:
    """How alike the CLS features (rows) of different images are: ``spread`` is the root-mean-square
    distance to their mean over the mean feature norm (the per-image share of the feature), and
    ``mean_cosine`` the mean cosine between two different images' features."""
    f = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(f, axis=1)
    spread = np.sqrt(((f - f.mean(axis=0)) ** 2).sum(axis=1).mean()) / norms.mean()
    unit = f / norms[:, None]
    n = len(f)
    return {"spread": float(spread), "mean_cosine": float(((unit @ unit.T).sum() - n) / (n * (n - 1)))}


def structured_arnet(cfg: ViTConfig, *, seed: int = 0, catalogue: str | Path | None = None, shapes: int = 40,
                     catalogue_seed: int = 0, outliers: OutlierSpec | None = None, say: Say = silent) -> ARNetEncoder:
    """One encoder (shared by sketches and photos), its blank patches embedded as zero
    (:func:`blank_patches_to_zero`), its head fitted on the catalogue; with ``outliers``, trained-like
    activation outliers edited into its weights before the head (:mod:`.vit_outliers`)."""
    model = blank_patches_to_zero(ARNetEncoder(cfg).init_like_timm(torch.Generator().manual_seed(seed)).eval())
    images = (catalogue_images(catalogue, shapes, catalogue_seed) if catalogue is not None
              else [arnet_photo(shape) for shape in catalogue_shapes(shapes, catalogue_seed)])
    if outliers is not None:
        rec = add_outliers(model, photo_batch(cfg, images[:8]), outliers)
        say(f"demo: {outliers.channels} massive residual channels {rec['channel_ids']} at {rec['offset']:.1f} "
            f"({outliers.gain:g}x the median |activation|), post-LayerNorm scales spread {outliers.spread:g}x each way")
    feats = cls_features(model, images)
    stats = collapse_stats(feats)
    say(f"demo: fitting mlp_head (centred PCA of {len(images)} catalogue photos' CLS features; per-image share "
        f"{stats['spread']:.2f} of their norm, mean cosine between photos {stats['mean_cosine']:.3f})")
    weight, bias = centred_pca(feats, cfg.embed)
    with torch.no_grad():
        model.mlp_head[0].weight.copy_(torch.from_numpy(weight))
        model.mlp_head[0].bias.copy_(torch.from_numpy(bias))
    return model


def write_arnet_demo(out: str | Path, *, size: str = "base", embed: int = DEFAULT_ARNET_EMBED, seed: int = 0,
                     catalogue: str | Path | None = None, shapes: int = 40, catalogue_seed: int = 0,
                     cfg: ViTConfig | None = None, outliers: OutlierSpec | None = None, say: Say = silent) -> Path:
    """``model_Best.pth`` as ARNet's train_main.py writes it, plus the demo marker; atomic."""
    cfg = cfg or vit_config(size, embed)
    model = structured_arnet(cfg, seed=seed, catalogue=catalogue, shapes=shapes, catalogue_seed=catalogue_seed,
                             outliers=outliers, say=say)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    # the unused ImageNet classifier every timm ViT state_dict carries
    g = torch.Generator().manual_seed(seed + 1)
    sd["encoder.head.weight"] = torch.randn(1000, cfg.width, generator=g) * 0.02
    sd["encoder.head.bias"] = torch.zeros(1000)
    ckpt = {"img_model": sd, "skt_model": {k: v.clone() for k, v in sd.items()}, "epoch": 0, "loss": 0.0,
            "top1": 0.0, "top5": 0.0, "top10": 0.0, DEMO_MARKER_KEY: torch.tensor(seed)}
    return save_atomically(ckpt, out)
