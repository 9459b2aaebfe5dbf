"""A structured ARNet demo checkpoint in the authors' exact layout (no training, no download).

Like the DC-SSA demo: the sketch and photo encoders share one random ViT (timm's init), and both
``mlp_head`` layers are the centred PCA of the catalogue photos' CLS features, so the embedding
dimensions are the directions in which catalogue photos differ and rankings have trained-like
margins. Black-on-white tracings and the catalogue's line drawings then meet in one feature space.
It demonstrates and tests the pipeline; it is no trained model.
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


def structured_arnet(cfg: ViTConfig, *, seed: int = 0, catalogue: str | Path | None = None, shapes: int = 40,
                     catalogue_seed: int = 0, outliers: OutlierSpec | None = None, say: Say = silent) -> ARNetEncoder:
    """One encoder (shared by sketches and photos) with its head fitted on the catalogue; with
    ``outliers``, trained-like activation outliers edited into its weights first (:mod:`.vit_outliers`)."""
    model = ARNetEncoder(cfg).init_like_timm(torch.Generator().manual_seed(seed)).eval()
    images = (catalogue_images(catalogue, shapes, catalogue_seed) if catalogue is not None
              else [arnet_photo(shape) for shape in catalogue_shapes(shapes, catalogue_seed)])
    if outliers is not None:
        rec = add_outliers(model, photo_batch(cfg, images[:8]), outliers)
        say(f"demo: {outliers.channels} massive residual channels {rec['channel_ids']} at {rec['offset']:.1f} "
            f"({outliers.gain:g}x the median |activation|), post-LayerNorm scales spread {outliers.spread:g}x each way")
    say(f"demo: fitting mlp_head (centred PCA of {len(images)} catalogue photos' CLS features)")
    weight, bias = centred_pca(cls_features(model, images), cfg.embed)
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
