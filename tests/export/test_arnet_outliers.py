"""The outlier variant of the structured ARNet demo really carries the documented outliers: a few
fixed residual channels hundreds to thousands of times the median |activation| in every block, and post-LayerNorm
channel ranges spread by more than an order of magnitude -- measured here by running the blocks
by hand (not through the module's own hooks), beside the plain demo that has neither."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dcssa.export.arnet_demo import photo_batch, structured_arnet, vit_config  # noqa: E402
from dcssa.export.vit_outliers import OutlierSpec  # noqa: E402
from dcssa.runtime.data.datasets import arnet_photo, catalogue  # noqa: E402


@torch.no_grad()
def residual_and_norm_outputs(model, x):
    """Each block's residual input and its two LayerNorm outputs, computed step by step."""
    vit = model.encoder
    h = vit.patch_embed(x)
    h = torch.cat((vit.cls_token.expand(h.shape[0], -1, -1), h), dim=1) + vit.pos_embed
    out = []
    for block in vit.blocks:
        n1 = block.norm1(h)
        h2 = h + block.attn(n1)
        n2 = block.norm2(h2)
        out.append((h.reshape(-1, h.shape[-1]), n1.reshape(-1, h.shape[-1]), n2.reshape(-1, h.shape[-1])))
        h = h2 + block.mlp(n2)
    return out


@pytest.fixture(scope="module")
def models():
    cfg = vit_config("tiny", embed=16, depth=3)
    images = [arnet_photo(s) for s in catalogue(6, 0)]
    x = photo_batch(cfg, images[:4])
    spec = OutlierSpec()
    plain = structured_arnet(cfg, shapes=6)
    outl = structured_arnet(cfg, shapes=6, outliers=spec)
    return plain, outl, x, spec


def _channel_ratio(h):
    peak = h.abs().amax(dim=0)
    return peak, peak / h.abs().median()


def test_outlier_variant_has_massive_fixed_channels_and_uneven_norm_outputs(models):
    plain, outl, x, spec = models
    g = torch.Generator().manual_seed(spec.seed)
    documented = set(torch.randperm(outl.cfg.width, generator=g)[: spec.channels].tolist())
    for h, n1, n2 in residual_and_norm_outputs(outl, x):
        peak, ratio = _channel_ratio(h)
        top = set(peak.topk(spec.channels).indices.tolist())
        assert top == documented  # the same fixed channels in every block
        massive = ratio[list(documented)]
        # hundreds to a few thousand times the median (the most at the embedding, where the demo's
        # blank patches carry only their small position embedding)
        assert 100 <= massive.min() and massive.max() <= 3000
        others = torch.ones(outl.cfg.width, dtype=torch.bool)
        others[list(documented)] = False
        assert ratio[others].max() < massive.min() / 10  # and only those, by an order of magnitude
        for y in (n1, n2):
            r = y.abs().amax(dim=0)[others]
            assert r.max() / r.min() > 10  # strongly uneven post-LayerNorm channel ranges
    for h, n1, _ in residual_and_norm_outputs(plain, x):
        assert _channel_ratio(h)[1].max() < 100  # no massive channel (the ink/blank tail stays below)
        r = n1.abs().amax(dim=0)
        assert r.max() / r.min() < 10


def test_outlier_variant_still_retrieves(models):
    """Its head is fitted after the edit: catalogue photos still embed apart (no collapse)."""
    _, outl, x, _ = models
    with torch.no_grad():
        e = outl(x)
    sim = e @ e.T
    assert torch.allclose(sim.diagonal(), torch.ones(len(e)), atol=1e-5)
    assert (sim - torch.eye(len(e))).max() < 0.9
