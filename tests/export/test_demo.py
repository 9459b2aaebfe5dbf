"""The structured demo model: its construction, and that it really retrieves on its catalogue."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcssa.export.demo import catalogue_images
from dcssa.runtime import Bundle, Retriever, build_gallery
from dcssa.runtime.data.datasets import write_dataset
from dcssa.runtime.stroke.parse import load_strokes_file
from dcssa.runtime.stroke.pipeline import PhotoPipeline


def test_branches_share_one_trunk_and_attention(demo_state_dict):
    sd = demo_state_dict
    shared = [("sample_embedding_network.", "sketch_embedding_network."), ("attention.", "sketch_attention.")]
    for photo, sketch in shared:
        keys = [k for k in sd if k.startswith(photo)]
        assert len(keys) >= 6  # attention: norm (2) + mha (4); the trunk has hundreds
        for k in keys:
            assert torch.equal(sd[k], sd[sketch + k[len(photo):]]), k
    for proj in ("sketch_linear.", "attn.proj."):
        for p in ("head_layer.weight", "head_layer.bias"):
            assert torch.equal(sd["linear." + p], sd[proj + p])


def test_projection_is_the_centred_pca_of_the_catalogue(demo_state_dict, ref_model):
    """Independent PCA (eigenvectors of the covariance) of features computed here from the photos."""
    images = catalogue_images(None, shapes=40, seed=0)
    x = torch.from_numpy(np.concatenate([PhotoPipeline().preprocess(im) for im in images]))
    with torch.no_grad():
        feats = ref_model.attention(ref_model.sample_embedding_network(x)).double().numpy()
    mean = feats.mean(0)
    cov = (feats - mean).T @ (feats - mean)
    evals, evecs = np.linalg.eigh(cov)
    k = len(images) - 1  # 40 photos span 39 directions
    top = evecs[:, ::-1][:, :k]  # (D, k), largest variance first
    w = demo_state_dict["linear.head_layer.weight"].double().numpy()
    b = demo_state_dict["linear.head_layer.bias"].double().numpy()
    assert w.shape == (64, 2048)
    assert np.abs(w[k:]).max() == 0  # no variance left for the remaining rows
    # same subspace, same order (up to sign): |<w_i, v_i>| = 1 for the well-separated directions
    gaps = -np.diff(evals[::-1][: k + 1])
    distinct = [i for i in range(k) if gaps[i] > 1e-6 * evals[-1] and (i == 0 or gaps[i - 1] > 1e-6 * evals[-1])]
    assert len(distinct) > k // 2
    for i in distinct:
        assert abs(w[i] @ top[:, i]) > 0.999, i
    assert np.allclose(w[:k] @ w[:k].T, np.eye(k), atol=1e-6)  # orthonormal: no whitening
    assert np.allclose(b, -w @ mean, atol=1e-6)


@pytest.fixture(scope="module")
def catalogue40(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("cat40"), photos=40, seed=0)


def test_demo_retrieves_its_catalogue(bundle2, catalogue40, tmp_path):
    """Last-stroke accuracy far above chance (1/40), and the target rises as strokes arrive."""
    b = Bundle.load(bundle2)
    g = build_gallery(catalogue40 / "photo", b, tmp_path / "g")
    r = Retriever(b, g, backend="ort-cpu", topk=1)
    first, last = [], []
    for f in sorted((catalogue40 / "strokes").glob("*.json")):
        target = g.ids.index(f.name.rsplit("_", 1)[0] + ".png")
        session = r.session()
        ranks = []
        for stroke in load_strokes_file(f):
            s = g.scores(session.add_stroke(stroke).embedding)
            ranks.append(int((s >= s[target]).sum()))
        first.append(ranks[0])
        last.append(ranks[-1])
    first, last = np.array(first), np.array(last)
    assert (last == 1).mean() >= 0.5  # chance: 0.025
    assert (last <= 10).mean() >= 0.8  # chance: 0.25
    assert last.mean() < first.mean() / 2


def test_plain_random_keeps_independent_branches():
    from dcssa.export.demo import plain_random_model

    m = plain_random_model(seed=1, phase=1)
    a = m.sample_embedding_network.Conv2d_1a_3x3.conv.weight
    b = m.sketch_embedding_network.Conv2d_1a_3x3.conv.weight
    assert not torch.equal(a, b)
    assert not torch.equal(m.linear.head_layer.weight, m.sketch_linear.head_layer.weight)


def test_centred_pca_of_a_trunk_narrower_than_the_embedding():
    """More photos than trunk features (ViT-Ti: 192 < 512): the head keeps the 192 directions there are."""
    import numpy as np

    from dcssa.export.demo import centred_pca

    feats = np.random.default_rng(0).normal(size=(300, 12))
    weight, bias = centred_pca(feats, 20)
    assert weight.shape == (20, 12) and np.allclose(weight[12:], 0)
    assert np.allclose(weight[:12] @ weight[:12].T, np.eye(12), atol=1e-8)  # orthonormal directions
    assert np.allclose(bias, -weight @ feats.mean(0))
