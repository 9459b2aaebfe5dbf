"""Live catalogue updates: swap the gallery folder, reload, and a live session continues on the new one.

The expectation is always an offline session drawn from the first stroke on the NEW gallery (a
second Retriever loaded from that folder): after a swap, a session's next stroke, its undo and its
confidence features must be exactly what that session would give. The admin endpoint's caller
is named by a real API key (``serve --api-keys`` with ``--admin``).
"""

from __future__ import annotations

import gc
import shutil
import weakref

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")

from fastapi.testclient import TestClient  # noqa: E402

from dcssa.runtime import Bundle, Gallery, Retriever  # noqa: E402
from dcssa.runtime.data.synthetic import random_sketch  # noqa: E402
from dcssa.runtime.search.catalogue import catalogue_fingerprint, load_catalogue  # noqa: E402
from dcssa.runtime.serve import ServeConfig, create_app  # noqa: E402
from dcssa.runtime.serve.keys import add_key  # noqa: E402
from dcssa.runtime.serve.middleware import CATALOGUE_HEADER  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def galleries(tiny):
    """Two catalogues of the tiny bundle (8 and 6 different photos) and one of ANOTHER bundle."""
    from tiny_bundle import write_tiny_bundle, write_tiny_gallery

    write_tiny_gallery(tiny / "bundle", tiny / "new-gallery", photos=6, seed=7)
    other = write_tiny_bundle(tiny / "other-bundle", seed=3)
    write_tiny_gallery(other, tiny / "foreign-gallery", photos=8, seed=1)
    return tiny / "gallery", tiny / "new-gallery", tiny / "foreign-gallery"


@pytest.fixture()
def live(tiny, galleries, tmp_path):
    """A server's --gallery folder (a copy of the first catalogue) and a Retriever reading it."""
    folder = tmp_path / "gallery"
    shutil.copytree(galleries[0], folder)
    b = Bundle.load(tiny / "bundle")
    return folder, Retriever(b, Gallery.load(folder, b), backend="ort-cpu", topk=5)


def replace_folder(src, dst) -> None:
    """What `dcssa-rt index --out DST --force` does: the new folder is complete before it takes the name."""
    staged = dst.parent / (dst.name + ".new")
    shutil.copytree(src, staged)
    shutil.rmtree(dst)
    staged.rename(dst)


def keyed(r, tmp_path, *, admin, caller):
    """An app with API keys for ``ops`` and ``eve``, ``admin`` as its --admin, and a client's headers for ``caller``."""
    path = tmp_path / "keys.json"
    keys = {name: add_key(path, name)[1] for name in ("ops", "eve")}
    app = create_app(r, config=ServeConfig(admin=admin, api_keys=path))
    return app, ({} if caller is None else {"Authorization": f"Bearer {keys[caller]}"})


def offline(tiny, folder, strokes):
    b = Bundle.load(tiny / "bundle")
    s = Retriever(b, Gallery.load(folder, b), backend="ort-cpu", topk=5).session()
    return [s.add_stroke(x) for x in strokes]


def same(served: dict, want) -> None:
    assert served["stroke"] == want.stroke
    assert [m["id"] for m in served["results"]] == want.ids
    assert np.allclose([m["score"] for m in served["results"]], want.scores, atol=TOL)


@pytest.fixture(scope="module")
def strokes():
    return random_sketch(np.random.default_rng(3), 4)


def test_swap_mid_sketch_next_stroke_equals_offline_on_new_gallery(tiny, galleries, live, strokes, tmp_path):
    folder, r = live
    app, auth = keyed(r, tmp_path, admin="ops", caller="ops")
    old_fp = catalogue_fingerprint(r.gallery)
    with TestClient(app, headers=auth) as c:
        sid = c.post("/v1/sessions").json()["id"]
        for i, xy in enumerate(strokes[:2]):
            res = c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": xy.tolist(), "after": i})
            assert res.headers[CATALOGUE_HEADER] == old_fp and res.json()["catalogue"] == old_fp
        same(res.json(), offline(tiny, galleries[0], strokes[:2])[-1])

        replace_folder(galleries[1], folder)
        res = c.post("/v1/admin/reload")
        assert res.status_code == 200, res.text
        new_fp = load_catalogue(folder, r.bundle).fingerprint
        assert res.json() == {"catalogue": new_fp, "previous": old_fp, "gallery": 6, "confidence": False,
                              "changed": True}
        assert new_fp != old_fp and c.get("/healthz").json()["catalogue"] == new_fp

        want = offline(tiny, galleries[1], strokes[:3])  # drawn on the new gallery from the first stroke
        res = c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": strokes[2].tolist(), "after": 2})
        body = res.json()
        same(body, want[2])
        assert body["catalogue"] == new_fp and res.headers[CATALOGUE_HEADER] == new_fp
        assert {m["id"] for m in body["results"]} <= set(Gallery.load(galleries[1]).ids)
        undone = c.post(f"/v1/sessions/{sid}/undo").json()  # the kept result, re-ranked on the new gallery
        same(undone, want[1])


def test_the_old_catalogue_is_released_after_a_swap(tiny, galleries, live, strokes, tmp_path):
    """Reload after reload must not accumulate galleries: nothing keeps the old one once swapped."""
    folder, r = live
    app, auth = keyed(r, tmp_path, admin="ops", caller="ops")
    old = weakref.ref(r.gallery)
    with TestClient(app, headers=auth) as c:
        sid = c.post("/v1/sessions").json()["id"]
        c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": strokes[0].tolist()})
        c.get("/v1/photos/" + r.gallery.ids[0])
        replace_folder(galleries[1], folder)
        assert c.post("/v1/admin/reload").status_code == 200
        assert c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": strokes[1].tolist()}).status_code == 200
        gc.collect()
        assert old() is None


def test_a_stroke_in_flight_finishes_on_the_catalogue_it_started_with(tiny, galleries, live, strokes):
    folder, r = live
    s = r.session()
    s.add_stroke(strokes[0])
    image = s.prepare_stroke(strokes[1])
    r.catalogue = load_catalogue(galleries[1], r.bundle)  # the swap, while the encoder runs
    got = s.finish_stroke(r.encoder.run({"images": image})[r.encoder_output])
    old = offline(tiny, galleries[0], strokes[:2])
    assert got.ids == old[1].ids and np.allclose(got.scores, old[1].scores, atol=TOL)
    assert got.catalogue == catalogue_fingerprint(Gallery.load(galleries[0]))
    nxt = s.add_stroke(strokes[2])  # the next one ranks on the new catalogue, as if drawn on it
    new = offline(tiny, galleries[1], strokes[:3])
    assert nxt.ids == new[2].ids and np.array_equal(nxt.signals, new[2].signals)
    assert [x.ids for x in s.results()] == [x.ids for x in new]


def test_a_folder_of_another_model_is_refused_and_the_old_catalogue_kept(tiny, galleries, live, strokes, tmp_path):
    folder, r = live
    app, auth = keyed(r, tmp_path, admin="ops", caller="ops")
    old_fp = r.catalogue.fingerprint
    with TestClient(app, headers=auth) as c:
        sid = c.post("/v1/sessions").json()["id"]
        replace_folder(galleries[2], folder)
        res = c.post("/v1/admin/reload")
        assert res.status_code == 409
        body = res.json()
        assert body["error"] == "reload_failed" and "another photo encoder" in body["message"]
        assert str(folder) in body["message"] and old_fp in body["message"] and "dcssa-rt index" in body["hint"]
        res = c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": strokes[0].tolist(), "after": 0})
        same(res.json(), offline(tiny, galleries[0], strokes[:1])[0])
        assert res.json()["catalogue"] == old_fp


@pytest.mark.parametrize("keys, principal, admin", [(False, None, "ops"), (True, "eve", "ops"),
                                                   (True, "ops", None)])
def test_the_admin_endpoint_is_403_unless_called_by_the_admin(live, tmp_path, keys, principal, admin):
    _folder, r = live
    if keys:
        app, auth = keyed(r, tmp_path, admin=admin, caller=principal)
    else:
        app, auth = create_app(r, config=ServeConfig(admin=admin)), {}
    with TestClient(app, headers=auth) as c:
        res = c.post("/v1/admin/reload")
    assert res.status_code == 403
    body = res.json()
    assert body["error"] == "forbidden" and "--admin" in body["hint"]
    if principal is None or admin is None:
        assert body["message"] == "the admin endpoint needs --api-keys and --admin"
    else:
        assert "'eve' is not" in body["message"]


def test_the_admin_endpoint_needs_a_key(live, tmp_path):
    """With --api-keys, no key is a 401 from the key layer before the admin check (no reload happens)."""
    _folder, r = live
    app, _auth = keyed(r, tmp_path, admin="ops", caller=None)
    with TestClient(app) as c:
        assert c.post("/v1/admin/reload").status_code == 401


def write_calibrator(bundle: Bundle, gallery: Gallery) -> None:
    """A calibrator fitted (sklearn) on made-up feature rows, fingerprinted for ``bundle`` and ``gallery``."""
    pytest.importorskip("sklearn")
    import json

    from dcssa.runtime.evaluation import fit_confidence as C
    from dcssa.runtime.search.confidence import CONFIDENCE_FILE, fingerprint

    rng = np.random.default_rng(0)
    x = np.column_stack([rng.uniform(0, 1, 200), rng.uniform(0, 0.5, 200), rng.uniform(0, 1, 200),
                         rng.integers(1, 20, 200), rng.integers(0, 2, 200), rng.integers(1, 10, 200),
                         rng.normal(0, 0.1, 200)])
    models = {t: C.fit_model(x, x[:, 1] > (0.2 if t == "top1" else 0.1)) for t in ("top1", "top10")}
    rep = C.Replay(x, x[:, 1] > 0.2, x[:, 1] > 0.1, np.ones(200, np.int64), np.arange(200) // 4,
                   np.arange(200) % 4 + 1, [f"s{i}" for i in range(50)])
    doc = C.calibrator_doc(models, fingerprint(bundle, gallery), rep, {"sketches": 50, "strokes": 200},
                           {"split": "test", "sketches": 0, "strokes": 0, "summary": {}})
    (gallery.path / CONFIDENCE_FILE).write_text(json.dumps(doc))


def test_the_calibrator_travels_with_its_gallery(tiny, galleries, live, strokes, tmp_path):
    """A new gallery with its calibrator: confidence as offline on it; a calibrator of another gallery: refused."""
    folder, r = live
    b = r.bundle
    calibrated = tmp_path / "calibrated"
    shutil.copytree(galleries[1], calibrated)
    write_calibrator(b, Gallery.load(calibrated, b))
    app, auth = keyed(r, tmp_path, admin="ops", caller="ops")
    with TestClient(app, headers=auth) as c:
        sid = c.post("/v1/sessions").json()["id"]
        first = c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": strokes[0].tolist(), "after": 0}).json()
        assert "confidence" not in first  # the first gallery has no calibrator
        replace_folder(calibrated, folder)
        assert c.post("/v1/admin/reload").json()["confidence"] is True
        body = c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": strokes[1].tolist(), "after": 1}).json()
        want = offline(tiny, calibrated, strokes[:2])[1]
        same(body, want)
        assert body["confidence"]["top1"] == pytest.approx(want.confidence["top1"], abs=1e-9)
        assert body["confidence"]["top10"] == pytest.approx(want.confidence["top10"], abs=1e-9)
        # a gallery whose calibrator was fitted on other photos: the whole catalogue is refused
        mismatched = tmp_path / "mismatched"
        shutil.copytree(galleries[0], mismatched)
        shutil.copy(calibrated / "confidence.json", mismatched / "confidence.json")
        replace_folder(mismatched, folder)
        res = c.post("/v1/admin/reload")
        assert res.status_code == 409 and "fitted on another gallery" in res.json()["message"]
        assert c.get("/healthz").json()["catalogue"] == body["catalogue"]  # still the calibrated one
