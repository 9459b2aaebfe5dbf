"""The per-stroke confidence: features, the stored calibrator, its measures, and where it shows up.

Expectations are independent of the code under test: features hand-computed on a known ranking
sequence (and, in a live session, from the gallery's own scores), the calibrator against
scikit-learn's ``predict_proba``, ECE / Brier / early stop worked out by hand on small arrays.
Sessions run on the torch-free tiny bundle.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")
sklearn = pytest.importorskip("sklearn")

from tiny_bundle import write_tiny_bundle, write_tiny_gallery  # noqa: E402

from dcssa.runtime import Bundle, Gallery, Retriever  # noqa: E402
from dcssa.runtime.cli import main  # noqa: E402
from dcssa.runtime.evaluation import fit_confidence as C  # noqa: E402
from dcssa.runtime.search.confidence import (
    CONFIDENCE_FILE,
    FEATURES,
    ConfidenceError,
    LogisticModel,
    fingerprint,
    load_calibrator,
    stroke_features,
)

STROKES = [np.array([[30.0, 40.0], [200.0, 60.0], [220.0, 200.0]]),
           np.array([[60.0, 220.0], [128.0, 30.0]]),
           np.array([[20.0, 128.0], [236.0, 128.0], [128.0, 236.0]]),
           np.array([[50.0, 50.0], [90.0, 180.0]])]


# -- features ------------------------------------------------------------------------------------------
def test_features_on_a_known_ranking_sequence():
    s1 = np.array([0.9, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0, -0.1])
    f1 = stroke_features(s1, 4, 1, None, None)
    # top1, top1 - 2nd, top1 - 10th, strokes, changed (first stroke: yes), held, score change
    np.testing.assert_allclose(f1, [0.9, 0.2, 0.9, 1, 1, 1, 0.0])
    s2 = np.array([0.8, 0.75, 0.5, 0.4, 0.3, 0.3, 0.3, 0.2, 0.2, 0.1])
    f2 = stroke_features(s2, 4, 2, f1, 4)  # same top-1 photo
    np.testing.assert_allclose(f2, [0.8, 0.05, 0.7, 2, 0, 2, -0.1])
    f3 = stroke_features(s2 + 0.15, 4, 3, f2, 4)
    np.testing.assert_allclose(f3, [0.95, 0.05, 0.7, 3, 0, 3, 0.15])
    f4 = stroke_features(np.array([0.5, 0.2, 0.1]), 7, 4, f3, 4)  # new top-1; 3 photos: margin to the last
    np.testing.assert_allclose(f4, [0.5, 0.3, 0.4, 4, 1, 1, -0.45])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("confidence")


@pytest.fixture(scope="module")
def tiny(root) -> Path:
    return write_tiny_bundle(root / "bundle", seed=0)


@pytest.fixture(scope="module")
def gallery(tiny, root) -> Gallery:
    return write_tiny_gallery(tiny, root / "gallery", photos=12)


def test_session_features_follow_the_gallery_scores_and_no_confidence_without_a_calibrator(tiny, gallery):
    b = Bundle.load(tiny)
    r = Retriever(b, gallery, backend="ort-cpu", topk=3)
    assert r.confidence is None and not (gallery.path / CONFIDENCE_FILE).exists()
    session = r.session()
    prev_top, prev_score, held = None, None, 0
    for t, stroke in enumerate(STROKES, 1):
        res = session.add_stroke(stroke)
        full = np.sort(gallery.scores(res.embedding).astype(np.float64))[::-1]
        top = int(np.argmax(gallery.scores(res.embedding)))
        changed = prev_top is None or top != prev_top
        held = 1 if changed else held + 1
        want = [full[0], full[0] - full[1], full[0] - full[9], t, float(changed), held,
                0.0 if prev_score is None else full[0] - prev_score]
        np.testing.assert_allclose(res.signals, want, atol=1e-6)
        assert len(res.ids) == 3 and res.confidence is None and "confidence" not in res.to_dict()
        prev_top, prev_score = top, full[0]
    # undo: the next stroke's features continue from the kept strokes
    session.undo()
    again = session.add_stroke(STROKES[3])
    np.testing.assert_allclose(again.signals, res.signals, atol=1e-6)


# -- the calibrator ------------------------------------------------------------------------------------
def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.uniform(0, 1, n), rng.uniform(0, 0.5, n), rng.uniform(0, 1, n), rng.integers(1, 20, n),
                         rng.integers(0, 2, n), rng.integers(1, 10, n), rng.normal(0, 0.1, n)]).astype(np.float64)
    return x


def test_calibrator_equals_sklearn_predict_proba():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = _data()
    rng = np.random.default_rng(1)
    y = rng.uniform(size=len(x)) < 1 / (1 + np.exp(-(8 * x[:, 1] - 2 + 0.1 * x[:, 3] - 1)))
    model = C.fit_model(x, y)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(x, y)
    test = _data(50, seed=7)
    np.testing.assert_allclose(model.predict(test), ref.predict_proba(test)[:, 1], rtol=1e-9, atol=1e-12)


def test_features_that_determine_correctness_give_confident_answers():
    x = _data(600, seed=2)
    y = x[:, 1] > 0.25  # the margin to the 2nd decides
    model = C.fit_model(x, y)
    p = model.predict(x)
    assert p[x[:, 1] > 0.35].min() > 0.9 and p[x[:, 1] < 0.15].max() < 0.1
    with pytest.raises(ConfidenceError, match="every one of the 600 fitting strokes is correct"):
        C.fit_model(x, np.ones(len(x), bool))


def test_ece_and_brier_by_hand():
    p = np.array([0.05, 0.15, 0.12, 0.95, 0.91, 0.55])
    y = np.array([0, 1, 0, 1, 1, 0])
    # bins: [0,.1): {.05|0}, [.1,.2): {.15|1, .12|0}, [.5,.6): {.55|0}, [.9,1]: {.95|1, .91|1}
    want_ece = (1 * abs(0.05 - 0) + 2 * abs(0.135 - 0.5) + 1 * abs(0.55 - 0) + 2 * abs(0.93 - 1)) / 6
    assert C.ece(p, y) == pytest.approx(want_ece)
    want_brier = (0.05**2 + 0.85**2 + 0.12**2 + 0.05**2 + 0.09**2 + 0.55**2) / 6
    assert C.brier(p, y) == pytest.approx(want_brier)
    assert C.bin_index(np.array([0.0, 0.1, 0.999, 1.0])).tolist() == [0, 1, 9, 9]


def test_early_stop_by_hand():
    # two sketches: A has 3 strokes (right from stroke 2), B has 2 strokes (wrong throughout)
    rep = C.Replay(np.zeros((5, len(FEATURES))), np.array([0, 1, 1, 0, 0], bool), np.ones(5, bool),
                   np.ones(5, np.int64), np.array([0, 0, 0, 1, 1]), np.array([1, 2, 3, 1, 2]), ["A", "B"])
    p = np.array([0.2, 0.8, 0.95, 0.6, 0.7])
    lo, hi = C.early_stop(p, rep, thresholds=(0.55, 0.9))
    # 0.55: A stops at stroke 2 (right, 1 saved), B at stroke 1 (wrong, 1 saved): 2 of 5 strokes saved
    assert lo == {"threshold": 0.55, "stopped_early": 1.0, "strokes_saved": 0.4, "mean_strokes_saved": 1.0,
                  "accuracy_at_stop": 0.5, "accuracy_at_end": 0.5, "accuracy_of_early_stops": 0.5}
    # 0.9: A stops at its last stroke, B never stops
    assert hi["stopped_early"] == 0.0 and hi["strokes_saved"] == 0.0 and hi["accuracy_of_early_stops"] is None
    assert hi["accuracy_at_stop"] == 0.5


# -- stored in the gallery folder -------------------------------------------------------------------------
def _store(bundle: Bundle, gallery: Gallery, seed=0) -> dict:
    x = _data(200, seed)
    models = {t: C.fit_model(x, x[:, 1] > (0.2 if t == "top1" else 0.1)) for t in ("top1", "top10")}
    rep = C.Replay(x, x[:, 1] > 0.2, x[:, 1] > 0.1, np.ones(len(x), np.int64), np.arange(len(x)) // 4,
                   np.arange(len(x)) % 4 + 1, [f"s{i}" for i in range(50)])
    doc = C.calibrator_doc(models, fingerprint(bundle, gallery), rep, {"sketches": 50, "strokes": 200},
                           {"split": "test", "sketches": 0, "strokes": 0, "summary": {}})
    (gallery.path / CONFIDENCE_FILE).write_text(json.dumps(doc))
    return doc


@pytest.fixture
def calibrated(tiny, root):
    g = write_tiny_gallery(tiny, root / f"g-cal-{np.random.default_rng().integers(1 << 30)}", photos=12)
    doc = _store(Bundle.load(tiny), g)
    return g, doc


def test_stored_calibrator_round_trips_and_sessions_report_it(tiny, calibrated):
    g, doc = calibrated
    b = Bundle.load(tiny)
    cal = load_calibrator(b, Gallery.load(g.path, b))
    assert len(doc["data"]["rows"]) == 200 and doc["data"]["columns"] == list(FEATURES)
    for t in ("top1", "top10"):
        m = LogisticModel.from_dict(doc["models"][t])
        x = np.array(doc["data"]["rows"][:20])
        np.testing.assert_array_equal(cal.models[t].predict(x), m.predict(x))
    r = Retriever(b, Gallery.load(g.path, b), backend="ort-cpu")
    res = r.session().add_stroke(STROKES[0])
    want = {t: float(LogisticModel.from_dict(doc["models"][t]).predict(res.signals[None])[0]) for t in ("top1", "top10")}
    assert res.confidence == pytest.approx(want) and 0 < want["top1"] < 1
    assert res.to_dict()["confidence"] == {k: round(v, 6) for k, v in want.items()}


def test_calibrator_of_another_bundle_or_gallery_or_corrupted_is_refused(tiny, root, calibrated):
    g, doc = calibrated
    path = g.path / CONFIDENCE_FILE
    other = write_tiny_bundle(root / "other-bundle", seed=5)  # another sketch encoder and head
    bad = json.loads(json.dumps(doc))
    bad["fingerprint"]["graphs"]["sketch_encoder"] = fingerprint(Bundle.load(other), g)["graphs"]["sketch_encoder"]
    path.write_text(json.dumps(bad))
    b = Bundle.load(tiny)
    with pytest.raises(ConfidenceError, match="fitted for another bundle .*sketch_encoder") as e:
        Retriever(b, Gallery.load(g.path, b), backend="ort-cpu")
    assert str(path) in str(e.value) and "calibrate-confidence" in str(e.value)
    bad = json.loads(json.dumps(doc))
    bad["fingerprint"]["gallery"]["count"] = 40
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfidenceError, match="fitted on another gallery"):
        load_calibrator(b, Gallery.load(g.path, b))
    path.write_text(json.dumps(doc)[:-30])
    with pytest.raises(ConfidenceError, match="corrupted confidence calibrator"):
        load_calibrator(b, Gallery.load(g.path, b))
    bad = json.loads(json.dumps(doc))
    bad["models"]["top1"]["scale"][2] = 0
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfidenceError, match="scale must be positive"):
        load_calibrator(b, Gallery.load(g.path, b))
    # the CLI: one message naming the file and the fix, exit 2, nothing on stdout
    strokes = root / "strokes.json"
    strokes.write_text(json.dumps({"strokes": [s.tolist() for s in STROKES]}))
    out = CliRunner().invoke(main, ["query", str(strokes), "--bundle", str(tiny), "--gallery", str(g.path),
                                    "--backend", "ort-cpu", "--json"])
    assert out.exit_code == 2 and out.stdout == ""
    assert str(path) in out.stderr and "fix:" in out.stderr and "scale must be positive" in out.stderr


def test_query_json_and_info_with_and_without_a_calibrator(tiny, gallery, calibrated, root):
    strokes = root / "strokes2.json"
    strokes.write_text(json.dumps({"strokes": [s.tolist() for s in STROKES]}))
    runner = CliRunner()

    def query(g):
        out = runner.invoke(main, ["query", str(strokes), "--bundle", str(tiny), "--gallery", str(g),
                                   "--backend", "ort-cpu", "--json"])
        assert out.exit_code == 0, out.output
        return [json.loads(line) for line in out.stdout.splitlines()]

    assert all("confidence" not in row for row in query(gallery.path))
    rows = query(calibrated[0].path)
    assert len(rows) == 4 and all(0 < row["confidence"]["top1"] < 1 and 0 < row["confidence"]["top10"] < 1 for row in rows)
    info = runner.invoke(main, ["info", "--bundle", str(tiny), "--gallery", str(gallery.path)])
    assert info.exit_code == 0 and "confidence: none" in info.stdout
    info = runner.invoke(main, ["info", "--bundle", str(tiny), "--gallery", str(calibrated[0].path), "--json"])
    doc = json.loads(info.stdout)["confidence"]
    assert doc["fitted"] and doc["fitted_on"]["sketches"] == 50


# -- fitting end to end on a small synthetic dataset -------------------------------------------------------------
def test_calibrate_refuses_labels_with_one_class_and_writes_nothing(tiny, root):
    from dcssa.runtime.data.datasets import write_dataset
    from dcssa.runtime.indexing.build import build_gallery

    data = write_dataset(root / "data-tiny", photos=8, sketches_per_photo=1, seed=4)
    gpath = root / "g-tiny-fit"
    build_gallery(data / "photo", Bundle.load(tiny), gpath)
    res = CliRunner().invoke(main, ["calibrate-confidence", "--dataset", str(data), "--bundle", str(tiny),
                                    "--gallery", str(gpath), "--backend", "ort-cpu", "--out", str(root / "r-tiny"),
                                    "--quiet"])
    # 8 photos: every target is always in the top 10, so P(top10) has nothing to learn (P(top1) may fail first)
    assert res.exit_code == 2 and "Shapes_Coordinate" in res.stderr, res.output
    assert "cannot fit P(top10)" in res.stderr or "cannot fit P(top1)" in res.stderr
    assert not (gpath / CONFIDENCE_FILE).exists() and not (root / "r-tiny").exists()


def test_calibrate_confidence_command_end_to_end(bundle2, tmp_path):
    from dcssa.runtime.data.datasets import write_dataset
    from dcssa.runtime.indexing.build import build_gallery

    data = write_dataset(tmp_path / "data", photos=12, sketches_per_photo=2, seed=4)
    gpath = tmp_path / "gallery"
    build_gallery(data / "photo", Bundle.load(bundle2), gpath)
    out = tmp_path / "report"
    args = ["calibrate-confidence", "--dataset", str(data), "--bundle", str(bundle2), "--gallery", str(gpath),
            "--backend", "ort-cpu", "--out", str(out), "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    doc = json.loads((gpath / CONFIDENCE_FILE).read_text())
    assert doc["fitted_on"]["sketches"] == 12 and doc["fitted_on"]["split"] == "train"
    assert len(doc["data"]["rows"]) == doc["fitted_on"]["strokes"] == len(doc["data"]["top1"])
    rep = json.loads((out / "confidence.json").read_text())
    assert rep["holdout"]["sketches"] == 12 and {"reliability.png", "early_stop.png"} <= set(rep["files"])
    # the stored rows are what a session computes: replay the first fitting sketch by hand
    b = Bundle.load(bundle2)
    from dcssa.runtime.data.qmul import load_split
    from dcssa.runtime.stroke.parse import points_to_strokes

    sketch = load_split(data, "train").sketches[0]
    r = Retriever(b, Gallery.load(gpath, b), backend="ort-cpu")
    session = r.session()
    for i, stroke in enumerate(points_to_strokes(sketch.points)):
        res = session.add_stroke(stroke)
        np.testing.assert_allclose(doc["data"]["rows"][i], res.signals, atol=1e-6)
        assert doc["data"]["top1"][i] == int(res.ids[0] == sketch.photo + ".png")
        assert set(res.confidence) == {"top1", "top10"} and all(math.isfinite(v) for v in res.confidence.values())
    # a second run refuses to replace the calibrator without --force, and leaves everything as it was
    before = (gpath / CONFIDENCE_FILE).read_text()
    again = CliRunner().invoke(main, args[:-3] + ["--out", str(tmp_path / "report2"), "--quiet"])
    assert again.exit_code == 2 and "already holds a confidence calibrator" in again.stderr
    assert (gpath / CONFIDENCE_FILE).read_text() == before and not (tmp_path / "report2").exists()


# -- serve: JSON, WebSocket, health, page -------------------------------------------------------------
def test_serve_json_and_websocket_carry_the_confidence_only_with_a_calibrator(tiny, gallery, calibrated):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from dcssa.runtime.serve import ServeConfig, create_app

    b = Bundle.load(tiny)
    g, doc = calibrated
    with_cal = Retriever(b, Gallery.load(g.path, b), backend="ort-cpu")
    offline = with_cal.session()
    want = [offline.add_stroke(s).confidence for s in STROKES[:2]]
    thr = (want[0]["top1"] + want[1]["top1"]) / 2  # one stroke below the server's threshold, one above
    below, above = sorted(range(2), key=lambda i: want[i]["top1"])
    with TestClient(create_app(with_cal, config=ServeConfig(max_batch=1, confidence_threshold=thr))) as c:
        sid = c.post("/v1/sessions").json()["id"]
        assert "confidence" not in c.get(f"/v1/sessions/{sid}").json()  # nothing drawn: nothing to be confident of
        got = [c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": s.tolist()}).json() for s in STROKES[:2]]
        for i in range(2):
            conf = got[i]["confidence"]
            assert conf["top1"] == pytest.approx(want[i]["top1"], abs=1e-5)
            assert conf["top10"] == pytest.approx(want[i]["top10"], abs=1e-5)
            assert conf["threshold"] == thr
        assert got[above]["confidence"]["found"] is True and got[below]["confidence"]["found"] is False
        with c.websocket_connect(f"/v1/sessions/{sid}/ws") as ws:
            ws.send_text(json.dumps({"op": "undo"}))
            msg = ws.receive_json()
            assert msg["stroke"] == 1 and msg["confidence"]["top1"] == pytest.approx(want[0]["top1"], abs=1e-5)
        h = c.get("/healthz").json()
        assert h["confidence"] is True and h["confidence_threshold"] == thr
        page = c.get("/").text
        assert 'id="found"' in page and "state.confidence" in page and "c.found" in page
    plain = Retriever(b, gallery, backend="ort-cpu")
    with TestClient(create_app(plain, config=ServeConfig(max_batch=1))) as c:
        sid = c.post("/v1/sessions").json()["id"]
        body = c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": STROKES[0].tolist()}).json()
        assert "confidence" not in body and body["results"]
        with c.websocket_connect(f"/v1/sessions/{sid}/ws") as ws:
            ws.send_text(json.dumps({"op": "stroke", "stroke": STROKES[1].tolist()}))
            msg = ws.receive_json()
            assert msg["stroke"] == 2 and "confidence" not in msg
        assert c.get("/healthz").json()["confidence"] is False


def test_calibrate_confidence_on_an_arnet_folder(tmp_path):
    """A family is data: the ViT session's strokes are replayed from the coordinate file beside an ARNet
    folder, on a gallery of trainB and testB together; a gallery of testB alone is refused, naming why."""
    import shutil

    from dcssa.runtime.data.arnet import load_arnet_split
    from dcssa.runtime.data.datasets import write_arnet_dataset
    from dcssa.runtime.indexing.build import build_gallery
    from dcssa.runtime.stroke.parse import points_to_strokes

    pytest.importorskip("torch")
    from dcssa.export.arnet_demo import vit_config, write_arnet_demo
    from dcssa.export.job import export_bundle

    data = write_arnet_dataset(tmp_path / "adata", photos=24, sketches_per_photo=2, seed=4)
    catalogue = tmp_path / "catalogue"
    for part in ("trainB", "testB"):
        shutil.copytree(data / part, catalogue / part)
    # a small structured demo (random ViT, head = PCA of this catalogue): right often enough to fit P(top1)
    ckpt = write_arnet_demo(tmp_path / "model_Best.pth", cfg=vit_config("tiny", embed=32, depth=2), catalogue=catalogue)
    arnet_bundle = tmp_path / "bundle"
    export_bundle([ckpt], arnet_bundle)
    b = Bundle.load(arnet_bundle)
    build_gallery(catalogue, b, tmp_path / "g")
    build_gallery(data / "testB", b, tmp_path / "g-test")
    args = ["calibrate-confidence", "--dataset", str(data), "--format", "arnet", "--bundle", str(arnet_bundle),
            "--backend", "ort-cpu", "--quiet"]
    bad = CliRunner().invoke(main, [*args, "--gallery", str(tmp_path / "g-test"), "--out", str(tmp_path / "r0")])
    assert bad.exit_code == 2 and "is not in the gallery" in bad.stderr and "trainB-AND-testB" in bad.stderr
    assert not (tmp_path / "r0").exists() and not (tmp_path / "g-test" / CONFIDENCE_FILE).exists()
    res = CliRunner().invoke(main, [*args, "--gallery", str(tmp_path / "g"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "g" / CONFIDENCE_FILE).read_text())
    fit = load_arnet_split(data, "train").sketches
    assert doc["fitted_on"]["format"] == "arnet" and doc["fitted_on"]["sketches"] == len(fit) == 24
    session = Retriever(b, Gallery.load(tmp_path / "g", b), backend="ort-cpu").session()
    for i, stroke in enumerate(points_to_strokes(fit[0].points)):  # the stored rows are the session's signals
        r = session.add_stroke(stroke)
        np.testing.assert_allclose(doc["data"]["rows"][i], r.signals, atol=1e-5)
        assert doc["data"]["top1"][i] == int(Path(r.ids[0]).stem == fit[0].photo)
