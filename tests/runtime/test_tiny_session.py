"""The runtime on a tiny onnx.helper bundle, with torch absent: graphs, causal sessions, manifests.

Every expectation comes from :class:`tiny_bundle.TinyReference` (float64 numpy over the same
weights), not from the runtime itself, and the whole file also runs in a subprocess where torch,
dcssa.export and dcssa.calibration cannot be imported.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")

from tiny_bundle import TinyReference, write_tiny_bundle, write_tiny_gallery  # noqa: E402

from dcssa.runtime.backends import get_backend  # noqa: E402
from dcssa.runtime.contract import manifest as mf  # noqa: E402
from dcssa.runtime.contract.bundle import Bundle  # noqa: E402
from dcssa.runtime.data.synthetic import random_sketch  # noqa: E402
from dcssa.runtime.errors import BundleError  # noqa: E402
from dcssa.runtime.session import Retriever  # noqa: E402
from dcssa.runtime.stroke.pipeline import PhotoPipeline, SketchPipeline

ATOL = 1e-5
BLOCKED = ("torch", "dcssa.export", "dcssa.calibration")
# set in the torch-free subprocess below, so it does not start itself again
_CHILD_ENV = "DCSSA_TINY_SESSION_CHILD"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def tiny(root) -> Path:
    return write_tiny_bundle(root / "bundle", seed=0)


@pytest.fixture(scope="module")
def tiny_v1(root) -> Path:
    return write_tiny_bundle(root / "bundle-v1", schema=1, seed=0)


@pytest.fixture(scope="module")
def ref(tiny) -> TinyReference:
    return TinyReference(tiny)


@pytest.fixture(scope="module")
def gallery(tiny, root):
    return write_tiny_gallery(tiny, root / "gallery")


@pytest.fixture(scope="module")
def strokes() -> list[np.ndarray]:
    return random_sketch(np.random.default_rng(7), 6)


def _edited_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / mf.MANIFEST).read_text())
    edit(doc)
    (dst / mf.MANIFEST).write_text(json.dumps(doc))
    return dst


def _replay(bundle_path: Path, gallery, strokes) -> list:
    r = Retriever(Bundle.load(bundle_path), gallery, backend="ort-cpu", topk=3)
    session = r.session()
    return [session.add_stroke(s) for s in strokes]


# -- graphs ----------------------------------------------------------------------------------------


def test_graphs_have_the_manifest_signatures(tiny):
    bundle = Bundle.load(tiny)
    backend = get_backend("ort-cpu")
    for name in mf.PHASE_GRAPHS[2]:
        session = backend.load(bundle.graph_path(name), bundle.graph_spec(name)).session
        spec = mf.graph_spec(name, 16, 8)
        assert {i.name: i.shape for i in session.get_inputs()} == spec.inputs
        assert {o.name: o.shape for o in session.get_outputs()} == spec.outputs


def test_graphs_equal_the_numpy_reference(tiny, ref):
    bundle = Bundle.load(tiny)
    backend = get_backend("ort-cpu")
    run = {n: backend.load(bundle.graph_path(n), bundle.graph_spec(n)).run for n in mf.PHASE_GRAPHS[2]}
    rng = np.random.default_rng(3)
    sketches = rng.normal(0, 1, (2, 3, 299, 299)).astype(np.float32)
    np.testing.assert_allclose(run[mf.SKETCH_ENCODER]({mf.IMAGES: sketches})[mf.FEATURES],
                               ref.sketch_features(sketches), atol=ATOL)
    photos = rng.normal(0, 1, (2, 3, 41, 57)).astype(np.float32)
    np.testing.assert_allclose(run[mf.PHOTO_ENCODER]({mf.IMAGES: photos})[mf.EMBEDDINGS],
                               ref.photo_embeddings(photos), atol=ATOL)
    feats = rng.normal(0, 1, (5, 16)).astype(np.float32)
    np.testing.assert_allclose(run[mf.HEAD_FULL]({mf.FEATURES: feats})[mf.EMBEDDINGS], ref.head_full(feats), atol=ATOL)
    for t in (0, 3):
        past_k, past_v = rng.normal(0, 1, (2, t, 16)).astype(np.float32)
        out = run[mf.HEAD_STEP]({mf.FEATURE: feats[:1], mf.PAST_KEYS: past_k, mf.PAST_VALUES: past_v})
        for got, want in zip((out[mf.EMBEDDING], out[mf.KEY], out[mf.VALUE]), ref.head_step(feats[:1], past_k, past_v)):
            np.testing.assert_allclose(got, want, atol=ATOL)


def test_gallery_rows_are_the_reference_photo_embeddings(tiny, ref, gallery):
    from PIL import Image

    photos = Path(gallery.meta["photos_root"])
    assert len(gallery) == 6
    pipeline = PhotoPipeline(Bundle.load(tiny).photo_recipe)
    for row, pid in zip(gallery.embeddings, gallery.ids):
        with Image.open(photos / pid) as im:
            want = ref.photo_embeddings(pipeline.preprocess(im))[0]
        np.testing.assert_allclose(row, want, atol=ATOL)


# -- sessions --------------------------------------------------------------------------------------


def test_each_stroke_is_the_last_row_of_the_head_over_its_prefix(tiny, ref, gallery, strokes):
    """The causal property: stroke t sees strokes 1..t only, not the later ones the full head mixes in.

    Sessions keep their cache rows rounded to float16 (what a session store keeps): the rows are the
    reference's keys and values rounded so (to one float16 step: a float32/float64 difference can
    tip a rounding), and each embedding is the reference step over those rows."""
    feats = ref.sketch_features(SketchPipeline(Bundle.load(tiny).sketch_recipe).prefix_images(strokes))
    session = Retriever(Bundle.load(tiny), gallery, backend="ort-cpu", topk=3).session()
    results = [session.add_stroke(s) for s in strokes]
    keys, values = session.kv_rows()
    full = ref.head_full(feats)
    photo = np.asarray(gallery.embeddings, np.float64)
    for t, res in enumerate(results, 1):
        want, k, v = ref.head_step(feats[t - 1 : t], keys[: t - 1], values[: t - 1])
        for row, exact in ((keys[t - 1], k[0]), (values[t - 1], v[0])):
            assert np.array_equal(row, row.astype(np.float16))  # float16 values, held as float32
            np.testing.assert_allclose(row, exact, rtol=2.0**-10, atol=ATOL)
        assert res.stroke == t
        np.testing.assert_allclose(res.embedding, want[0], atol=ATOL)
        np.testing.assert_allclose(res.feature, feats[t - 1], atol=ATOL)
        assert res.ids == [gallery.ids[i] for i in np.argsort(-(photo @ want[0]))[:3]]
    # the check can tell: the non-causal rows of earlier strokes differ from what a live user sees
    assert max(np.abs(full[t - 1] - r.embedding).max() for t, r in enumerate(results[:-1], 1)) > 1e-3


def test_undo_restores_the_previous_result_and_the_next_stroke_replays_bit_for_bit(tiny, gallery, strokes):
    session = Retriever(Bundle.load(tiny), gallery, backend="ort-cpu", topk=3).session()
    first = [session.add_stroke(s) for s in strokes[:4]]
    back = session.undo()
    assert back is first[2] and session.num_strokes == 3
    assert session.result.stroke == 3
    again = session.add_stroke(strokes[3])
    assert np.array_equal(again.embedding, first[3].embedding)
    assert np.array_equal(again.scores, first[3].scores) and again.ids == first[3].ids
    # undo then a different stroke: the dropped cache row must not leak into it
    session.undo()
    other = session.add_stroke(strokes[5])
    fresh = Retriever(Bundle.load(tiny), gallery, backend="ort-cpu", topk=3).session()
    for s in [*strokes[:3], strokes[5]]:
        want = fresh.add_stroke(s)
    assert np.array_equal(other.embedding, want.embedding)


# -- manifests -------------------------------------------------------------------------------------


def test_schema_1_bundle_is_upgraded_and_answers_the_same(tiny, tiny_v1, gallery, strokes):
    raw = json.loads((tiny_v1 / mf.MANIFEST).read_text())
    assert raw["schema_version"] == 1
    assert all(set(e["fp32"]) == {"file", "precision", "inputs", "outputs"} for e in raw["graphs"].values())
    bundle = Bundle.load(tiny_v1)
    info = bundle.describe()
    assert (info["schema_version"], info["upgraded_from"]) == (2, 1)
    assert Bundle.load(tiny).describe()["upgraded_from"] is None
    assert bundle.graph_spec(mf.HEAD_STEP).state == {mf.PAST_KEYS: mf.KEY, mf.PAST_VALUES: mf.VALUE}
    assert bundle.graph_spec(mf.SKETCH_ENCODER).heavy and not bundle.graph_spec(mf.HEAD_STEP).heavy
    assert bundle.graph_spec(mf.SKETCH_ENCODER) == Bundle.load(tiny).graph_spec(mf.SKETCH_ENCODER)
    for old, new in zip(_replay(tiny_v1, gallery, strokes), _replay(tiny, gallery, strokes)):
        assert np.array_equal(old.embedding, new.embedding) and old.ids == new.ids


def test_a_newer_schema_is_refused_naming_it(tiny, tmp_path):
    path = _edited_copy(tiny, tmp_path / "b", lambda doc: doc.update(schema_version=99))
    with pytest.raises(BundleError) as err:
        Bundle.load(path)
    assert "99" in err.value.message
    assert "upgrade dcssa-rt" in str(err.value)


def test_an_unknown_sketch_preprocessing_key_is_refused_naming_it(tiny, tmp_path):
    path = _edited_copy(tiny, tmp_path / "b", lambda doc: doc["preprocessing"]["sketch"].update(stroke_width=3))
    with pytest.raises(BundleError, match="stroke_width"):
        Bundle.load(path)


# -- without torch ---------------------------------------------------------------------------------


@pytest.mark.skipif(os.environ.get(_CHILD_ENV) == "1", reason="already the torch-free run")
def test_this_file_passes_with_torch_not_importable():
    """Run this file again in a fresh interpreter where torch, export and calibration cannot import."""
    block = "; ".join(f"sys.modules[{name!r}] = None" for name in BLOCKED)
    code = (f"import sys; {block}; import pytest; "
            f"sys.exit(pytest.main([{__file__!r}, '-q', '-p', 'no:cacheprovider', '-W', 'ignore']))")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, _CHILD_ENV: "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 9, proc.stdout[-2000:]
    assert "1 skipped" in proc.stdout  # only this test, which would start itself again


@pytest.mark.skipif(os.environ.get(_CHILD_ENV) != "1", reason="checks the torch-free run from inside it")
def test_the_torch_free_run_cannot_import_torch():
    for name in BLOCKED:
        with pytest.raises(ImportError):
            importlib.import_module(name)
