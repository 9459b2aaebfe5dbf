"""The structured ARNet demo's CLS features differ per image by a trained-like share.

A random timm-init ViT fed ARNet's [0, 1] pixels gives every catalogue photo nearly the same CLS
feature (the white background enters every blank patch as one shared vector), and a PCA head fitted
on ~1 % differences turns any few-% reduced-precision error into a wrong embedding. The demo embeds
blank patches as zero (``blank_patches_to_zero``); these tests measure the collapse statistic by
hand on a small ViT, for the old init (which must fail the threshold) and the demo.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dcssa.export.arnet_demo import (  # noqa: E402
    blank_patches_to_zero,
    cls_features,
    collapse_stats,
    structured_arnet,
    vit_config,
    write_arnet_demo,
)
from dcssa.export.vit import ARNetEncoder  # noqa: E402
from dcssa.runtime.data.datasets import arnet_photo, catalogue  # noqa: E402

#: the per-image share of the CLS feature (RMS distance to the photos' mean / mean norm): the old
#: init gives ~0.01 on ViT-Ti and ViT-B, the demo 0.26 (ViT-Ti) and 0.40 (ViT-B) at full depth
MIN_SPREAD = 0.1
#: mean cosine between two photos' CLS features: 0.9999 with the old init
MAX_COSINE = 0.99


def by_hand(features: torch.Tensor) -> tuple[float, float]:
    """(spread, mean pairwise cosine) computed with torch, independently of ``collapse_stats``."""
    f = features.double()
    spread = (f - f.mean(0)).norm(dim=1).square().mean().sqrt() / f.norm(dim=1).mean()
    cos = torch.nn.functional.cosine_similarity(f[:, None], f[None], dim=-1)
    n = len(f)
    return float(spread), float(cos[~torch.eye(n, dtype=torch.bool)].mean())


@pytest.fixture(scope="module")
def setup():
    cfg = vit_config("tiny", embed=16, depth=4)
    images = [arnet_photo(s) for s in catalogue(12, 0)]
    return cfg, images


def test_old_init_collapses_and_the_demo_does_not(setup):
    cfg, images = setup
    old = ARNetEncoder(cfg).init_like_timm(torch.Generator().manual_seed(0)).eval()
    old_spread, old_cos = by_hand(torch.from_numpy(cls_features(old, images)))
    assert old_spread < MIN_SPREAD / 2 and old_cos > 0.999  # the collapse the threshold catches
    demo = structured_arnet(cfg, shapes=12)
    feats = cls_features(demo, images)
    spread, cos = by_hand(torch.from_numpy(feats))
    assert spread > MIN_SPREAD and cos < MAX_COSINE
    stats = collapse_stats(feats)
    assert stats["spread"] == pytest.approx(spread, rel=1e-9)
    assert stats["mean_cosine"] == pytest.approx(cos, rel=1e-9)


def test_blank_patches_embed_as_zero_and_ink_does_not(setup):
    cfg, _ = setup
    model = blank_patches_to_zero(ARNetEncoder(cfg).init_like_timm(torch.Generator().manual_seed(1)))
    white = torch.ones(1, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        assert not model.encoder.patch_embed(white).any()  # exactly zero, in float32
        inked = white.clone()
        inked[..., 5:7, :] = 0.0  # a black line through the first row of patches
        tokens = model.encoder.patch_embed(inked)
    assert tokens[0, : cfg.image_size // cfg.patch].abs().amax(dim=1).min() > 1e-2


def test_checkpoint_carries_the_edit(setup, tmp_path):
    cfg, _ = setup
    path = write_arnet_demo(tmp_path / "model_Best.pth", cfg=cfg, shapes=6)
    sd = torch.load(path, weights_only=False)
    for enc in ("img_model", "skt_model"):
        w, b = sd[enc]["encoder.patch_embed.proj.weight"], sd[enc]["encoder.patch_embed.proj.bias"]
        assert not w.sum(dim=(1, 2, 3)).any() and not b.any()  # exactly: a white patch gives exactly 0
        assert w.std() > 0.015  # still timm's random filters (std 0.02), only their mean removed
