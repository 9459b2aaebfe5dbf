"""An ARNet bundle through the same runtime: head-less sessions, the PNG evaluation and its pairing
rule, the ARNet dataset layout, serve. Expectations come from second code paths: torchvision's
transforms on independently drawn rasters, numpy ranks, an offline session."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dcssa.runtime import Bundle, Gallery, Retriever
from dcssa.runtime.cli import main as rt
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.recipes import SketchRecipe, arnet_preprocessing
from dcssa.runtime.data.arnet import load_arnet_split, pair_sketches
from dcssa.runtime.data.synthetic import random_sketch
from dcssa.runtime.errors import BundleError
from dcssa.runtime.evaluation.png_run import acc_at_k, target_ranks
from dcssa.runtime.stroke.parse import strokes_to_points
from dcssa.runtime.stroke.raster import Canvas, rasterize

torchvision = pytest.importorskip("torchvision")
from torchvision import transforms  # noqa: E402


@pytest.fixture(scope="module")
def retriever(arnet_bundle, arnet_gallery):
    b = Bundle.load(arnet_bundle)
    return Retriever(b, Gallery.load(arnet_gallery, b), backend="ort-cpu", topk=5)


def authors_input(mask: np.ndarray) -> np.ndarray:
    """The ink mask as ARNet's PNG (black on white), through Resize(224) + ToTensor."""
    png = Image.fromarray(255 - mask).convert("RGB")
    return transforms.Compose([transforms.Resize(224), transforms.ToTensor()])(png).numpy()[None]


# -- the drawing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dilation", [0, 2])
def test_line_width_is_iterated_cross_dilation(dilation):
    from scipy.ndimage import binary_dilation

    strokes = random_sketch(np.random.default_rng(dilation), 6)
    points = strokes_to_points(strokes)
    thin = rasterize(points, canvas=256, dilation=0) > 0
    want = binary_dilation(thin, iterations=dilation) if dilation else thin
    assert np.array_equal(rasterize(points, canvas=256, dilation=dilation) > 0, want)
    canvas = Canvas(canvas=256, dilation=dilation)
    for s in strokes:
        canvas.add_stroke(s)
    assert np.array_equal(canvas.image > 0, want)
    canvas.undo()
    assert np.array_equal(canvas.image, rasterize(strokes_to_points(strokes[:-1]), canvas=256, dilation=dilation))


def test_recipe_fields_are_checked_and_old_manifests_read_as_dcssa():
    base = SketchRecipe().to_dict()
    assert base["dilation"]["iterations"] == 1 and base["colours"].startswith("white strokes")
    legacy = {k: v for k, v in base.items() if k not in ("ink", "line_width")}  # schema-2 bundles before ARNet
    assert SketchRecipe.from_dict(legacy) == SketchRecipe()
    for bad, msg in (({"line_width": 4}, "odd integer"), ({"ink": "red"}, "ink must be one of"),
                     ({"line_width": 5}, "contradicts the recipe's fields")):
        with pytest.raises(BundleError, match=msg):
            SketchRecipe.from_dict({**base, **bad})
    arnet = SketchRecipe.from_dict(arnet_preprocessing(canvas=300, line_width=7)["sketch"])
    assert (arnet.canvas, arnet.dilation, arnet.ink, arnet.size) == (300, 3, "black", (224, 224))


# -- sessions ---------------------------------------------------------------------------------------

def test_session_encodes_each_partial_sketch_once_as_the_authors_transform_sees_it(retriever, counting):
    r = retriever
    assert r.head is None and r.encoder_output == mf.EMBEDDINGS
    r.encoder = enc = counting(r.encoder)
    try:
        strokes = random_sketch(np.random.default_rng(11), 5)
        s = r.session()
        results = [s.add_stroke(x) for x in strokes]
        assert enc.calls == 5
        for t, res in enumerate(results):
            mask = r.pipeline.rasterize(strokes_to_points(strokes[: t + 1]))  # whole-sketch path
            x = authors_input(mask)
            assert np.array_equal(r.pipeline.preprocess(mask), x)
            want = enc.inner.run({mf.IMAGES: x})[mf.EMBEDDINGS][0]
            assert np.abs(res.embedding - want).max() < 1e-6
            scores = r.gallery.embeddings @ want
            assert res.ids[0] == r.gallery.ids[int(np.argmax(scores))]
        assert s.undo() is results[-2] and enc.calls == 5  # undo runs nothing
        again = s.add_stroke(strokes[-1])
        assert np.abs(again.embedding - results[-1].embedding).max() < 1e-6
    finally:
        r.encoder = enc.inner


def test_query_cli_on_an_arnet_bundle(arnet_bundle, arnet_gallery, arnet_dataset):
    sketch = sorted((arnet_dataset / "strokes").glob("*.json"))[0]
    res = CliRunner().invoke(rt, ["query", str(sketch), "--bundle", str(arnet_bundle), "--gallery", str(arnet_gallery),
                                  "--backend", "ort-cpu", "--json"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
    assert [x["stroke"] for x in lines] == list(range(1, len(lines) + 1)) and lines[-1]["results"]


# -- the ARNet layout and its evaluation ------------------------------------------------------------

def test_hand_computed_ranks_and_accuracy():
    photos = np.eye(4)
    queries = np.array([[0.9, 0.1, 0, 0], [0.5, 0.6, 0.7, 0], [0.2, 0.2, 0.2, 0.1]])
    ranks = target_ranks(queries, photos, np.array([0, 0, 3]))
    assert ranks.tolist() == [1, 3, 4]  # ties of query 3 (photos 0-2 at 0.2) all above its target
    assert acc_at_k(ranks) == {"acc@1": 33.333, "acc@5": 100.0, "acc@10": 100.0}
    assert acc_at_k(np.array([1, 6, 11, 2])) == {"acc@1": 25.0, "acc@5": 50.0, "acc@10": 75.0}


def test_pairing_rules(tmp_path):
    for name in ("a_1.png", "a_2.png", "b_01.png", "c_1.png", "zz_1.png", "a_123.png", "a_1.jpg"):
        (tmp_path / name).write_bytes(b"")
    pairs, rules, unmatched = pair_sketches(tmp_path, ["a.png", "b.jpg", "c.d.png"])
    assert {(p.name, photo) for p, photo in pairs} == {("a_1.png", "a.png"), ("a_2.png", "a.png"),
                                                       ("b_01.png", "b.jpg"), ("c_1.png", "c.d.png")}
    assert rules == {"x_?.png": 3, "x_??.png": 1}
    assert sorted(unmatched) == ["a_123.png", "zz_1.png"]  # only .png sketches are considered


def test_make_dataset_arnet_layout(tmp_path):
    res = CliRunner().invoke(rt, ["make-dataset", str(tmp_path), "--format", "arnet", "--photos", "4",
                                  "--sketches-per-photo", "10", "--test-share", "0.5"])
    assert res.exit_code == 0, res.output
    root = tmp_path / "Shapes"
    assert sorted(p.name for p in (root / "testB").iterdir()) == ["shape0000.png", "shape0001.png"]
    names = sorted(p.name for p in (root / "trainA").iterdir())
    assert len(names) == 20 and names[0] == "shape0002_01.png"  # > 9 sketches: two characters
    png = np.asarray(Image.open(root / "testA" / "shape0000_03.png"))
    assert png.shape == (256, 256) and png.max() == 255 and (png == 255).mean() > 0.8  # black ink on white
    split = load_arnet_split(root, "train")
    assert split.rules == {"x_?.png": 0, "x_??.png": 20} and len(split.sketches) == 20


def test_eval_arnet_matches_numpy_and_the_live_session(arnet_bundle, arnet_dataset, tmp_path):
    out = tmp_path / "ev"
    res = CliRunner().invoke(rt, ["eval", "--dataset", str(arnet_dataset), "--format", "arnet", "--bundle",
                                  str(arnet_bundle), "--backend", "ort-cpu", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    run = doc["runs"][0]
    assert doc["dataset"]["pairing"] == {"x_?.png": 8, "x_??.png": 0}
    # the expectation: torchvision's transform on each PNG, the graph, numpy ranks against the gallery
    b = Bundle.load(arnet_bundle)
    g = Gallery.load(out / "gallery", b)
    enc = Retriever(b, None, backend="ort-cpu").encoder
    tf = transforms.Compose([transforms.Resize(224), transforms.ToTensor()])
    ranks = {}
    for png in sorted((arnet_dataset / "testA").glob("*.png")):
        x = tf(Image.open(png).convert("RGB")).numpy()[None]
        e = enc.run({mf.IMAGES: x})[mf.EMBEDDINGS][0]
        scores = g.embeddings @ e
        own = scores[g.ids.index(png.name.split("_")[0] + ".png")]
        ranks[png.name] = int(1 + (scores > own).sum())
    assert run["png"]["ranks"] == ranks
    assert run["png"]["metrics"] == acc_at_k(np.array(list(ranks.values())))
    # the PNGs are drawn as a live session draws: its last stroke ranks the target the same
    last = {s["key"].split("/")[-1]: s["ranks"][-1] for s in run["sketches"]}
    assert {k.removesuffix(".png"): v for k, v in ranks.items()} == last
    md = (out / "eval.md").read_text()
    assert "Sketch PNGs (the authors' get_acc)" in md and "pairing: 8 by x_?.png" in md


def test_eval_arnet_refuses_a_dcssa_bundle(bundle2, arnet_dataset, tmp_path):
    res = CliRunner().invoke(rt, ["eval", "--dataset", str(arnet_dataset), "--format", "arnet", "--bundle",
                                  str(bundle2), "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "does not take" in res.output and not (tmp_path / "e").exists()


# -- serve --------------------------------------------------------------------------------------------

def test_serve_with_an_arnet_bundle_matches_an_offline_session(retriever):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from dcssa.runtime.serve import ServeConfig, create_app

    strokes = random_sketch(np.random.default_rng(3), 3)
    offline = retriever.session()
    want = [offline.add_stroke(x) for x in strokes]
    with TestClient(create_app(retriever, config=ServeConfig(max_batch=4, batch_window_ms=2))) as c:
        sid = c.post("/v1/sessions").json()["id"]
        for stroke, w in zip(strokes, want):
            r = c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": stroke.tolist()})
            assert r.status_code == 200, r.text
            got = r.json()
            assert [m["id"] for m in got["results"]] == w.ids
            assert np.allclose([m["score"] for m in got["results"]], w.scores, atol=1e-4)
        assert c.post(f"/v1/sessions/{sid}/undo").json()["stroke"] == 2
        assert c.get("/healthz").json()["family"] == "arnet"
