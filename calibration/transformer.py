"""Reduced precision for transformer encoders (ARNet's ViT): the plans besides the static recipe.

Trained ViTs break per-tensor int8 in two places (issue 34): a few residual channels hundreds of
times larger than the rest, and post-LayerNorm channels whose ranges differ by orders of magnitude.
The transformer recipe (:func:`transformer_recipe`) keeps everything but the weight MatMuls in
float; the plans here are the standard answers it is compared with, all judged by the task:

- :func:`reparameterise_norms`: RepQ-ViT's exact rewrite -- each LayerNorm's per-channel output
  scale moves into the next Linear's weights, so one per-tensor range fits its output;
- :func:`quantize_dynamic_int8`: onnxruntime's dynamic int8 (ranges per run, per-channel weights),
  what its documentation recommends for transformers on CPU;
- :func:`weight_only_int8`: int8 weights, float activations -- the fallback when no W8A8 plan keeps
  the task (the activations, where the outliers are, are never quantised);
- :func:`error_ranking`: which tensors lose most (fp32 vs candidate SQNR per tensor, in the spirit of
  onnxruntime's ``qdq_loss_debug``), for the calibration report.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from dcssa.calibration.calibset import PrefixSet
from dcssa.calibration.int8 import Int8Recipe, QuantisationError, fix_ir_version, node_block, quantiser_notices_hidden
from dcssa.runtime.contract import manifest as mf

#: the ops the transformer recipe quantises: weight matrix products only (constant B)
TRANSFORMER_OPS = ("MatMul", "Gemm")
#: what stays float in every transformer plan (besides the unquantised blocks)
TRANSFORMER_FLOAT_OPS = ("Add", "LayerNormalization", "Softmax", "Erf", "Gelu", "Mul", "Div")


def transformer_recipe(method: str = "minmax") -> Int8Recipe:
    """Weight MatMul/Gemm of every transformer block (their inputs: per-tensor activations,
    per-channel symmetric weights; constant B only; outputs float): residual Adds, LayerNorms,
    Softmax, GELU, the score path, the final norm and the head stay float."""
    return Int8Recipe(method=method, blocks=["vit.blocks.*"], op_types=list(TRANSFORMER_OPS), const_b_only=True,
                      quantise_outputs=False)


def _session(model: onnx.ModelProto | Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the float tensors ``names`` (shapes left free)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                            for n in names if n not in have)
    return out


def run_tensors(model: onnx.ModelProto, names: Sequence[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """``names`` of ``model`` on ``images`` (one raster at a time), stacked along axis 0."""
    sess = _session(with_outputs(model, names))
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(len(images)):
        for n, v in zip(names, sess.run(list(names), {mf.IMAGES: images[i:i + 1]})):
            rows[n].append(v)
    return {n: np.concatenate(v) for n, v in rows.items()}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for x in n.input:
            out.setdefault(x, []).append(n)
    return out


def _constant(model: onnx.ModelProto, name: str) -> onnx.TensorProto | None:
    """The initializer ``name`` is, through Identity nodes (the exporter shares equal tensors that way)."""
    inits = {t.name: t for t in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}
    while name not in inits and name in prod and prod[name].op_type == "Identity":
        name = prod[name].input[0]
    return inits.get(name)


def foldable_norms(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, list[onnx.NodeProto]]]:
    """LayerNorms with constant scale and bias whose output feeds only MatMuls by constant 2-D
    weights (and Shape nodes, which read no values)."""
    cons = _consumers(model)
    found = []
    for n in model.graph.node:
        if n.op_type != "LayerNormalization" or len(n.input) < 3 or None in (_constant(model, n.input[1]),
                                                                            _constant(model, n.input[2])):
            continue
        users = [u for u in cons.get(n.output[0], []) if u.op_type != "Shape"]
        if users and all(u.op_type == "MatMul" and u.input[0] == n.output[0] and (w := _constant(model, u.input[1]))
                         is not None and len(w.dims) == 2 for u in users):
            found.append((n, users))
    return found


def norm_scales(model: onnx.ModelProto, prefixes: PrefixSet, rasters: int = 16) -> dict[str, np.ndarray]:
    """Per foldable LayerNorm, RepQ-ViT's per-channel factor: each output channel's range (max |y|
    over ``rasters`` calibration rasters) over the mean range of all channels."""
    norms = foldable_norms(model)
    if not norms:
        return {}
    pick = np.unique(np.linspace(0, len(prefixes) - 1, min(rasters, len(prefixes))).round().astype(int))
    images = np.concatenate([prefixes.images(i, i + 1) for i in pick])
    names = [n.output[0] for n, _ in norms]
    acts = run_tensors(model, names, images)
    out = {}
    for n, _ in norms:
        y = acts[n.output[0]]
        r = np.abs(y.reshape(-1, y.shape[-1])).max(axis=0).astype(np.float64)
        r = np.maximum(r, 1e-6 * max(r.max(), 1e-30))
        out[n.name] = r / r.mean()
    return out


def reparameterise_norms(fp32_path: Path, out_path: Path, scales: dict[str, np.ndarray]) -> dict:
    """Write ``fp32_path`` with every LayerNorm of ``scales`` divided per channel by its factor and
    the next MatMuls' weight rows multiplied by it: the same function in float (LN(x)/s @ (s*W) =
    LN(x) @ W), one per-tensor range for the LayerNorm's output. Returns what was folded."""
    model = onnx.load(str(fp32_path))
    folded = []
    for ln, users in foldable_norms(model):
        if ln.name not in scales:
            continue
        s = scales[ln.name]
        # new tensors for each (the exporter may share one LayerNorm scale among all of them)
        for node, slot, div in ((ln, 1, True), (ln, 2, True), *((u, 1, False) for u in users)):
            a = numpy_helper.to_array(_constant(model, node.input[slot])).astype(np.float64)
            a = a / s if div else a * s[:, None]  # MatMul B is (in, out): its rows are the LN's channels
            name = f"{node.name}_input{slot}_reparameterised"
            model.graph.initializer.append(numpy_helper.from_array(a.astype(np.float32), name))
            node.input[slot] = name
        folded.append({"norm": ln.name, "matmuls": [u.name for u in users],
                       "scale_spread": float(s.max() / s.min())})
    if not folded:
        raise QuantisationError("no LayerNorm feeds a weight MatMul directly: nothing to reparameterise",
                                path=fp32_path)
    model.producer_name = "dcssa-calibrate"
    onnx.checker.check_model(model)
    Path(out_path).write_bytes(model.SerializeToString())
    return {"folded_norms": len(folded), "max_scale_spread": max(f["scale_spread"] for f in folded),
            "norms": folded}


def quantize_dynamic_int8(fp32_path: Path, out_path: Path, recipe: Int8Recipe | None = None) -> dict:
    """onnxruntime's dynamic int8 of the recipe's weight MatMuls (per-channel int8 weights, activation
    ranges computed per run)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    recipe = recipe or transformer_recipe()
    nodes = [n for n in recipe.nodes(onnx.load(str(fp32_path))) if n]
    with tempfile.TemporaryDirectory(prefix="dcssa-dq-") as tmp, quantiser_notices_hidden():
        tmp_out = Path(tmp) / "q.onnx"
        quantize_dynamic(str(fp32_path), str(tmp_out), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                         extra_options={"MatMulConstBOnly": True})
        q = fix_ir_version(onnx.load(str(tmp_out)))
    q.producer_name = "dcssa-calibrate"
    onnx.checker.check_model(q)
    Path(out_path).write_bytes(q.SerializeToString())
    ops = [n.op_type for n in q.graph.node]
    return {"quantised_nodes": len(nodes), "dynamic_ops": {k: ops.count(k) for k in sorted(set(ops))
                                                           if "Integer" in k or "Dynamic" in k}}


def weight_only_int8(fp32_path: Path, out_path: Path, recipe: Int8Recipe | None = None) -> dict:
    """Int8 weights (per output channel, symmetric) dequantised in the graph before each of the
    recipe's MatMuls; activations stay float (what NNCF's ``compress_weights`` INT8_SYM makes)."""
    recipe = recipe or transformer_recipe()
    model = onnx.load(str(fp32_path))
    inits = {t.name: t for t in model.graph.initializer}
    wanted = set(recipe.nodes(model))
    new_nodes, count = [], 0
    for n in model.graph.node:
        if n.name in wanted and n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
            w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
            scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            base = n.input[1]
            model.graph.initializer.extend([numpy_helper.from_array(q, f"{base}_w8"),
                                            numpy_helper.from_array(scale.astype(np.float32), f"{base}_w8_scale"),
                                            numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{base}_w8_zp")])
            new_nodes.append(onnx.helper.make_node("DequantizeLinear", [f"{base}_w8", f"{base}_w8_scale", f"{base}_w8_zp"],
                                                   [f"{base}_dq"], name=f"{n.name}_weight_dq", axis=1))
            n.input[1] = f"{base}_dq"
            count += 1
        new_nodes.append(n)
    used = {x for m in new_nodes for x in m.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(new_nodes)
    model.graph.initializer.extend(keep)
    model = fix_ir_version(model)
    model.producer_name = "dcssa-calibrate"
    onnx.checker.check_model(model)
    Path(out_path).write_bytes(model.SerializeToString())
    return {"quantised_nodes": count, "weights": "int8 per output channel, symmetric; activations float"}


#: tensors the error ranking compares: what each block computes and hands on
RANKED_OPS = ("Conv", "MatMul", "Gemm", "Add", "LayerNormalization", "Softmax")


def error_ranking(fp32_path: Path, candidate: Path, images: np.ndarray, top: int = 12) -> dict:
    """Signal-to-quantisation-noise ratio (dB, onnxruntime's ``qdq_loss_debug`` formula) of every
    tensor the candidate still computes under its fp32 name, worst first, and the worst per block."""
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio as sqnr

    ref = onnx.load(str(fp32_path))
    cand = onnx.load(str(candidate))
    made = {o for n in cand.graph.node for o in n.output}
    names = [n.output[0] for n in ref.graph.node if n.op_type in RANKED_OPS and n.output[0] in made]
    owner = {n.output[0]: n.name for n in ref.graph.node}
    a, b = run_tensors(ref, names, images), run_tensors(cand, names, images)
    rows = sorted(({"tensor": t, "node": owner[t], "block": node_block(owner[t]), "sqnr_db": round(sqnr(a[t], b[t]), 2)}
                   for t in names), key=lambda r: r["sqnr_db"])
    blocks: dict[str, float] = {}
    for r in rows:
        blocks.setdefault(r["block"], r["sqnr_db"])
    return {"rasters": len(images), "metric": "SQNR dB = 20 log10(|fp32| / |fp32 - candidate|), lower is worse",
            "worst": rows[:top], "worst_per_block": blocks, "tensors": len(rows)}
