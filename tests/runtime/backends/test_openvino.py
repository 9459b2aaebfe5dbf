"""The openvino backend on this CPU: fp32 parity, the bf16 execution mode, int8 Q/DQ, auto-selection.

Expectations come from second code paths: onnxruntime on the same graph files (fp32 and the
int8 Q/DQ graph), a live onnxruntime session for the rankings bf16 must keep, OpenVINO's own
runtime graph for which layers really ran in which precision, and the registry's documented
preference order for ``auto``. Skipped as a whole when openvino is not installed.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnxruntime
import pytest

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'dcssa-rt[openvino]')")

from dcssa.runtime import Bundle, Gallery, Retriever  # noqa: E402
from dcssa.runtime.backends import available_backends, get_backend  # noqa: E402
from dcssa.runtime.backends import openvino as ovb  # noqa: E402
from dcssa.runtime.contract import manifest as mf  # noqa: E402
from dcssa.runtime.errors import BackendError  # noqa: E402
from dcssa.runtime.stroke.parse import load_strokes_file  # noqa: E402
from dcssa.runtime.stroke.pipeline import SketchPipeline

GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(onnxruntime.get_available_providers())
HAS_BF16 = "BF16" in [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bf16 (AMX / AVX512-BF16)")
needs_cpu_auto = pytest.mark.skipif(bool(GPU_PROVIDERS), reason="a GPU provider is installed: auto picks it first")

SKETCHES = 4  # sketches of the dataset fixture replayed for the fidelity checks (~25 prefixes)


def _ort(path):
    so = onnxruntime.SessionOptions()
    so.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_run(path, feeds):
    s = _ort(path)
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def _linked_copy(src, dst):
    """A bundle folder whose graph files are symlinks to ``src``'s and whose manifest is a copy."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name == mf.MANIFEST:
            shutil.copy(f, dst / f.name)
        elif f.suffix == ".onnx":
            (dst / f.name).symlink_to(f)
    return dst


def _cos(a, b):
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def bundle(bundle2):
    return Bundle.load(bundle2)


@pytest.fixture(scope="module")
def sketches(dataset):
    return [load_strokes_file(p) for p in sorted((dataset / "strokes").glob("*.json"))[:SKETCHES]]


@pytest.fixture(scope="module")
def rasters(bundle, sketches):
    """Preprocessed partial sketches (the canvas after strokes 1, 2 and all) of two sketches."""
    pre = SketchPipeline(bundle.sketch_recipe).preprocess
    out = []
    for sk in sketches[:2]:
        c = SketchPipeline(bundle.sketch_recipe).canvas()
        for t, stroke in enumerate(sk):
            c.add_stroke(stroke)
            if t in (0, 1, len(sk) - 1):
                out.append(pre(c.image))
    return np.concatenate(out)


@pytest.fixture(scope="module")
def backend():
    return get_backend("openvino")


@pytest.fixture(scope="module")
def ort_features(bundle, rasters):
    """onnxruntime fp32 step features of ``rasters``: the reference for encoder-level checks."""
    return _ort_run(bundle.graph_path(mf.SKETCH_ENCODER), {"images": rasters})["features"]


@pytest.fixture(scope="module")
def bf16_runner(bundle, backend):
    if not HAS_BF16:
        pytest.skip("this CPU has no native bf16 (AMX / AVX512-BF16)")
    # the bundle's spec carries the f32 scopes of the plan (a loose graph file would run all in bf16)
    return backend.load(bundle.graph_path(mf.SKETCH_ENCODER), bundle.graph_spec(mf.SKETCH_ENCODER), precision="bf16")


# -- fp32 parity -----------------------------------------------------------------------------------


def test_fp32_matches_onnxruntime_on_every_graph(bundle, backend, rasters):
    rng = np.random.default_rng(0)
    d = bundle.feature_dim
    cases = {
        mf.SKETCH_ENCODER: [{"images": rasters[:1]}, {"images": rasters[:3]}],
        mf.PHOTO_ENCODER: [{"images": rng.standard_normal((1, 3, 299, 331)).astype(np.float32)}],
        mf.HEAD_STEP: [
            {"feature": rng.standard_normal((1, d)).astype(np.float32),
             "past_keys": np.zeros((0, d), np.float32), "past_values": np.zeros((0, d), np.float32)},
            {"feature": rng.standard_normal((1, d)).astype(np.float32),
             "past_keys": rng.standard_normal((4, d)).astype(np.float32),
             "past_values": rng.standard_normal((4, d)).astype(np.float32)},
        ],
        mf.HEAD_FULL: [{"features": rng.standard_normal((5, d)).astype(np.float32)}],
    }
    for name, feeds_list in cases.items():
        path = bundle.graph_path(name)
        runner = backend.load(path, bundle.graph_spec(name))
        assert runner.precisions == ("fp32",)
        for feeds in feeds_list:
            want = _ort_run(path, feeds)
            got = runner.run(feeds)
            assert set(got) == set(want), name
            for k in want:
                assert got[k].shape == want[k].shape and got[k].dtype == np.float32
                assert np.abs(got[k] - want[k]).max() <= 1e-4, (name, k)


def test_fp32_session_equals_onnxruntime_session(bundle, gallery2, sketches, fp32_run):
    r = Retriever(bundle, Gallery.load(gallery2, bundle), backend="openvino", topk=len(fp32_run[0].ids))
    assert r.backend.cache_dir == bundle.path / ".cache" / "openvino"  # compiled models live in the bundle
    got = _replay(r, sketches[:1])
    for a, b in zip(fp32_run, got):
        assert np.abs(a.embedding - b.embedding).max() <= 1e-4
        assert a.ids == b.ids


def _attention_graph(path, d):
    """q (1 x d), K and V (n x d) -> softmax(q K^T / sqrt d) V: the stroke head's attention read."""
    import onnx
    from onnx import helper as oh
    from onnx import numpy_helper

    nodes = [oh.make_node("Transpose", ["K"], ["Kt"], perm=[1, 0]), oh.make_node("MatMul", ["q", "Kt"], ["s"]),
             oh.make_node("Mul", ["s", "scale"], ["ss"]), oh.make_node("Softmax", ["ss"], ["p"], axis=-1),
             oh.make_node("MatMul", ["p", "V"], ["out"])]
    info = oh.make_tensor_value_info
    graph = oh.make_graph(nodes, "attention", [info("q", 1, [1, d]), info("K", 1, ["n", d]), info("V", 1, ["n", d])],
                          [info("out", 1, [1, d])], [numpy_helper.from_array(np.float32(1 / np.sqrt(d)), "scale")])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def test_attention_over_a_long_cache_matches_the_maths(backend, tmp_path):
    """OpenVINO's attention snippet is wrong from 8 keys on AVX2 AMD EPYCs, from 16 on AVX-512 ones
    (Zen 4) and on an AMX Xeon VM, right on other Xeons (see snippets_trusted); the backend must give
    the plain maths at every cache length a session reaches."""
    d = 64
    path = _attention_graph(tmp_path / "attention.onnx", d)
    spec = mf.GraphSpec("attention", {"q": [1, d], "K": ["n", d], "V": ["n", d]}, {"out": [1, d]})
    runner = backend.load(path, spec)
    rng = np.random.default_rng(1)
    for n in range(1, 20):
        q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((1, d), (n, d), (n, d)))
        s = (q.astype(np.float64) @ k.T.astype(np.float64)) / np.sqrt(d)
        p = np.exp(s - s.max())
        want = (p / p.sum()) @ v
        assert np.abs(runner.run({"q": q, "K": k, "V": v})["out"] - want).max() <= 1e-5, n


def test_the_snippet_probe_agrees_with_the_attention_graph_compiled_with_snippets_on(tmp_path):
    """The probe's verdict is what a snippets-on compile of the ONNX attention graph (read from a file,
    as bundles are) actually does here, on whichever kind of CPU the test runs."""
    import openvino as ov

    from dcssa.runtime.backends.openvino import SNIPPET_PROBE_KEYS, snippets_trusted

    d = 64
    compiled = ov.Core().compile_model(str(_attention_graph(tmp_path / "attention.onnx", d)), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32", "SNIPPETS_MODE": "ENABLE"})
    rng = np.random.default_rng(7)
    exact = True
    for n in SNIPPET_PROBE_KEYS:
        q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((1, d), (n, d), (n, d)))
        s = (q.astype(np.float64) @ k.T.astype(np.float64)) / np.sqrt(d)
        p = np.exp(s - s.max())
        exact &= bool(np.abs(compiled({"q": q, "K": k, "V": v})[0] - (p / p.sum()) @ v).max() <= 1e-4)
    assert snippets_trusted() is exact
    assert get_backend("openvino").describe()["snippets"] is exact


# -- bf16 -----------------------------------------------------------------------------------------


def _runtime_precisions(compiled, layer_type="Convolution"):
    """{runtime precision: count} of one layer type in OpenVINO's executed graph."""
    out = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == layer_type:
            p = info["runtimePrecision"].astype(str)
            out[p] = out.get(p, 0) + 1
    return out


def test_bf16_keeps_the_first_conv_in_f32_and_runs_the_trunk_in_bf16(bundle, bf16_runner):
    assert bf16_runner.precisions == ("fp32", "bf16")
    first, trunk = (_runtime_precisions(s) for s in bf16_runner.stages)
    assert first == {"f32": 1}  # Conv2d_1a_3x3 only, in f32
    # the rest of the 94 convolutions of Inception-v3, in bf16 (counted from the ONNX file)
    import onnx

    convs = sum(n.op_type == "Conv" for n in onnx.load(str(bundle.graph_path(mf.SKETCH_ENCODER)),
                                                       load_external_data=False).graph.node)
    assert trunk == {"bf16": convs - 1}


def test_split_graph_in_f32_equals_the_whole_graph(bundle, backend, rasters, ort_features):
    """The segment chain bf16 mode runs is exact: compiled all in f32 it reproduces onnxruntime."""
    path = bundle.graph_path(mf.SKETCH_ENCODER)
    model = ovb._core().read_model(str(path))
    cuts, precisions = ovb.bf16_plan(model, bundle.graph_spec(mf.SKETCH_ENCODER).f32_scopes)
    assert cuts == ["/trunk/Conv2d_1a_3x3/Relu"] and len(precisions) == 2
    runner = ovb.OpenVINORunner(backend, ovb.split_model(model, cuts), ["fp32"] * 2, mf.GraphSpec("chain", {}, {}), path)
    assert np.abs(runner.run({"images": rasters[:3]})["features"] - ort_features[:3]).max() <= 1e-4


def test_scopes_match_whole_path_parts():
    assert ovb.in_scope("/trunk/MaxPool", "/trunk/MaxPool") and ovb.in_scope("/trunk/Mixed_5b/x/Conv", "/trunk/Mixed_5b")
    assert not ovb.in_scope("/trunk/MaxPool_1", "/trunk/MaxPool")
    assert not ovb.in_scope("/encoder/blocks/blocks.10/mlp", "/encoder/blocks/blocks.1")


def test_a_plan_may_keep_a_block_in_the_middle_in_f32(bundle, backend, rasters, ort_features):
    """f32 for Mixed_6a only: bf16 before, f32, bf16 after, cut at the blocks' own outputs; the same
    chain compiled all in f32 reproduces onnxruntime, so the cuts lose nothing."""
    path = bundle.graph_path(mf.SKETCH_ENCODER)
    model = ovb._core().read_model(str(path))
    cuts, precisions = ovb.bf16_plan(model, ["/trunk/Mixed_6a"])
    assert precisions == ["bf16", "fp32", "bf16"]
    assert cuts[0].startswith("/trunk/Mixed_5d/") and cuts[1].startswith("/trunk/Mixed_6a/")
    runner = ovb.OpenVINORunner(backend, ovb.split_model(model, cuts), ["fp32"] * 3, mf.GraphSpec("chain", {}, {}), path)
    assert np.abs(runner.run({"images": rasters[:3]})["features"] - ort_features[:3]).max() <= 1e-4
    # neighbouring f32 blocks merge into one segment; the attention's residual is no place to cut
    assert ovb.bf16_plan(model, ["/trunk/Mixed_6a", "/trunk/Mixed_6b"])[1] == ["bf16", "fp32", "bf16"]
    cuts, precisions = ovb.bf16_plan(model, ["/attention"])
    assert precisions == ["bf16", "fp32"] and cuts[0].startswith("/trunk/Mixed_7c/")


@needs_bf16
def test_the_bf16_mode_runs_each_segment_in_its_precision(bundle):
    r = ovb.OpenVINOBackend(bf16_f32_scopes=["/trunk/Mixed_6a"]).load(
        bundle.graph_path(mf.SKETCH_ENCODER), bundle.graph_spec(mf.SKETCH_ENCODER), precision="bf16")
    assert r.precisions == ("bf16", "fp32", "bf16")
    got = [_runtime_precisions(s) for s in r.stages]
    assert set(got[0]) == {"bf16"} and got[1] == {"f32": sum(got[1].values())} and set(got[2]) == {"bf16"}


@pytest.fixture(scope="module")
def fp32_run(bundle, gallery2, sketches):
    """The onnxruntime fp32 session's answers on every prefix: the rankings to keep."""
    g = Gallery.load(gallery2, bundle)
    s = Retriever(bundle, g, backend="ort-cpu", topk=len(g)).session()
    out = []
    for sk in sketches:
        s.reset()
        out += [s.add_stroke(stroke) for stroke in sk]
    return out


def _replay(r, sketches):
    s = r.session()
    out = []
    for sk in sketches:
        s.reset()
        out += [s.add_stroke(stroke) for stroke in sk]
    return out


@needs_bf16
def test_bf16_session_keeps_the_rankings(bundle, gallery2, sketches, fp32_run, counting):
    r = Retriever(bundle, Gallery.load(gallery2, bundle), backend="openvino", precision="bf16", topk=len(fp32_run[0].ids))
    assert r.encoder.precisions == ("fp32", "bf16") and r.head.precisions == ("fp32",)
    r.encoder = counting(r.encoder)
    got = _replay(r, sketches)
    assert r.encoder.calls == len(fp32_run)  # one encoder pass per stroke
    feat = _cos(np.stack([x.feature for x in got]), np.stack([x.feature for x in fp32_run]))
    emb = _cos(np.stack([x.embedding for x in got]), np.stack([x.embedding for x in fp32_run]))
    top1 = np.mean([a.ids[0] == b.ids[0] for a, b in zip(got, fp32_run)])
    assert feat.mean() >= 0.99 and feat.min() >= 0.98
    assert emb.mean() >= 0.98
    assert top1 >= 0.9


def test_keeping_the_first_conv_in_f32_is_what_helps(bundle, backend, rasters, ort_features, bf16_runner):
    """The plan beats bf16 everywhere on feature cosine to fp32: the measured reason it exists."""
    path = bundle.graph_path(mf.SKETCH_ENCODER)
    want = ort_features
    plan = bf16_runner.run({"images": rasters})["features"]
    whole = ovb.OpenVINORunner(backend, [ovb._core().read_model(str(path))], ["bf16"], mf.GraphSpec("all-bf16", {}, {}), path)
    everywhere = whole.run({"images": rasters})["features"]
    assert 1 - _cos(plan, want).mean() < 0.5 * (1 - _cos(everywhere, want).mean())


# -- int8 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_bundle(bundle2, dataset, gallery2, tmp_path_factory):
    """A copy of bundle2 with an int8 Q/DQ sketch encoder (a few blocks, 3 calibration rasters)."""
    calib = pytest.importorskip("dcssa.calibration.job", reason="needs the [export] extra to quantise")
    from dcssa.calibration.int8 import Int8Recipe

    out = _linked_copy(bundle2, tmp_path_factory.mktemp("ovint8") / "bundle")
    from dcssa.calibration.options import CalibrationOptions

    calib.calibrate_bundle(out, dataset, CalibrationOptions(
        precisions=("int8",), recipe=Int8Recipe(blocks=["Mixed_5b", "Mixed_6a"]), fidelity_gallery=gallery2, max_calib=3,
        max_heldout=2, latency_rasters=0), quiet=True)
    return Bundle.load(out)


def test_int8_runs_the_bundles_qdq_graph(int8_bundle, gallery2, sketches, fp32_run, rasters):
    path = int8_bundle.graph_path(mf.SKETCH_ENCODER, "int8")
    r = Retriever(int8_bundle, Gallery.load(gallery2, int8_bundle), backend="openvino", precision="int8",
                  topk=len(fp32_run[0].ids))
    # same Q/DQ graph, second runtime: onnxruntime's int8 execution
    want = _ort_run(path, {"images": rasters})["features"]
    assert _cos(r.encoder.run({"images": rasters})["features"], want).min() >= 0.995
    # through the session API: the int8 graph, rankings close to fp32's
    got = _replay(r, sketches)
    emb = _cos(np.stack([x.embedding for x in got]), np.stack([x.embedding for x in fp32_run]))
    assert emb.mean() >= 0.95
    assert np.mean([a.ids[0] == b.ids[0] for a, b in zip(got, fp32_run)]) >= 0.75


# -- selection, errors, cache ---------------------------------------------------------------------


def test_openvino_is_listed_and_named_in_errors():
    assert "openvino" in available_backends()
    with pytest.raises(BackendError) as err:
        get_backend("nope")
    assert "openvino" in err.value.hint


@needs_cpu_auto
def test_auto_prefers_openvino_on_intel_and_onnxruntime_elsewhere(monkeypatch):
    monkeypatch.setattr(ovb, "cpu_vendor", lambda: "GenuineIntel")
    assert get_backend("auto").name == "openvino"
    assert get_backend("auto", precision="int8").name == "openvino"
    monkeypatch.setattr(ovb, "cpu_vendor", lambda: "AuthenticAMD")
    assert get_backend("auto").name == "ort-cpu"
    assert get_backend("auto", precision="int8").name == "ort-cpu"
    monkeypatch.setattr(ovb, "device_capabilities", lambda device="CPU": ["FP32", "BF16", "INT8"])
    assert get_backend("auto", precision="bf16").name == "openvino"  # only it runs bf16
    monkeypatch.setattr(ovb.OpenVINOBackend, "available", classmethod(lambda cls: False))
    assert "openvino" not in available_backends()
    monkeypatch.setattr(ovb, "cpu_vendor", lambda: "GenuineIntel")
    assert get_backend("auto").name == "ort-cpu"
    with pytest.raises(BackendError) as err:
        get_backend("auto", precision="bf16")
    assert "bf16" in err.value.message and "openvino" in err.value.hint


def test_bf16_without_cpu_support_is_a_clear_error(monkeypatch, bundle):
    monkeypatch.setattr(ovb, "device_capabilities", lambda device="CPU": ["FP32", "INT8", "EXPORT_IMPORT"])
    for call in (lambda: get_backend("openvino", precision="bf16"),
                 lambda: Retriever(bundle, backend="openvino", precision="bf16"),
                 lambda: get_backend("openvino").load(bundle.graph_path(mf.SKETCH_ENCODER), precision="bf16")):
        with pytest.raises(BackendError) as err:
            call()
        assert "bf16" in err.value.message and "AMX" in err.value.message
        assert "fp32" in err.value.hint
    with pytest.raises(BackendError) as err:  # auto has nothing left to run bf16 with
        get_backend("auto", precision="bf16")
    assert "bf16" in err.value.message


def test_bf16_on_a_backend_without_the_mode_names_openvino(bundle):
    with pytest.raises(BackendError) as err:
        get_backend("ort-cpu", precision="bf16")
    assert "openvino" in err.value.hint
    with pytest.raises(BackendError) as err:
        Retriever(bundle, backend="ort-cpu", precision="bf16")
    assert "openvino" in err.value.hint


def test_missing_device_and_unreadable_graph_are_clear_errors(monkeypatch, tmp_path):
    monkeypatch.setenv(ovb.DEVICE_ENV, "NPU")
    if "NPU" not in ovb._core().available_devices:
        with pytest.raises(BackendError) as err:
            get_backend("openvino")
        assert "NPU" in err.value.message and ovb.DEVICE_ENV in err.value.hint
    monkeypatch.delenv(ovb.DEVICE_ENV)
    bad = tmp_path / "sketch_encoder.onnx"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for path in (bad, tmp_path / "absent.onnx"):
        with pytest.raises(BackendError) as err:
            get_backend("openvino").load(path)
        assert str(path) in str(err.value)


def test_compiled_models_are_cached(bundle, tmp_path):
    """A second backend (a restart) imports the compiled blob: no new cache entry is written."""
    path = bundle.graph_path(mf.HEAD_STEP)
    get_backend("openvino", cache_dir=tmp_path).load(path)
    cache = tmp_path / "openvino"
    first = sorted(p.name for p in cache.iterdir())
    assert any(n.endswith(".blob") for n in first)
    get_backend("openvino", cache_dir=tmp_path).load(path)
    assert sorted(p.name for p in cache.iterdir()) == first
    readonly = tmp_path / "ro"
    readonly.mkdir(mode=0o500)
    if not os.access(readonly, os.W_OK):  # root can write anywhere: nothing to observe then
        assert get_backend("openvino", cache_dir=readonly).cache_dir is None  # no cache, no error
