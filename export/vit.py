"""ARNet's encoder: a ViT with timm's key names, sized from the weights it loads.

ARNet (ExponentiAI/ARNet) wraps a timm ``vit_base_patch16_224`` as ``encoder`` and a one-layer
``mlp_head``; its embedding is the CLS token after the ViT's final norm, through ``mlp_head``. The
authors' code needs timm <= 0.5 (it touches ``dist_token``); exporting needs no timm at all: this
module has the same parameters under the same names, and spells attention out in plain matrix
products so the ONNX graph holds only core operators any backend runs. Its equality with timm's own
``VisionTransformer`` is a test (``tests/export/test_arnet.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

#: timm's ViT LayerNorm epsilon (``partial(nn.LayerNorm, eps=1e-6)``)
LN_EPS = 1e-6
#: heads of timm's ViT-Ti/S/B/L are all width / 64; the weights cannot say it (qkv is 3W x W whatever
#: the split), so this is the default and ``--num-heads`` the override
HEAD_WIDTH = 64


@dataclass(frozen=True)
class ViTConfig:
    """The sizes of one encoder, all read from its state_dict except ``heads``."""

    width: int
    depth: int
    heads: int
    patch: int
    image_size: int
    mlp_hidden: int
    qkv_bias: bool
    embed: int  # mlp_head output: the embedding size E

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], heads: int | None = None) -> ViTConfig:
        """Sizes from the keys ``encoder.*`` / ``mlp_head.0.*`` (KeyError names a missing one)."""
        width, _, patch, _ = sd["encoder.patch_embed.proj.weight"].shape
        tokens = sd["encoder.pos_embed"].shape[1] - 1  # minus the CLS token
        grid = int(round(tokens**0.5))
        if grid * grid != tokens:
            raise ValueError(f"encoder.pos_embed holds {tokens} patch positions, not a square grid")
        depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.blocks."))
        heads = heads or max(1, int(width) // HEAD_WIDTH)
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        return cls(
            width=int(width), depth=depth, heads=int(heads), patch=int(patch), image_size=grid * int(patch),
            mlp_hidden=int(sd["encoder.blocks.0.mlp.fc1.weight"].shape[0]),
            qkv_bias="encoder.blocks.0.attn.qkv.bias" in sd,
            embed=int(sd["mlp_head.0.weight"].shape[0]),
        )


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, cfg.patch, stride=cfg.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, tokens, W)


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.scale = (cfg.width // cfg.heads) ** -0.5
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, w = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (N, heads, T, w/heads)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, w))


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_hidden)
        self.act = nn.GELU()  # exact (erf), as timm's ViT
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """timm's ``VisionTransformer`` forward up to the final norm (class token, no dist token)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        tokens = (cfg.image_size // cfg.patch) ** 2
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, cfg.width))
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.width, eps=LN_EPS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        return self.norm(self.blocks(x))


class ARNetEncoder(nn.Module):
    """One of ARNet's two encoders (``img_model`` or ``skt_model``): image -> unit-norm embedding."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ViT(cfg)
        self.mlp_head = nn.Sequential(nn.Linear(cfg.width, cfg.embed))

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        """``mlp_head`` of the CLS token, not normalised (the authors' ``forward()[0]``)."""
        return self.mlp_head(self.encoder(images)[:, 0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # the authors normalise at evaluation (F.normalize, eps 1e-12); the graph does it once
        return nn.functional.normalize(self.embedding(images), dim=1)

    @torch.no_grad()
    def init_like_timm(self, generator: torch.Generator | None = None) -> ARNetEncoder:
        """Random weights of timm's ViT init: truncated normal std 0.02, zero biases, unit norms."""
        for name, p in self.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif p.ndim == 1:
                p.zero_()
            else:
                nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04, generator=generator)
        return self
