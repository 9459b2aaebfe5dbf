"""`dcssa-bench session-fidelity` on the tiny bundle: its float32 side is the float64 numpy reference
(the head over every prefix, float32 cache), its float16 side a live session, and its summary what
the per-stroke rows say."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_bundle import TinyReference, write_tiny_bundle, write_tiny_gallery

    from dcssa.runtime import Bundle, Retriever

    root = tmp_path_factory.mktemp("fid")
    bundle = write_tiny_bundle(root / "bundle", seed=0)
    gallery = write_tiny_gallery(bundle, root / "gallery", photos=8)
    return root, Retriever(Bundle.load(bundle), gallery, backend="ort-cpu", topk=8), TinyReference(bundle)


def test_float32_side_is_the_reference_and_the_summary_the_rows(tiny):
    from dcssa.benchmarks.session_fidelity import compare, summarise
    from dcssa.runtime.data.synthetic import random_sketch
    from dcssa.runtime.stroke.pipeline import SketchPipeline

    _, retriever, ref = tiny
    g = retriever.gallery
    photos = np.asarray(g.embeddings, np.float64)
    rows = []
    for seed, target in ((1, 3), (2, 6)):
        strokes = random_sketch(np.random.default_rng(seed), 5)
        got = compare(retriever, strokes, target)
        feats = ref.sketch_features(SketchPipeline(retriever.bundle.sketch_recipe).prefix_images(strokes))
        for t, row in enumerate(got, 1):
            scores = photos @ ref.head_full(feats[:t])[-1]  # float64, no rounding anywhere
            assert row["rank32"] == int((scores >= scores[target]).sum())
        rows += got
    s = summarise(rows)
    assert s["strokes"] == len(rows) == 10
    assert s["top10_identical"] == np.mean([r["identical"] for r in rows])
    assert s["top10_identical"] <= s["top10_same_set"] and s["top10_identical"] <= s["top1_same"]
    assert s["acc1_fp32"] == np.mean([r["rank32"] == 1 for r in rows])
    assert 0 < s["max_abs_embedding_diff"] < 1e-2  # rounded, and only a little


def test_cli_writes_its_report_and_refuses_an_unknown_target(tiny, tmp_path):
    from dcssa.benchmarks.cli import main
    from dcssa.runtime.data.synthetic import random_sketch

    root, retriever, _ = tiny
    folder = tmp_path / "tracings"
    folder.mkdir()
    sketch = random_sketch(np.random.default_rng(4), 3)
    doc = {"strokes": [s.tolist() for s in sketch], "target": retriever.gallery.ids[2]}
    (folder / "a.json").write_text(json.dumps(doc))
    args = ["session-fidelity", "--bundle", str(root / "bundle"), "--gallery", str(root / "gallery"),
            "--tracings", str(folder), "--out", str(tmp_path / "out"), "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["tracings"] == 1 and rep["strokes"] == 3
    assert json.loads((tmp_path / "out" / "session_fidelity.json").read_text()) == rep
    (folder / "a.json").write_text(json.dumps({**doc, "target": "nope.png"}))
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "nope.png" in r.output and "a.json" in r.output
