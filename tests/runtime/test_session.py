"""Stroke sessions: causal embeddings equal the reference, one encoder pass per stroke, exact undo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcssa.runtime import Bundle, Gallery, Retriever, SessionError, StrokeError
from dcssa.runtime.data.synthetic import random_sketch
from dcssa.runtime.stroke.parse import strokes_to_points
from dcssa.runtime.stroke.pipeline import SketchPipeline
from dcssa.runtime.stroke.raster import rasterize

STROKES = 22


@pytest.fixture(scope="module")
def sketch():
    return random_sketch(np.random.default_rng(11), STROKES)


@pytest.fixture(scope="module")
def retriever2(bundle2, gallery2):
    b = Bundle.load(bundle2)
    return Retriever(b, Gallery.load(gallery2, b), backend="ort-cpu", topk=5)


@pytest.fixture(scope="module")
def reference_embeddings(ref_model, sketch):
    """PyTorch: rasterise each prefix from scratch, encode, full head on the prefix, last row."""
    pre = SketchPipeline().preprocess
    rasters = np.concatenate([pre(rasterize(strokes_to_points(sketch[: t + 1]))) for t in range(len(sketch))])
    with torch.no_grad():
        feats = ref_model.sketch_feature(torch.from_numpy(rasters))
        emb = np.stack([ref_model.attn(feats[: t + 1])[-1].numpy() for t in range(len(sketch))])
    return feats.numpy(), emb


def test_session_matches_reference_stroke_by_stroke(retriever2, sketch, reference_embeddings):
    feats, want = reference_embeddings
    session = retriever2.session()
    full = retriever2.backend.load(retriever2.bundle.graph_path("stroke_head_full"))
    for t, stroke in enumerate(sketch):
        res = session.add_stroke(stroke)
        assert res.stroke == t + 1
        assert np.abs(res.feature - feats[t]).max() <= 1e-4
        assert np.abs(res.embedding - want[t]).max() <= 1e-4
        # second code path: the non-causal full graph on the prefix, last row
        last = full.run({"features": session.features()})["embeddings"][-1]
        assert np.abs(res.embedding - last).max() <= 1e-4


def test_one_encoder_pass_per_stroke_and_undo_runs_nothing(bundle2, gallery2, sketch, counting):
    b = Bundle.load(bundle2)
    r = Retriever(b, Gallery.load(gallery2, b), backend="ort-cpu", topk=5)
    enc, head = r.encoder, r.head = counting(r.encoder), counting(r.head)
    session = r.session()
    before_enc, before_head = enc.calls, head.calls
    results = [session.add_stroke(s) for s in sketch[:6]]
    assert enc.calls - before_enc == 6 and head.calls - before_head == 6
    prev = session.undo()
    assert enc.calls - before_enc == 6 and head.calls - before_head == 6
    assert prev is results[4]
    assert session.num_strokes == 5
    # canvas restored exactly: it equals the rasterised 5-stroke prefix
    assert np.array_equal(session.canvas.image, rasterize(strokes_to_points(sketch[:5])))
    # redoing the stroke reproduces the same answer bit for bit (cache rows were dropped, not kept)
    again = session.add_stroke(sketch[5])
    assert np.array_equal(again.embedding, results[5].embedding)
    assert list(again.ids) == list(results[5].ids)


def test_results_are_the_exact_top_k(retriever2, sketch):
    session = retriever2.session()
    res = session.add_stroke(sketch[0])
    g = retriever2.gallery
    scores = np.asarray(g.embeddings, np.float64) @ res.embedding.astype(np.float64)
    order = np.argsort(-scores, kind="stable")[:5]
    assert [g.ids[i] for i in order] == res.ids
    assert np.allclose(res.scores, scores[order], atol=1e-6)
    assert set(res.timings) == {"rasterise", "preprocess", "encode", "head", "search", "total"}


def test_cache_bound_and_empty_undo(bundle2, sketch):
    r = Retriever(Bundle.load(bundle2), backend="ort-cpu", max_strokes=3)
    session = r.session()
    with pytest.raises(SessionError):
        session.undo()
    for s in sketch[:3]:
        session.add_stroke(s)
    with pytest.raises(SessionError, match="bound"):
        session.add_stroke(sketch[3])
    session.reset()
    assert session.num_strokes == 0 and not session.canvas.image.any()
    session.add_stroke(sketch[0])  # usable again after reset


def test_bad_stroke_is_rejected_and_leaves_session_intact(retriever2, sketch):
    session = retriever2.session()
    session.add_stroke(sketch[0])
    with pytest.raises(StrokeError, match="point 1"):
        session.add_stroke([[1.0, 2.0], [float("nan"), 3.0]])
    with pytest.raises(StrokeError):
        session.add_stroke([])
    assert session.num_strokes == 1


def test_phase1_bundle_through_the_same_api(bundle1, ref_model, sketch):
    r = Retriever(Bundle.load(bundle1), backend="ort-cpu")
    session = r.session()
    pre = SketchPipeline().preprocess
    for t in range(3):
        res = session.add_stroke(sketch[t])
        x = torch.from_numpy(pre(rasterize(strokes_to_points(sketch[: t + 1]))))
        with torch.no_grad():
            want = ref_model.sketch_linear(ref_model.sketch_feature(x))[0].numpy()
        assert np.abs(res.embedding - want).max() <= 1e-4
