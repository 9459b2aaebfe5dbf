"""Shared, expensive fixtures: one demo checkpoint, its phase-2 and phase-1 bundles, a small
synthetic catalogue and its gallery. Everything is generated here; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from session_artefacts import shared

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def demo_ckpt(tmp_path_factory) -> Path:
    from dcssa.export.demo import write_demo_checkpoint

    return shared(tmp_path_factory, "ckpt", lambda d: write_demo_checkpoint(d / "best_top5_model.pth", seed=0))


@pytest.fixture(scope="session")
def demo_state_dict(demo_ckpt):
    import torch

    return torch.load(demo_ckpt, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def ref_model(demo_ckpt):
    from dcssa.export.checkpoint import load_checkpoint

    return load_checkpoint(demo_ckpt).model


@pytest.fixture(scope="session")
def bundle2(demo_ckpt, tmp_path_factory) -> Path:
    from dcssa.export.job import export_bundle

    def make(d: Path) -> Path:
        export_bundle([demo_ckpt], d / "bundle")
        return d / "bundle"

    return shared(tmp_path_factory, "b2", make)


@pytest.fixture(scope="session")
def bundle1(demo_ckpt, tmp_path_factory) -> Path:
    """Phase-1 bundle from the same weights (the phase-2 file read as phase 1)."""
    from dcssa.export.job import export_bundle

    def make(d: Path) -> Path:
        export_bundle([demo_ckpt], d / "bundle", phase=1)
        return d / "bundle"

    return shared(tmp_path_factory, "b1", make)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    from dcssa.runtime.data.datasets import write_dataset

    return shared(tmp_path_factory, "data", lambda d: write_dataset(d, photos=12, seed=3))


@pytest.fixture(scope="session")
def gallery2(bundle2, dataset, tmp_path_factory) -> Path:
    from dcssa.runtime import Bundle, build_gallery

    def make(d: Path) -> Path:
        build_gallery(dataset / "photo", Bundle.load(bundle2), d / "gallery")
        return d / "gallery"

    return shared(tmp_path_factory, "g2", make)


class _CountingRunner:
    """Wraps a runner and counts its calls: call counts are a test concern, not the Runner interface."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.spec, self.input_names, self.output_names = inner.spec, inner.input_names, inner.output_names
        self.thread_safe = inner.thread_safe
        self.calls = 0

    @property
    def name(self) -> str:
        return self.inner.name

    def run(self, feeds):
        self.calls += 1
        return self.inner.run(feeds)


@pytest.fixture
def counting():
    """``counting(runner)`` -> a wrapper with a ``calls`` counter (patch it onto a Retriever)."""
    return _CountingRunner


# -- ARNet: a tiny ViT pair made with timm (the authors' own library), exported once ----------------

ARNET_TINY = {"width": 128, "depth": 2, "heads": 2, "embed": 32}


def timm_arnet_state_dicts(seed: int = 0, **size) -> dict:
    """ARNet's ``model_Best.pth`` content with random timm ViTs (``encoder.*``) and ``mlp_head.0``."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    dims = {**ARNET_TINY, **size}
    out = {}
    for i, key in enumerate(("img_model", "skt_model")):
        torch.manual_seed(seed * 2 + i)
        vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=dims["width"], depth=dims["depth"],
                                num_heads=dims["heads"], num_classes=1000)
        head = torch.nn.Sequential(torch.nn.Linear(dims["width"], dims["embed"]))
        sd = {f"encoder.{k}": v for k, v in vit.state_dict().items()}
        sd.update({f"mlp_head.{k}": v for k, v in head.state_dict().items()})
        out[key] = sd
    return {**out, "epoch": 7, "loss": 0.25, "top1": 40.11, "top5": 67.54, "top10": 79.29}


@pytest.fixture(scope="session")
def arnet_ckpt(tmp_path_factory) -> Path:
    import torch

    pytest.importorskip("timm")

    def make(d: Path) -> Path:
        torch.save(timm_arnet_state_dicts(), d / "model_Best.pth")
        return d / "model_Best.pth"

    return shared(tmp_path_factory, "arnet", make)


@pytest.fixture(scope="session")
def arnet_bundle(arnet_ckpt, tmp_path_factory) -> Path:
    from dcssa.export.job import export_bundle

    def make(d: Path) -> Path:
        export_bundle([arnet_ckpt], d / "bundle")
        return d / "bundle"

    return shared(tmp_path_factory, "ab", make)


@pytest.fixture(scope="session")
def arnet_dataset(tmp_path_factory) -> Path:
    from dcssa.runtime.data.datasets import write_arnet_dataset

    return shared(tmp_path_factory, "adata", lambda d: write_arnet_dataset(d, photos=8, sketches_per_photo=2, seed=4))


@pytest.fixture(scope="session")
def arnet_gallery(arnet_bundle, arnet_dataset, tmp_path_factory) -> Path:
    from dcssa.runtime import Bundle, build_gallery

    def make(d: Path) -> Path:
        build_gallery(arnet_dataset / "testB", Bundle.load(arnet_bundle), d / "gallery")
        return d / "gallery"

    return shared(tmp_path_factory, "ag", make)
