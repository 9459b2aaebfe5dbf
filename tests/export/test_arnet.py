"""ARNet export: the loader on both checkpoint kinds, the graphs against timm's own ViT run the
authors' way (``EncoderViT.embedding`` + ``mlp_head`` on the CLS token), the manifest's recipes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import ARNET_TINY, timm_arnet_state_dicts

from dcssa.export.arnet import load_arnet_checkpoint
from dcssa.export.checkpoint import CheckpointError
from dcssa.export.cli import main as export_cli
from dcssa.export.job import export_bundle
from dcssa.runtime.backends import get_backend
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import Bundle
from dcssa.runtime.stroke.pipeline import PhotoPipeline, SketchPipeline

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402


def authors_embedding(sd: dict, images: torch.Tensor) -> np.ndarray:
    """ARNet's evaluation forward on a timm ViT: patch_embed, CLS, + pos_embed, blocks, norm,
    ``mlp_head(x[:, 0])``, then ``F.normalize`` as get_acc does."""
    vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=ARNET_TINY["width"], depth=ARNET_TINY["depth"],
                            num_heads=ARNET_TINY["heads"], num_classes=1000).eval()
    vit.load_state_dict({k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")})
    head = torch.nn.Linear(ARNET_TINY["width"], ARNET_TINY["embed"])
    head.load_state_dict({"weight": sd["mlp_head.0.weight"], "bias": sd["mlp_head.0.bias"]})
    with torch.no_grad():
        x = vit.patch_embed(images)
        x = torch.cat((vit.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = vit.norm(vit.blocks(vit.pos_drop(x + vit.pos_embed)))
        return torch.nn.functional.normalize(head(x[:, 0]), dim=1).numpy()


def save(tmp_path, obj, name="model_Best.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def refused(path, *fragments, **kw):
    with pytest.raises(CheckpointError) as info:
        load_arnet_checkpoint(path, **kw)
    text = str(info.value)
    for f in fragments:
        assert f in text, text
    return text


# -- loader -----------------------------------------------------------------------------------------

def test_basic_checkpoint_loads_with_sizes_from_the_weights(arnet_ckpt):
    ck = load_arnet_checkpoint(arnet_ckpt)
    cfg = ck.sketch.cfg
    assert (cfg.width, cfg.depth, cfg.heads, cfg.patch, cfg.image_size, cfg.embed) == (128, 2, 2, 16, 224, 32)
    assert ck.meta == {"epoch": 7, "loss": 0.25, "top1": 40.11, "top5": 67.54, "top10": 79.29}
    # the timm classifier is the only thing left out, in both encoders
    assert sorted({k.split(".", 1)[1] for k in ck.ignored_keys}) == ["encoder.head.bias", "encoder.head.weight"]
    assert not ck.demo


def test_our_vit_is_the_authors_forward_on_timm(arnet_ckpt):
    ck = load_arnet_checkpoint(arnet_ckpt)
    raw = torch.load(arnet_ckpt, weights_only=True)
    x = torch.rand(3, 3, 224, 224)
    for module, key in ((ck.sketch, "skt_model"), (ck.photo, "img_model")):
        with torch.no_grad():
            ours = module(x).numpy()
        assert np.abs(ours - authors_embedding(raw[key], x)).max() < 1e-5


def test_plus_checkpoint_is_refused_with_the_reason(tmp_path):
    obj = timm_arnet_state_dicts()
    for key in ("img_model", "skt_model"):
        obj[key]["recycle_model.fc.weight"] = torch.zeros(1, 249)
        obj[key]["recycle_model.fc.bias"] = torch.zeros(1)
    refused(save(tmp_path, obj), "refused", "'plus' (MSTR)", "never saved", "recycle_model.fc.bias", "cannot be reproduced")


def test_missing_and_extra_keys_are_named(tmp_path):
    obj = timm_arnet_state_dicts()
    del obj["skt_model"]["encoder.blocks.1.mlp.fc2.weight"]
    refused(save(tmp_path, obj, "a.pth"), "skt_model misses keys", "encoder.blocks.1.mlp.fc2.weight")
    obj = timm_arnet_state_dicts()
    obj["img_model"]["encoder.blocks.0.attn.q_norm.weight"] = torch.ones(64)
    refused(save(tmp_path, obj, "b.pth"), "img_model has keys the ARNet encoder does not use",
            "encoder.blocks.0.attn.q_norm.weight")
    obj = timm_arnet_state_dicts()
    del obj["img_model"]["mlp_head.0.weight"]
    refused(save(tmp_path, obj, "c.pth"), "img_model misses key 'mlp_head.0.weight'")
    refused(save(tmp_path, {"state_dict": {"x": torch.zeros(1)}}, "d.pth"), "not an ARNet checkpoint",
            "'img_model' and 'skt_model'")


def test_encoders_of_different_embedding_sizes_are_refused(tmp_path):
    obj = timm_arnet_state_dicts()
    obj["img_model"].update(timm_arnet_state_dicts(embed=16)["img_model"])
    refused(save(tmp_path, obj), "the encoders disagree", "sketch embeds 32-d", "photo 16-d")


# -- export -----------------------------------------------------------------------------------------

def test_bundle_records_the_family_and_its_preprocessing(arnet_bundle):
    m = json.loads((arnet_bundle / mf.MANIFEST).read_text())
    assert m["family"] == "arnet" and m["phase"] is None
    assert set(m["graphs"]) == {mf.SKETCH_ENCODER, mf.PHOTO_ENCODER}
    for name in m["graphs"]:
        entry = m["graphs"][name]["fp32"]
        assert entry["inputs"] == {"images": ["N", 3, 224, 224]} and entry["outputs"] == {"embeddings": ["N", 32]}
        assert m["parity"][name]["max_abs_err"] <= 1e-4
    sk, ph = m["preprocessing"]["sketch"], m["preprocessing"]["photo"]
    assert sk["mean"] == [0, 0, 0] and sk["std"] == [1, 1, 1] and sk["ink"] == "black"
    assert (sk["canvas"], sk["line_width"], sk["size"]) == (256, 3, [224, 224])
    assert ph["size"] == [224, 224] and ph["mean"] == [0, 0, 0]
    assert m["source"]["training"]["top1"] == 40.11
    b = Bundle.load(arnet_bundle)
    assert b.family == "arnet" and b.head_graph is None and b.sketch_output == mf.EMBEDDINGS


def test_graphs_match_timm_on_the_runtimes_own_inputs(arnet_bundle, arnet_ckpt):
    """Independent of our ViT module: the ONNX graphs against timm run the authors' way."""
    b = Bundle.load(arnet_bundle)
    raw = torch.load(arnet_ckpt, weights_only=True)
    rng = np.random.default_rng(1)
    from dcssa.runtime.data.synthetic import random_sketch, textured_photo

    x_sketch = SketchPipeline(b.sketch_recipe).prefix_images(random_sketch(rng, 5))
    x_photo = np.concatenate([PhotoPipeline(b.photo_recipe).preprocess(textured_photo(rng, w, h)) for w, h in ((224, 224), (300, 200))])
    backend = get_backend("ort-cpu")
    for name, key, x in ((mf.SKETCH_ENCODER, "skt_model", x_sketch), (mf.PHOTO_ENCODER, "img_model", x_photo)):
        runner = backend.load(b.graph_path(name), b.graph_spec(name))
        got = runner.run({mf.IMAGES: x})[mf.EMBEDDINGS]
        assert np.abs(got - authors_embedding(raw[key], torch.from_numpy(x))).max() < 1e-4
        assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_cli_detects_the_family_and_overrides_the_sketch_drawing(arnet_ckpt, tmp_path):
    res = CliRunner().invoke(export_cli, ["--ckpt", str(arnet_ckpt), "--out", str(tmp_path / "b"),
                                          "--sketch-canvas", "300", "--line-width", "5"])
    assert res.exit_code == 0, res.output
    assert "model family: arnet (detected from the checkpoint's keys)" in res.output
    sk = Bundle.load(tmp_path / "b").sketch_recipe
    assert (sk.canvas, sk.line_width, sk.dilation) == (300, 5, 2)
    res = CliRunner().invoke(export_cli, ["--ckpt", str(arnet_ckpt), "--out", str(tmp_path / "c"), "--line-width", "4"])
    assert res.exit_code == 2 and "even" in res.output and not (tmp_path / "c").exists()
    res = CliRunner().invoke(export_cli, ["--ckpt", str(arnet_ckpt), "--out", str(tmp_path / "d"), "--phase", "2"])
    assert res.exit_code == 2 and "ARNet has no phases" in res.output and not (tmp_path / "d").exists()


def test_cli_refuses_a_plus_checkpoint_and_writes_nothing(tmp_path):
    obj = timm_arnet_state_dicts()
    obj["skt_model"]["recycle_model.fc.weight"] = torch.zeros(1, 249)
    path = save(tmp_path, obj)
    res = CliRunner().invoke(export_cli, ["--ckpt", str(path), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "model_Best.pth" in res.output and "'plus' (MSTR)" in res.output
    assert not (tmp_path / "b").exists()


def test_forcing_the_wrong_family_is_a_clear_error(arnet_ckpt, demo_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="not an ARNet checkpoint"):
        export_bundle([demo_ckpt], tmp_path / "x", family="arnet")
    with pytest.raises(CheckpointError, match="is an ARNet checkpoint"):
        export_bundle([arnet_ckpt], tmp_path / "y", family="dcssa")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
