"""Trained-like activation outliers for the structured ARNet demo, made by editing its weights.

A random ViT has none of the two features that make trained ViTs hard to quantise: "massive
activations" (a few fixed channels of the residual stream, hundreds to thousands of times the
median, the same in every token and image) and strongly uneven channel scales after LayerNorm.
A demo without them neither reproduces nor rules out the int8 failure of a real checkpoint, so the
outlier variant puts both in, by editing weights of the structured demo before its head is fitted:

1. massive channels: ``channels`` fixed channels of ``cls_token`` and ``pos_embed`` get a constant
   offset ``A = gain x`` the median |residual activation|, so every token of every image carries it
   through all blocks (the blocks' updates are small beside it);
2. every LayerNorm absorbs what a trained one learns for them: its gain on the other channels is
   multiplied by how much the outliers inflate its input's standard deviation, its bias cancels
   the mean they add, and its gain on the massive channels brings them back to O(1);
3. uneven post-LayerNorm scales: each block LayerNorm's gain and bias are multiplied per channel by
   a factor log-uniform in ``[1/spread, spread]`` (normalised to RMS 1), as trained LayerNorm gains
   are uneven; the next Linear is left as it is (it was not trained with them either way), so the
   function changes -- the head is fitted afterwards -- and a per-tensor int8 range of that
   LayerNorm's output gives its small channels few levels.

The result is another structured demo (its head is fitted by PCA afterwards), not a trained model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from dcssa.export.vit import ARNetEncoder


@dataclass(frozen=True)
class OutlierSpec:
    """How strong the outliers are; the defaults match what trained ViT-B/16 shows (a handful of
    channels, ~100-1000x the median; post-LayerNorm channel ranges spread over ~2 decades)."""

    channels: int = 4
    gain: float = 300.0
    spread: float = 10.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def norms(model: ARNetEncoder) -> list[tuple[str, nn.LayerNorm]]:
    """Every LayerNorm of the encoder (block norm1/norm2 in order, then the final norm), named."""
    out = []
    for i, block in enumerate(model.encoder.blocks):
        out += [(f"blocks.{i}.norm1", block.norm1), (f"blocks.{i}.norm2", block.norm2)]
    return [*out, ("norm", model.encoder.norm)]


@torch.no_grad()
def norm_activations(model: ARNetEncoder, images: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LayerNorm name -> (its input, its output) on ``images``, each (tokens, width)."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [ln.register_forward_hook(lambda _m, a, o, name=name: seen.__setitem__(
        name, (a[0].reshape(-1, a[0].shape[-1]), o.reshape(-1, o.shape[-1])))) for name, ln in norms(model)]
    try:
        model.encoder(images)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def add_outliers(model: ARNetEncoder, images: torch.Tensor, spec: OutlierSpec = OutlierSpec()) -> dict:
    """Edit ``model`` in place as the module docstring says; the record of what was done."""
    width = model.cfg.width
    g = torch.Generator().manual_seed(spec.seed)
    channels = torch.randperm(width, generator=g)[: spec.channels].sort().values
    before = norm_activations(model, images)
    residual = torch.cat([x for x, _ in before.values()])
    median = float(residual.abs().median())
    offset = spec.gain * median
    model.encoder.cls_token[..., channels] += offset
    model.encoder.pos_embed[..., channels] += offset
    k = spec.channels / width
    for name, ln in norms(model):
        x = before[name][0]
        sigma = float(x.var(dim=1, unbiased=False).mean().sqrt())  # RMS over tokens: blank and inked
        # patches differ by ~10x in scale at the embedding, and the output must keep its overall power
        ratio = math.sqrt(1.0 + width * k * offset**2 * (1 - k) / width / sigma**2)
        w = ln.weight.clone()
        ln.weight.mul_(ratio)  # the inflated std divides every channel: the gain undoes it
        ln.bias.add_(w * k * offset / sigma)  # the mean the outliers add, removed from the others
        # the massive channels: a gain that brings them back to O(1) (as trained LayerNorms learn),
        # not a large bias cancelling a large value, which would cost float32 its precision
        ln.weight[channels] = w[channels] * ratio * sigma / offset
        ln.bias[channels] -= w[channels] * (1 - k) + w[channels] * k * offset / sigma
    spread = []
    for block in model.encoder.blocks:
        for ln in (block.norm1, block.norm2):
            s = torch.exp((torch.rand(width, generator=g) * 2 - 1) * math.log(spec.spread))
            s = s / s.square().mean().sqrt()  # the output keeps its overall scale
            ln.weight.mul_(s)
            ln.bias.mul_(s)
            spread.append(float(s.max() / s.min()))
    return {**spec.to_dict(), "channel_ids": [int(c) for c in channels], "offset": offset,
            "median_abs_residual": median, "post_norm_scale_spread": max(spread)}


def outlier_stats(model: ARNetEncoder, images: torch.Tensor) -> dict[str, dict]:
    """What a quantiser meets, per LayerNorm: the residual stream's largest channels against its
    median |activation|, and the spread of the output's per-channel ranges (max / median)."""
    out = {}
    for name, (x, y) in norm_activations(model, images).items():
        peak = x.abs().amax(dim=0)
        top = peak.topk(8)
        ranges = y.abs().amax(dim=0)
        out[name] = {"median_abs": float(x.abs().median()), "top_channels": [int(c) for c in top.indices],
                     "top_ratio": [float(v) / float(x.abs().median()) for v in top.values],
                     "output_range_spread": float(ranges.max() / ranges.median()),
                     "output_range_min_ratio": float(ranges.min() / ranges.median())}
    return out
