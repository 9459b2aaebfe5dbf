"""Precision: calibration sets, INT8/FP16 graphs in the bundle, fidelity reports, TensorRT checks.

Expectations come from second code paths: prefixes are re-rasterised from scratch with
``rasterize`` (not the incremental canvas), int8 session embeddings are recomputed with a bare
onnxruntime session on the int8 file, the fp16 graph's FP32 nodes are derived here from the op
types and the attention score path of the fp32 graph, Inception block sizes come from the
architecture (torchvision's InceptionA..E), and buffer sizes are worked out by hand.
Calibration runs on a handful of rasters to keep this file fast.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from dcssa.calibration import fidelity as fd
from dcssa.calibration.bundle import calibrate_bundle, commit, load_recipe, parse_precisions
from dcssa.calibration.calibset import (
    CalibrationDataError,
    Sketch,
    load_sketch_data,
    prefix_set,
    split_heldout,
    synthetic_sketches,
)
from dcssa.calibration.engines import engine_sources, profiles
from dcssa.calibration.fp16 import node_precisions
from dcssa.calibration.int8 import TRUNK_BLOCKS, Int8Recipe, node_block
from dcssa.calibration.reader import PrefixReader
from dcssa.calibration.search import choose
from dcssa.runtime import Bundle, Gallery, Retriever
from dcssa.runtime import manifest as mf
from dcssa.runtime.backends import BACKEND_NAMES, available_backends, get_backend
from dcssa.runtime.backends import tensorrt as trtb
from dcssa.runtime.errors import BackendError, DcssaError
from dcssa.runtime.raster import Preprocessor, rasterize
from dcssa.runtime.strokes import strokes_to_points

INT8_BLOCKS = ["Mixed_5b", "Mixed_6a"]


def _gpu_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip cannot install it on this CPU-only machine)"
    try:
        from dcssa.runtime.backends.cuda_memory import cuda_api

        cuda_api()
    except BackendError as exc:
        return f"no usable GPU: {exc.message}"
    return None


NO_GPU = _gpu_reason()


def _ort(path: Path) -> onnxruntime.InferenceSession:
    so = onnxruntime.SessionOptions()
    so.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# -- calibration sets --------------------------------------------------------------------------------


def test_prefixes_equal_full_rerasterisation():
    sketches = synthetic_sketches(2, seed=4)
    ps = prefix_set(sketches)
    assert len(ps) == sum(len(s.strokes) for s in sketches)
    pre = Preprocessor.default()
    for i in range(len(ps)):
        strokes = sketches[ps.sketch[i]].strokes[: ps.stroke[i]]
        want = rasterize(strokes_to_points(strokes))
        np.testing.assert_array_equal(ps.canvases[i], want)
        np.testing.assert_array_equal(ps.images(i, i + 1), pre(want))
    # each sketch's prefixes in stroke order, for the causal head
    for k, idx in enumerate(ps.sequences()):
        assert list(ps.stroke[idx]) == list(range(1, len(sketches[k].strokes) + 1))


def test_subsample_spreads_over_the_set():
    ps = prefix_set(synthetic_sketches(3, seed=1))
    sub = ps.subsample(5)
    assert len(sub) == 5
    assert sub.stroke[0] == ps.stroke[0] and sub.sketch[-1] == ps.sketch[-1]  # first and last kept
    assert ps.subsample(None) is ps and ps.subsample(10_000) is ps


def test_sources_qmul_pickle_strokes_folder_synthetic(dataset):
    coords = pickle.loads(next(dataset.glob("*_Coordinate")).read_bytes())
    data = load_sketch_data(dataset)
    assert len(data.sketches) == len(coords)
    assert data.photos == dataset / "photo"
    s = next(s for s in data.sketches if s.name == sorted(coords)[0])
    np.testing.assert_allclose(strokes_to_points(s.strokes), coords[s.name])
    assert (dataset / "photo" / f"{s.target}.png").is_file()  # target = name minus its _n suffix
    assert s.split in ("train", "test")
    folder = load_sketch_data(dataset / "strokes")
    assert len(folder.sketches) == len(list((dataset / "strokes").glob("*.json")))
    assert all((dataset / "photo" / f"{x.target}.png").is_file() for x in folder.sketches)
    a, b = load_sketch_data("synthetic:3:7"), load_sketch_data("synthetic:3:7")
    assert len(a.sketches) == 3
    for x, y in zip(a.sketches, b.sketches):
        for u, v in zip(x.strokes, y.strokes):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("bad", ["/nonexistent/sketches", "synthetic:x", "synthetic:0"])
def test_bad_sources_are_user_errors(bad):
    with pytest.raises(DcssaError) as info:
        load_sketch_data(bad)
    assert info.value.hint


def test_corrupt_pickle_names_the_file(tmp_path):
    bad = tmp_path / "X_Coordinate"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(CalibrationDataError) as info:
        load_sketch_data(tmp_path)
    assert info.value.path == str(bad)


def test_split_by_sketch(dataset):
    data = load_sketch_data(dataset)
    calib, held = split_heldout(data.sketches)
    assert {s.split for s in calib} == {"train"} and {s.split for s in held} == {"test"}
    plain = [Sketch(f"s{i}", [], None, None) for i in range(40)]
    c1, h1 = split_heldout(plain, 0.3)
    c2, h2 = split_heldout(plain, 0.3)
    assert [s.name for s in c1] == [s.name for s in c2]  # stable
    assert {s.name for s in c1}.isdisjoint({s.name for s in h1})
    assert len(c1) + len(h1) == 40 and 0 < len(h1) < 40
    with pytest.raises(CalibrationDataError):
        split_heldout(plain[:1])


def test_reader_follows_onnxruntime_protocol():
    ps = prefix_set(synthetic_sketches(1, seed=2))
    n = len(ps)
    r = PrefixReader(ps, batch_size=2)
    assert len(r) == -(-n // 2)
    got = list(iter(r.get_next, None))
    assert sum(len(b["images"]) for b in got) == n
    np.testing.assert_array_equal(got[0]["images"], ps.images(0, 2))
    r.set_range(1, 2)
    only = list(iter(r.get_next, None))
    assert len(only) == 1
    np.testing.assert_array_equal(only[0]["images"], ps.images(2, 4))
    r.rewind()
    np.testing.assert_array_equal(r.get_next()["images"], ps.images(2, 4))


# -- graph blocks -----------------------------------------------------------------------------------


def test_blocks_follow_inception_v3(bundle2):
    model = onnx.load(str(Bundle.load(bundle2).graph_path(mf.SKETCH_ENCODER)))
    convs: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type == "Conv":
            convs[node_block(n.name)] = convs.get(node_block(n.name), 0) + 1
    # torchvision Inception-v3: stem convs 1 each, InceptionA 7, B 4, C 10, D 6, E 9 convolutions
    want = {b: 1 for b in TRUNK_BLOCKS[:5]}
    want.update({b: 7 for b in ("Mixed_5b", "Mixed_5c", "Mixed_5d")})
    want.update({"Mixed_6a": 4, "Mixed_7a": 6, "Mixed_7b": 9, "Mixed_7c": 9})
    want.update({b: 10 for b in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e")})
    assert convs == want
    blocks = {n.name: node_block(n.name) for n in model.graph.node}
    assert {k for k, v in blocks.items() if v == "attention.scores"} == {
        "/attention/attn/Mul", "/attention/attn/MatMul", "/attention/attn/Softmax", "/attention/attn/MatMul_1"}
    assert sum(v == "attention.proj" and k.endswith("MatMul") for k, v in blocks.items()) == 4


# -- int8 + fp16 in the bundle ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(bundle2, dataset, gallery2, tmp_path_factory):
    out = tmp_path_factory.mktemp("calib") / "bundle"
    shutil.copytree(bundle2, out)
    manifest = calibrate_bundle(out, dataset, ["int8", "fp16"], recipe=Int8Recipe(blocks=list(INT8_BLOCKS)),
                                gallery=gallery2, max_calib=3, max_heldout=4, latency_rasters=2, quiet=True)
    return out, manifest


def test_manifest_records_graphs_reports_and_recipe(calibrated):
    path, manifest = calibrated
    b = Bundle.load(path)
    assert b.manifest == manifest
    assert manifest["precisions"] == ["fp32", "fp16", "int8"]
    assert set(b.precisions(mf.SKETCH_ENCODER)) == {"fp32", "int8", "fp16"}
    assert set(b.precisions(mf.PHOTO_ENCODER)) == {"fp32", "fp16"}
    assert b.precisions(mf.HEAD_STEP) == ["fp32"]
    entry = b.graph_entry(mf.SKETCH_ENCODER, "int8")
    for fname in (entry["file"], entry["tensorrt_file"], b.graph_entry(mf.SKETCH_ENCODER, "fp16")["file"]):
        assert re.fullmatch(r"sketch_encoder\.(int8|int8sym|fp16)-[0-9a-f]{8}\.onnx", fname)
        b.verified_file(fname)  # sha256 recorded and matching
    assert manifest["calibration"]["int8"]["recipe"]["blocks"] == INT8_BLOCKS
    assert manifest["calibration"]["int8"]["tensorrt_recipe"]["symmetric_activations"] is True
    for key in ("int8", "int8-tensorrt", "fp16"):
        rep = manifest["fidelity"][key]
        for v in (rep["top1_agreement"], rep["top10_overlap"], rep["embedding_cosine"]["mean"]):
            assert 0.0 <= v <= 1.0 + 1e-6
        assert rep["embedding_cosine"]["min"] <= rep["embedding_cosine"]["mean"]
        assert rep["held_out"]["prefixes"] == 4
    lat = manifest["fidelity"]["int8"]["latency"]
    assert lat["ratio"] == pytest.approx(lat["reduced_ms"] / lat["fp32_ms"])
    assert "latency" not in manifest["fidelity"]["fp16"]


def test_info_prints_the_fidelity_reports(calibrated):
    from click.testing import CliRunner

    from dcssa.runtime.cli import main

    path, manifest = calibrated
    res = CliRunner().invoke(main, ["info", "--bundle", str(path)])
    assert res.exit_code == 0
    line = next(x for x in res.output.splitlines() if x.strip().startswith("fidelity int8 "))
    assert f"{manifest['fidelity']['int8']['top10_overlap']:.1%}" in line


def test_int8_graph_quantises_only_the_recipe(calibrated):
    path, _ = calibrated
    b = Bundle.load(path)
    for key, zero_type in (("file", onnx.TensorProto.UINT8), ("tensorrt_file", onnx.TensorProto.INT8)):
        f = b.verified_file(b.graph_entry(mf.SKETCH_ENCODER, "int8")[key])
        model = onnx.load(str(f))
        assert model.ir_version <= 13  # what onnxruntime 1.31 reads
        produced = {o: n for n in model.graph.node for o in n.output}
        consumers: dict[str, list] = {}
        for n in model.graph.node:
            for x in n.input:
                consumers.setdefault(x, []).append(n)
        inits = {t.name: t for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Conv":  # quantised exactly when its weight comes through a DequantizeLinear
                w = produced.get(n.input[1])
                assert (w is not None and w.op_type == "DequantizeLinear") == (node_block(n.name) in INT8_BLOCKS), n.name
            if n.op_type in ("LayerNormalization", "Softmax") or node_block(n.name) == "attention.scores":
                assert all(getattr(produced.get(x), "op_type", None) != "DequantizeLinear" for x in n.input), n.name
                assert all(c.op_type != "QuantizeLinear" for o in n.output for c in consumers.get(o, [])), n.name
        # activations: uint8 for the CPU graph, zero-point-0 int8 for TensorRT
        act_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert act_q
        for q in act_q:
            zp = inits[q.input[2]]
            assert zp.data_type == zero_type
            if zero_type == onnx.TensorProto.INT8:
                assert not onnx.numpy_helper.to_array(zp).any()
        _ort(f)  # loads


def test_int8_bundle_runs_through_the_session_api(calibrated, gallery2):
    path, _ = calibrated
    b = Bundle.load(path)
    g = Gallery.load(gallery2, b)
    sketch = synthetic_sketches(1, seed=9)[0].strokes[:4]
    r8 = Retriever(b, g, backend="ort-cpu", precision="int8", topk=5)
    r32 = Retriever(b, g, backend="ort-cpu", precision="fp32", topk=5)
    s8, s32 = r8.session(), r32.session()
    # second path: bare onnxruntime on the int8 file, the fp32 step head driven by hand
    enc = _ort(b.graph_path(mf.SKETCH_ENCODER, "int8"))
    head = _ort(b.graph_path(mf.HEAD_STEP, "fp32"))
    keys = np.zeros((0, b.feature_dim), np.float32)
    values = keys.copy()
    pre = Preprocessor.default()
    for t, stroke in enumerate(sketch):
        res8, res32 = s8.add_stroke(stroke), s32.add_stroke(stroke)
        img = pre(rasterize(strokes_to_points(sketch[: t + 1])))
        f = enc.run(None, {"images": img})[0]
        e, k, v = head.run(None, {"feature": f, "past_keys": keys, "past_values": values})
        keys, values = np.concatenate([keys, k]), np.concatenate([values, v])
        np.testing.assert_allclose(res8.feature, f[0], atol=1e-5)
        np.testing.assert_allclose(res8.embedding, e[0], atol=1e-5)
        assert not np.allclose(res8.feature, res32.feature, atol=1e-4)  # really the int8 graph
        assert len(res8.ids) == 5


def test_fp16_keeps_the_fragile_nodes_in_fp32(calibrated):
    path, _ = calibrated
    b = Bundle.load(path)
    fp32 = onnx.load(str(b.graph_path(mf.SKETCH_ENCODER, "fp32")))
    m16 = onnx.load(str(b.graph_path(mf.SKETCH_ENCODER, "fp16")))
    # the spec: LayerNorm, Softmax, the score path (scale, q.k^T, attention.v), pooling + L2 norm
    fragile = {"LayerNormalization", "Softmax", "ReduceMean", "ReduceL2", "Clip", "Expand", "Div"}
    score = re.compile(r"^/attention/attn/(Mul|MatMul|Softmax|MatMul_1)$")
    want = {n.name for n in fp32.graph.node if n.op_type in fragile or score.match(n.name)}
    got = node_precisions(m16)
    assert set(got["fp32"]) == want
    trunk = {n.name for n in fp32.graph.node if n.name.startswith("/trunk/") and n.op_type in ("Conv", "Relu", "Concat", "MaxPool")}
    assert len(trunk) > 94 and trunk <= set(got["fp16"])
    assert {"/attention/attn/q/MatMul", "/attention/attn/out/MatMul", "/attention/Mul"} <= set(got["fp16"])
    inits = {t.name: t for t in m16.graph.initializer}
    conv_w = [inits[n.input[1]] for n in m16.graph.node if n.op_type == "Conv"]
    assert len(conv_w) == 94 and all(w.data_type == onnx.TensorProto.FLOAT16 for w in conv_w)
    assert m16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert b.graph_entry(mf.SKETCH_ENCODER, "fp16")["fp32_nodes"] == sorted(want)
    x = prefix_set(synthetic_sketches(1, seed=5)).images(0, 2)
    a, c = _ort(b.graph_path(mf.SKETCH_ENCODER, "fp32")).run(None, {"images": x})[0], _ort(
        b.graph_path(mf.SKETCH_ENCODER, "fp16")).run(None, {"images": x})[0]
    assert c.dtype == np.float32
    assert np.min((a * c).sum(1)) > 0.99


def test_failed_commit_leaves_the_old_bundle(calibrated, tmp_path, monkeypatch):
    path, _ = calibrated
    copy = tmp_path / "b"
    shutil.copytree(path, copy)
    before = (copy / mf.MANIFEST).read_text()
    staged = tmp_path / "new.onnx"
    staged.write_bytes(b"new graph")
    import dcssa.calibration.bundle as cb

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(cb, "_write_manifest", boom)
    with pytest.raises(OSError):
        commit(copy, {"sketch_encoder.int8-00000000.onnx": staged}, lambda m: m["graphs"].clear())
    assert (copy / mf.MANIFEST).read_text() == before
    b = Bundle.load(copy)
    for name, per in b.manifest["graphs"].items():
        for prec in per:
            b.graph_path(name, prec)  # every referenced file still there and intact


def test_recalibration_replaces_and_deletes_stale_files(calibrated, tmp_path):
    path, manifest = calibrated
    copy = tmp_path / "b"
    shutil.copytree(path, copy)
    old = manifest["graphs"][mf.SKETCH_ENCODER]["int8"]["file"]
    staged = tmp_path / "x.onnx"
    shutil.copy(copy / old, staged)
    with open(staged, "ab") as f:
        f.write(b"\0")  # different content, different hash

    def update(m):
        m["graphs"][mf.SKETCH_ENCODER]["int8"]["file"] = "sketch_encoder.int8-ffffffff.onnx"

    new = commit(copy, {"sketch_encoder.int8-ffffffff.onnx": staged}, update)
    assert not (copy / old).exists() and old not in new["files"]
    Bundle.load(copy).verified_file("sketch_encoder.int8-ffffffff.onnx")


# -- fidelity maths -------------------------------------------------------------------------------


def test_compare_counts_agreement_by_hand():
    gal = fd.GalleryMatrix(np.eye(12, dtype=np.float32), [f"p{i}" for i in range(12)], "hand")
    # reference query prefers photo 0 most, then 1, 2, ...; candidate swaps 0 and 11
    ref_e = np.linspace(1.0, 0.1, 12, dtype=np.float32)[None]
    cand = ref_e.copy()
    cand[0, [0, 11]] = cand[0, [11, 0]]
    ref = fd.Reference(ref_e.copy(), ref_e, gal.topk(ref_e))
    rep = fd.compare(ref, cand, cand, gal)
    assert rep["top1_agreement"] == 0.0  # top-1 is now photo 11
    assert rep["top10_overlap"] == pytest.approx(9 / 10)  # photo 0 left the top 10, photo 11 joined
    c = float((ref_e * cand).sum() / (np.linalg.norm(ref_e) * np.linalg.norm(cand)))
    assert rep["embedding_cosine"]["mean"] == pytest.approx(c, rel=1e-6)
    same = fd.compare(ref, ref_e, ref_e, gal)
    assert same["top1_agreement"] == 1.0 and same["top10_overlap"] == 1.0


def test_choose_prefers_fastest_faithful_point():
    curve = [
        {"blocks": 1, "top10_overlap": 0.99, "top1_agreement": 0.98, "latency_ratio": 0.9},
        {"blocks": 2, "top10_overlap": 0.95, "top1_agreement": 0.92, "latency_ratio": 0.45},
        {"blocks": 3, "top10_overlap": 0.80, "top1_agreement": 0.60, "latency_ratio": 0.35},
    ]
    assert choose(curve) == (curve[1], True)
    curve[1]["latency_ratio"] = 0.7  # nothing meets both: fidelity first, the fastest faithful point
    assert choose(curve) == (curve[1], False)
    for p in curve:
        p["top1_agreement"] = 0.5  # nothing faithful: the most faithful point
    assert choose(curve) == (curve[0], False)


def test_precision_and_recipe_arguments(tmp_path):
    assert parse_precisions("fp32, int8,int8") == ["fp32", "int8"]
    with pytest.raises(DcssaError):
        parse_precisions("int4")
    assert load_recipe("search") is None
    assert load_recipe("default").blocks
    f = tmp_path / "search.json"
    f.write_text(json.dumps({"chosen": {"recipe": {"method": "entropy", "blocks": ["Mixed_5b"]}}}))
    r = load_recipe(f)
    assert (r.method, r.blocks) == ("entropy", ["Mixed_5b"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DcssaError):
        load_recipe(tmp_path / "bad.json")
    with pytest.raises(DcssaError):
        Int8Recipe(method="magic")


# -- TensorRT: everything that runs without a GPU ------------------------------------------------------


LOCAL = {"tensorrt": "10.3.0", "gpu": "Orin (nvgpu)", "compute_capability": "8.7"}


@pytest.mark.parametrize("field,other", [("tensorrt", "10.7.0"), ("gpu", "NVIDIA A10"), ("compute_capability", "8.6")])
def test_engine_metadata_mismatch_is_refused(field, other):
    recorded = {**LOCAL, field: other}
    with pytest.raises(BackendError) as info:
        trtb.check_engine_metadata(recorded, LOCAL, bundle="/b", precision="int8")
    assert other in info.value.message and LOCAL[field] in info.value.message
    assert "dcssa-export engines /b --precision int8" in info.value.hint
    assert info.value.path == "/b"
    trtb.check_engine_metadata(dict(LOCAL), LOCAL, bundle="/b")  # identical: accepted
    with pytest.raises(BackendError):
        trtb.check_engine_metadata({k: v for k, v in LOCAL.items() if k != field}, LOCAL, bundle="/b")


def test_tensorrt_backend_refuses_a_foreign_engine_on_load(tmp_path):
    manifest = {"engines": {**LOCAL, "tensorrt": "10.7.0",
                            "graphs": {"sketch_encoder": {"int8": {"file": "e.engine", "onnx": "se.onnx"}}}}}
    (tmp_path / mf.MANIFEST).write_text(json.dumps(manifest))
    backend = object.__new__(trtb.TensorRTBackend)  # no GPU here: only the metadata path runs
    backend.local = dict(LOCAL)
    with pytest.raises(BackendError) as info:
        backend.load(tmp_path / "se.onnx")
    assert "10.7.0" in str(info.value) and "dcssa-export engines" in info.value.hint
    with pytest.raises(BackendError) as info:
        backend.load(tmp_path / "other.onnx")
    assert "no TensorRT engine" in info.value.message
    assert trtb.find_engine(manifest, "se.onnx")[:2] == ("sketch_encoder", "int8")


def test_buffer_plan_by_hand():
    f32, f16 = np.dtype(np.float32), np.dtype(np.float16)
    tensors = {
        "images": (True, f32, (-1, 3, 299, 299)),
        "past_keys": (True, f32, (-1, 2048)),
        "scale": (True, f16, (3,)),
        "features": (False, f32, (-1, 2048)),
    }
    plan = trtb.plan_buffers(tensors, {"images": (8, 3, 299, 299), "past_keys": (256, 2048)}, {"features": (8, 2048)})
    assert plan["images"].nbytes == 8582656  # 8 * 3 * 299 * 299 * 4 = 8582592 bytes, up to 33526 * 256
    assert plan["past_keys"].nbytes == 256 * 2048 * 4
    assert plan["scale"].nbytes == 256  # 6 bytes, rounded up to the 256-byte alignment
    assert plan["features"].max_shape == (8, 2048) and not plan["features"].is_input
    with pytest.raises(BackendError):
        trtb.plan_buffers({"x": (True, f32, (-1, 4))}, {}, {})
    with pytest.raises(BackendError) as info:
        trtb.check_shape("images", (9, 3, 299, 299), (1, 3, 299, 299), (8, 3, 299, 299), "sketch_encoder")
    assert "outside the engine's profile" in info.value.message
    trtb.check_shape("past_keys", (0, 2048), (0, 2048), (256, 2048), "head")


def test_engine_sources_and_profiles(calibrated):
    path, _ = calibrated
    b = Bundle.load(path)
    rows = engine_sources(b, ["int8", "fp16"])
    src = {(g, p): f for g, p, f, _ in rows}
    int8 = b.graph_entry(mf.SKETCH_ENCODER, "int8")
    assert src[(mf.SKETCH_ENCODER, "int8")] == int8["tensorrt_file"]  # built from the symmetric graph ...
    graphs: dict = {}
    for g, p, f, gf in rows:
        graphs.setdefault(g, {})[p] = {"file": f"{g}.{p}.engine", "onnx": f, "graph_file": gf}
    manifest = {"engines": {"graphs": graphs}}
    assert trtb.find_engine(manifest, int8["file"])[:2] == (mf.SKETCH_ENCODER, "int8")  # ... found by the runtime's
    assert src[(mf.PHOTO_ENCODER, "fp16")] == b.graph_entry(mf.PHOTO_ENCODER, "fp16")["file"]
    assert (mf.HEAD_STEP, "int8") not in src and (mf.HEAD_STEP, "fp32") in src  # heads fall back to fp32
    prof = profiles(b, max_batch=4, max_strokes=64)
    assert prof[mf.HEAD_STEP]["past_keys"] == ((0, 2048), (16, 2048), (64, 2048))
    assert prof[mf.SKETCH_ENCODER]["images"][2] == (4, 3, 299, 299)


def test_backend_selection_without_tensorrt(monkeypatch):
    assert "tensorrt" in BACKEND_NAMES
    if NO_GPU:
        assert "tensorrt" not in available_backends()
        with pytest.raises(BackendError) as info:
            get_backend("tensorrt")
        assert info.value.hint
        assert get_backend("auto").name != "tensorrt"
    with pytest.raises(BackendError) as info:
        get_backend("tensorrt-ish")
    assert "tensorrt" in info.value.hint

    class Fake(trtb.TensorRTBackend):
        def __init__(self, **_kw):
            self.local = dict(LOCAL)

    import dcssa.runtime.backends as backends

    monkeypatch.setattr(backends, "TensorRTBackend", Fake)
    monkeypatch.setattr(Fake, "available", classmethod(lambda cls: True))
    assert isinstance(get_backend("auto"), Fake)  # auto prefers the native runner when it can run


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a GPU: the no-driver path cannot be observed")
def test_cuda_without_a_driver_fails_with_the_reason():
    from dcssa.runtime.backends.cuda_memory import cuda_api

    with pytest.raises(BackendError) as info:
        cuda_api()
    assert "cuda" in info.value.message.lower() and info.value.hint


def test_engines_cli_needs_tensorrt(calibrated):
    if not NO_GPU:
        pytest.skip("TensorRT and a GPU are present: engines would really be built")
    path, _ = calibrated
    proc = subprocess.run([sys.executable, "-m", "dcssa.export.cli", "engines", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_export_precision_needs_calibration_data(tmp_path):
    from click.testing import CliRunner

    from dcssa.export.cli import main

    res = CliRunner().invoke(main, ["--ckpt", str(tmp_path / "x.pth"), "--out", str(tmp_path / "b"), "--precision", "int8"])
    assert res.exit_code == 2 and "--calib" in res.output and not (tmp_path / "b").exists()


def test_calibrate_cli_bad_data_is_one_line(bundle2, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dcssa.export.cli", "calibrate", str(bundle2), "--data",
                           str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "missing") in proc.stderr and "fix:" in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU is not None, reason=f"needs TensorRT and an NVIDIA GPU ({NO_GPU})")
def test_tensorrt_engines_match_onnxruntime(calibrated, tmp_path):  # pragma: no cover - GPU only
    from dcssa.calibration.engines import build_engines

    path, _ = calibrated
    copy = tmp_path / "b"
    shutil.copytree(path, copy)
    build_engines(copy, ["fp16", "int8"], max_batch=2, max_strokes=16)
    b = Bundle.load(copy)
    sketch = synthetic_sketches(1, seed=9)[0].strokes[:3]
    for precision, tol in (("fp16", 0.99), ("int8", 0.9)):
        s_trt = Retriever(b, None, backend="tensorrt", precision=precision).session()
        s_cpu = Retriever(b, None, backend="ort-cpu", precision="fp32").session()
        for stroke in sketch:
            a, c = s_trt.add_stroke(stroke).embedding, s_cpu.add_stroke(stroke).embedding
            assert float(a @ c) > tol


def test_interleaved_latency_times_blocks_and_skips_each_hand_over(monkeypatch):
    """Fake clock: a run costs 10 (a) or 4 (b) units, plus 50 when it follows the other graph's run
    (the other pool still spinning); the scheme must time neither warm-up nor hand-over runs."""
    from dcssa.calibration import fidelity

    clock = {"t": 0.0, "last": None}
    order = []

    class Fake:
        def __init__(self, name, cost):
            self.name, self.cost = name, cost

        def run(self, feeds):
            order.append(self.name)
            clock["t"] += self.cost + (50 if clock["last"] not in (None, self.name) else 0)
            clock["last"] = self.name

    monkeypatch.setattr(fidelity.time, "perf_counter", lambda: clock["t"])
    images = np.zeros((3, 3, 299, 299), np.float32)
    lat = fidelity.interleaved_latency(Fake("a", 10.0), Fake("b", 4.0), images, repeats=2, warmup=1)
    assert lat["fp32_ms"] == 10_000.0 and lat["reduced_ms"] == 4_000.0  # perf_counter units are seconds
    assert lat["ratio"] == 0.4 and lat["runs"] == 6
    assert order == ["a", "b"] + (["a"] * 4 + ["b"] * 4) * 2
