"""INT8: graph blocks, the recipe record, the two shipped graphs, and no process-wide side effects.

Expectations come from second code paths: Inception block sizes come from the architecture
(torchvision's InceptionA..E), int8 session embeddings are recomputed with a bare onnxruntime
session on the int8 file, and the activation encoding is read from the graphs' zero points.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading

import numpy as np
import onnx
import pytest

from dcssa.calibration.calibset import PrefixSet, prefix_set, synthetic_sketches
from dcssa.calibration.int8 import TRUNK_BLOCKS, Int8Recipe, collect_ranges, node_block, quantize_int8
from dcssa.runtime import Bundle, Gallery, Retriever
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.stroke.parse import strokes_to_points
from dcssa.runtime.stroke.raster import rasterize

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


# -- the recipe -------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [True, False])
def test_recipe_records_load_whatever_encoding_they_state(legacy):
    """Manifests written before the encoding followed the target carry either value; both load."""
    doc = {"method": "entropy", "blocks": ["Mixed_5b"], "per_channel": True, "symmetric_activations": legacy,
           "percentile": 99.9, "op_types": ["Conv"], "exclude_nodes": []}
    r = Int8Recipe.from_dict(doc)
    assert (r.method, r.blocks, r.percentile, r.op_types) == ("entropy", ["Mixed_5b"], 99.9, ["Conv"])
    assert r.record(symmetric=legacy) == doc  # what is written is what was read
    assert "symmetric_activations" not in r.to_dict()  # the recipe itself says what is quantised
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.method = "minmax"  # a record: variants come from dataclasses.replace


# -- the shipped graphs -----------------------------------------------------------------------------


def test_int8_graph_quantises_only_the_recipe(calibrated, int8_blocks, ort_session):
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
                assert (w is not None and w.op_type == "DequantizeLinear") == (node_block(n.name) in int8_blocks), n.name
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
        ort_session(f)  # loads


def test_recorded_encoding_is_the_shipped_graphs(calibrated, ort_session):
    """The manifest's recipes and labels state the encoding each graph really has (its zero points)."""
    path, manifest = calibrated
    b = Bundle.load(path)
    entry = b.graph_entry(mf.SKETCH_ENCODER, "int8")
    record = manifest["calibration"]["int8"]
    for key, recipe_key, label_key in (("file", "recipe", "activations"),
                                       ("tensorrt_file", "tensorrt_recipe", "tensorrt_activations")):
        model = onnx.load(str(b.verified_file(entry[key])))
        inits = {t.name: t for t in model.graph.initializer}
        zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
        symmetric = all(z.data_type == onnx.TensorProto.INT8 and not onnx.numpy_helper.to_array(z).any()
                        for z in zero_points)
        assert record[recipe_key]["symmetric_activations"] is symmetric
        assert entry[label_key].startswith("int8 symmetric" if symmetric else "uint8 asymmetric")
    assert record["recipe"]["symmetric_activations"] is False  # onnxruntime CPU: uint8
    assert {k: v for k, v in record["recipe"].items() if k != "symmetric_activations"} == \
        {k: v for k, v in record["tensorrt_recipe"].items() if k != "symmetric_activations"}  # one recipe


def test_int8_bundle_runs_through_the_session_api(calibrated, gallery2, ort_session, authors_transform):
    path, _ = calibrated
    b = Bundle.load(path)
    g = Gallery.load(gallery2, b)
    sketch = synthetic_sketches(1, seed=9)[0].strokes[:4]
    r8 = Retriever(b, g, backend="ort-cpu", precision="int8", topk=5)
    r32 = Retriever(b, g, backend="ort-cpu", precision="fp32", topk=5)
    s8, s32 = r8.session(), r32.session()
    # second path: bare onnxruntime on the int8 file, the fp32 step head driven by hand
    enc = ort_session(b.graph_path(mf.SKETCH_ENCODER, "int8"))
    head = ort_session(b.graph_path(mf.HEAD_STEP, "fp32"))
    keys = np.zeros((0, b.feature_dim), np.float32)
    values = keys.copy()
    for t, stroke in enumerate(sketch):
        res8, res32 = s8.add_stroke(stroke), s32.add_stroke(stroke)
        img = authors_transform(rasterize(strokes_to_points(sketch[: t + 1])))
        f = enc.run(None, {"images": img})[0]
        e, k, v = head.run(None, {"feature": f, "past_keys": keys, "past_values": values})
        # the session keeps its K/V rows rounded to float16 (stroke.head.CACHE_DTYPE), live and stored alike
        keys = np.concatenate([keys, k.astype(np.float16).astype(np.float32)])
        values = np.concatenate([values, v.astype(np.float16).astype(np.float32)])
        np.testing.assert_allclose(res8.feature, f[0], atol=1e-5)
        np.testing.assert_allclose(res8.embedding, e[0], atol=1e-5)
        assert not np.allclose(res8.feature, res32.feature, atol=1e-4)  # really the int8 graph
        assert len(res8.ids) == 5


# -- no process-wide side effects -------------------------------------------------------------------


class _Watched(PrefixSet):
    """A prefix set that notes the root level and sys.stdout whenever the calibrator reads from it."""

    seen: list

    def images(self, start=0, stop=None):
        self.seen.append((logging.getLogger().level, sys.stdout))
        return super().images(start, stop)


@pytest.fixture(scope="module")
def ranges(bundle2, tmp_path_factory):
    """A percentile range cache over 3 prefixes, and what the calibrator saw while it ran."""
    ps = prefix_set(synthetic_sketches(1, seed=3), max_strokes=3)
    watched = _Watched(ps.canvases, ps.sketch, ps.stroke, ps.sketches, ps.pipeline)
    watched.seen = []
    stdout = sys.stdout
    cache = collect_ranges(Bundle.load(bundle2).graph_path(mf.SKETCH_ENCODER), watched, "percentile",
                           tmp_path_factory.mktemp("ranges") / "ranges.json", chunk=2)
    return cache, watched.seen, stdout


def test_calibration_leaves_stdout_and_the_root_level_alone(ranges):
    cache, seen, stdout = ranges
    assert cache.is_file() and len(seen) == 3
    level = logging.getLogger().level
    assert all(lvl == level and out is stdout for lvl, out in seen)  # during the call
    assert sys.stdout is stdout


def test_quantising_hides_only_its_own_notices(bundle2, ranges, tmp_path, caplog):
    """Another thread's records get through while the quantiser runs; the quantiser's notices do not,
    and the root logger's level never changes."""
    cache, _seen, _stdout = ranges
    root = logging.getLogger()
    level = root.level
    done, levels, sent = threading.Event(), [], []

    def elsewhere() -> None:
        while not done.is_set():
            levels.append(root.level)
            logging.warning("other thread %d", len(sent))  # the root logger, as the quantiser logs
            sent.append(len(sent))
            done.wait(0.005)

    caplog.set_level(logging.WARNING)
    observer = threading.Thread(target=elsewhere)
    observer.start()
    try:
        summary = quantize_int8(Bundle.load(bundle2).graph_path(mf.SKETCH_ENCODER), tmp_path / "q.onnx",
                                Int8Recipe(method="percentile", blocks=["Mixed_5b"]), cache)
    finally:
        done.set()
        observer.join()
    assert summary["quantised_nodes"] == 9  # InceptionA: 7 convolutions, its average pool and its concat
    assert len(sent) > 1 and set(levels) == {level} and root.level == level
    other = [r for r in caplog.records if r.getMessage().startswith("other thread")]
    assert len(other) == len(sent)
    assert not [r for r in caplog.records if "onnxruntime" in r.pathname]
    assert root.filters == []  # nothing left behind
