"""Graph-friendly forms of the DC-SSA modules, the ones that get exported to ONNX.

Attention is spelled out with MatMul/Softmax instead of ``nn.MultiheadAttention`` so the ONNX graphs
use only core operators every backend (onnxruntime, TensorRT, OpenVINO) fuses well, and so the
stroke head can run causally, one new row at a time, against a K/V cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dcssa.export.model import DCSSA, Projection, SpatialAttention, StrokeHead


def _split_in_proj(mha: nn.MultiheadAttention) -> tuple[torch.Tensor, ...]:
    w, b = mha.in_proj_weight, mha.in_proj_bias
    d = w.shape[1]
    return w[:d], w[d : 2 * d], w[2 * d :], b[:d], b[d : 2 * d], b[2 * d :]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, d: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh)) v per head; q: (..., Lq, d), k/v: (..., Lk, d).

    ``d`` is passed as a Python int so tracing bakes the head split and the scale in as constants.
    """
    dh = d // heads
    lead = q.shape[:-2]
    qh = q.reshape(*lead, -1, heads, dh).transpose(-3, -2)  # (..., H, Lq, dh)
    kh = k.reshape(*lead, -1, heads, dh).transpose(-3, -2)
    vh = v.reshape(*lead, -1, heads, dh).transpose(-3, -2)
    scores = torch.matmul(qh * (1.0 / math.sqrt(dh)), kh.transpose(-1, -2))
    out = torch.matmul(torch.softmax(scores, dim=-1), vh)  # (..., H, Lq, dh)
    return out.transpose(-3, -2).reshape(*lead, -1, d)


class ExplicitSelfAttention(nn.Module):
    """LayerNorm + multi-head self-attention with the weights of an ``nn.MultiheadAttention``."""

    def __init__(self, norm: nn.LayerNorm, mha: nn.MultiheadAttention, heads: int) -> None:
        super().__init__()
        if mha.embed_dim % heads:
            raise ValueError(f"{heads} heads do not divide the embedding size {mha.embed_dim}")
        self.norm = norm
        self.heads = heads
        self.dim = mha.embed_dim
        wq, wk, wv, bq, bk, bv = _split_in_proj(mha)
        self.q = _linear(wq, bq)
        self.k = _linear(wk, bk)
        self.v = _linear(wv, bv)
        self.out = _linear(mha.out_proj.weight, mha.out_proj.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        a = self.norm(tokens)
        return self.out(_attend(self.q(a), self.k(a), self.v(a), self.heads, self.dim))


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return lin


class SpatialAttentionGraph(nn.Module):
    def __init__(self, ref: SpatialAttention, heads: int) -> None:
        super().__init__()
        self.attn = ExplicitSelfAttention(ref.norm, ref.mha, heads)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        n, c, h, w = fmap.shape
        tokens = fmap.flatten(2).transpose(1, 2)
        o = self.attn(tokens).transpose(1, 2).reshape(n, c, h, w)
        g = fmap * o + fmap
        return F.normalize(g.mean(dim=(2, 3)), dim=-1)


class SketchEncoder(nn.Module):
    """rasters (N, 3, 299, 299) -> unit-norm step features (N, D)."""

    def __init__(self, model: DCSSA, heads: int) -> None:
        super().__init__()
        self.trunk = model.sketch_embedding_network
        self.attention = SpatialAttentionGraph(model.sketch_attention, heads)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.attention(self.trunk(images))


class PhotoEncoder(nn.Module):
    """photos (N, 3, H, W) -> unit-norm embeddings (N, E)."""

    def __init__(self, model: DCSSA, heads: int) -> None:
        super().__init__()
        self.trunk = model.sample_embedding_network
        self.attention = SpatialAttentionGraph(model.attention, heads)
        self.linear: Projection = model.linear

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(self.attention(self.trunk(images)))


class StrokeHeadFull(nn.Module):
    """step features (T, D) -> embeddings (T, E), non-causal: the authors' evaluation form."""

    def __init__(self, head: StrokeHead, heads: int) -> None:
        super().__init__()
        self.attn = ExplicitSelfAttention(head.norm, head.mha, heads)
        self.proj = head.proj

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        o = self.attn(features)
        return self.proj(F.normalize(features * o + features, dim=-1))


class StrokeHeadStep(nn.Module):
    """One causal step: the new feature (1, D) and the caches (T, D) -> embedding and new K/V rows.

    The output for stroke t is the last row of the head applied to features 1..t; it needs only the
    new row's query and the keys/values of all rows so far, so the caller appends the returned
    ``key``/``value`` rows to its caches (undo = drop the last row). T may be 0.
    """

    def __init__(self, head: StrokeHead, heads: int) -> None:
        super().__init__()
        self.attn = ExplicitSelfAttention(head.norm, head.mha, heads)
        self.proj = head.proj

    def forward(
        self, feature: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.attn.norm(feature)
        q, k, v = self.attn.q(a), self.attn.k(a), self.attn.v(a)
        keys = torch.cat([past_keys, k], dim=0)
        values = torch.cat([past_values, v], dim=0)
        o = self.attn.out(_attend(q, keys, values, self.attn.heads, self.attn.dim))
        h = F.normalize(feature * o + feature, dim=-1)
        return self.proj(h), k, v


class SketchProjection(nn.Module):
    """Phase-1 sketch embedding: step features (N, D) -> (N, E)."""

    def __init__(self, model: DCSSA) -> None:
        super().__init__()
        self.linear = model.sketch_linear

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)
