"""DC-SSA in PyTorch, with module names equal to the authors' state_dict keys.

The trunk reuses torchvision's Inception-v3 blocks so checkpoints load with ``strict=True`` after the
known-harmless extras are dropped (see :mod:`dcssa.export.checkpoint`). ``nn.MultiheadAttention``
is kept here because it *is* the reference; the graph-friendly forms that get exported live in
:mod:`dcssa.export.graphs` and are checked against these modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcssa.export.defaults import DEFAULT_EMBED, DEFAULT_HEADS

D = 2048  # Inception-v3 trunk channels

TRUNK_BLOCKS = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
)


class InceptionTrunk(nn.Module):
    """Inception-v3 up to Mixed_7c (no ``transform_input``, no AuxLogits, no fc)."""

    def __init__(self, init_weights: bool = False) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        # init_weights=False by default: the truncated-normal init is slow and a checkpoint
        # overwrites every weight; demo models ask for it (their random features are better).
        full = inception_v3(weights=None, aux_logits=False, init_weights=init_weights, transform_input=False)
        for name in TRUNK_BLOCKS:
            setattr(self, name, getattr(full, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in TRUNK_BLOCKS[5:]:
            x = getattr(self, name)(x)
        return x


class SpatialAttention(nn.Module):
    """Self-attention over the h*w positions, gated residual, average pool, L2 normalisation."""

    def __init__(self, dim: int = D, num_heads: int = DEFAULT_HEADS) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mha = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        n, c, h, w = fmap.shape
        tokens = fmap.reshape(n, c, h * w).transpose(1, 2)
        a = self.norm(tokens)
        o, _ = self.mha(a, a, a, need_weights=False)
        o = o.transpose(1, 2).reshape(n, c, h, w)
        g = fmap * o + fmap
        return F.normalize(g.mean(dim=(2, 3)), dim=-1)


class Projection(nn.Module):
    """``Linear_global`` of the authors: Linear then L2 normalisation (dropout is off at inference)."""

    def __init__(self, dim: int = D, embed: int = DEFAULT_EMBED) -> None:
        super().__init__()
        self.head_layer = nn.Linear(dim, embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head_layer(x), dim=-1)


class StrokeHead(nn.Module):
    """Stroke Self-Attention over the sequence of partial-sketch features (T x D -> T x E).

    Non-causal, exactly as the authors train and evaluate it; the causal form is a property of how
    it is called (on a prefix, keeping the last row).
    """

    def __init__(self, dim: int = D, embed: int = DEFAULT_EMBED, num_heads: int = DEFAULT_HEADS) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mha = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.proj = Projection(dim, embed)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        a = self.norm(seq)
        o, _ = self.mha(a, a, a, need_weights=False)
        h = F.normalize(seq * o + seq, dim=-1)
        return self.proj(h)


class DCSSA(nn.Module):
    """The phase-2 model (``phase=1``: the baseline, without the stroke head)."""

    def __init__(self, embed: int = DEFAULT_EMBED, num_heads: int = DEFAULT_HEADS, phase: int = 2) -> None:
        super().__init__()
        if phase not in (1, 2):
            raise ValueError(f"phase must be 1 or 2, not {phase}")
        self.phase = phase
        self.num_heads = num_heads
        self.embed = embed
        self.sample_embedding_network = InceptionTrunk()
        self.attention = SpatialAttention(D, num_heads)
        self.linear = Projection(D, embed)
        self.sketch_embedding_network = InceptionTrunk()
        self.sketch_attention = SpatialAttention(D, num_heads)
        self.sketch_linear = Projection(D, embed)
        if phase == 2:
            self.attn = StrokeHead(D, embed, num_heads)

    def photo_embedding(self, photos: torch.Tensor) -> torch.Tensor:
        return self.linear(self.attention(self.sample_embedding_network(photos)))

    def sketch_feature(self, rasters: torch.Tensor) -> torch.Tensor:
        return self.sketch_attention(self.sketch_embedding_network(rasters))

    def sketch_embedding(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings of a sequence of step features (T x D), as the reference evaluates them."""
        if self.phase == 2:
            return self.attn(features)
        return self.sketch_linear(features)
