"""FP16 graphs: the FP32 nodes are derived here from the op types and the attention score path of
the fp32 graph (SPEC: LayerNorm, Softmax, scores, pooling and L2 normalisation), not read back
from the converter's own list."""

from __future__ import annotations

import re

import numpy as np
import onnx

from dcssa.calibration.calibset import prefix_set, synthetic_sketches
from dcssa.calibration.fp16 import node_precisions
from dcssa.runtime import Bundle
from dcssa.runtime.contract import manifest as mf


def test_fp16_keeps_the_fragile_nodes_in_fp32(calibrated, ort_session):
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
    a, c = ort_session(b.graph_path(mf.SKETCH_ENCODER, "fp32")).run(None, {"images": x})[0], ort_session(
        b.graph_path(mf.SKETCH_ENCODER, "fp16")).run(None, {"images": x})[0]
    assert c.dtype == np.float32
    assert np.min((a * c).sum(1)) > 0.99
