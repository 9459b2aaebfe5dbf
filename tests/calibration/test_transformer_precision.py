"""ARNet's reduced-precision plans (issue 34) on a tiny timm ViT bundle: the transformer recipe keeps
the float ops float (read from the graph), the LayerNorm reparameterisation is exact in float, the
dynamic and weight-only graphs quantise what they say, the error ranking measures what it claims,
and ARNet's default recipe is the transformer one."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper

from dcssa.calibration import transformer as tr
from dcssa.calibration.calibset import bundle_prefix_set, load_sketch_data
from dcssa.calibration.int8 import collect_ranges, quantize_int8
from dcssa.calibration.recipes import DEFAULT_RECIPES, load_recipe
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import Bundle

LINEARS = ("attn/qkv", "attn/proj", "mlp/fc1", "mlp/fc2")


@pytest.fixture(scope="module")
def tiny(arnet_bundle, arnet_dataset):
    """(bundle, fp32 sketch encoder path, a few prefixes, their rasters)."""
    b = Bundle.load(arnet_bundle)
    prefixes = bundle_prefix_set(b, load_sketch_data(arnet_dataset).sketches[:3])
    return b, b.graph_path(mf.SKETCH_ENCODER, "fp32"), prefixes, prefixes.images(0, 4)


def _run(path, x):
    so = onnxruntime.SessionOptions()
    so.log_severity_level = 3
    s = onnxruntime.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {mf.IMAGES: x})[0]


def _dq_fed(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Compute nodes reading a DequantizeLinear output, by name."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: n for n in model.graph.node if n.op_type != "QuantizeLinear" and set(n.input) & dq_out}


def test_transformer_recipe_quantises_only_the_weight_matmuls(tiny, tmp_path):
    b, fp32, prefixes, x = tiny
    recipe = tr.transformer_recipe("minmax")
    cache = collect_ranges(fp32, prefixes, "minmax", tmp_path / "ranges.json")
    q = tmp_path / "q.onnx"
    quantize_int8(fp32, q, recipe, cache)
    model = onnx.load(str(q))
    fed = {k: n for k, n in _dq_fed(model).items() if n.op_type != "Shape"}  # Shape reads no values
    want = {f"/encoder/blocks/blocks.{i}/{layer}/MatMul" for i in range(2) for layer in LINEARS}
    assert set(fed) == want  # nothing else reads a dequantised tensor: MatMul outputs stay float
    inits = {t.name for t in model.graph.initializer}
    dq_by_out = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for name in want:  # activations and constant weights, weights per output channel (axis 1 of B)
        a, w = (dq_by_out[i] for i in fed[name].input[:2])
        assert w.input[0] in inits and numpy_helper.to_array(
            next(t for t in model.graph.initializer if t.name == w.input[1])).size > 1
    float_ops = {"Add", "LayerNormalization", "Softmax", "Erf", "Div", "Mul", "Gemm"}
    assert not [n.name for n in model.graph.node if n.op_type in float_ops and n.name in fed]
    # the score path (q.k^T, attention.v: MatMuls of two activations) stays float
    assert not [n for n in fed if n.endswith(("attn/MatMul", "attn/MatMul_1"))]
    assert np.allclose(_run(q, x), _run(fp32, x), atol=0.1)


def test_arnets_default_recipe_is_the_transformer_one():
    recipe = load_recipe("default", mf.ARNET)
    ref = tr.transformer_recipe(recipe.method)
    assert recipe == ref and DEFAULT_RECIPES[mf.ARNET] == ref
    assert recipe.op_types == ["MatMul", "Gemm"] and recipe.const_b_only and recipe.blocks == ["vit.blocks.*"]
    assert not recipe.quantise_outputs


def test_layernorm_reparameterisation_is_exact_in_float_and_evens_the_ranges(tiny, tmp_path):
    _, fp32, prefixes, x = tiny
    model = onnx.load(str(fp32))
    scales = tr.norm_scales(model, prefixes, rasters=len(prefixes))  # every prefix, as below
    norms = [n.name for n, _ in tr.foldable_norms(model)]
    assert len(norms) == 4 and set(scales) == set(norms)  # norm1/norm2 of both blocks, not the final norm
    assert max(s.max() / s.min() for s in scales.values()) > 2  # something to fold
    out = tmp_path / "rep.onnx"
    info = tr.reparameterise_norms(fp32, out, scales)
    assert info["folded_norms"] == 4
    np.testing.assert_allclose(_run(out, x), _run(fp32, x), atol=1e-5, rtol=0)
    # after the fold every LayerNorm output channel has the same range on the calibration rasters
    rep = onnx.load(str(out))
    names = [n.output[0] for n, _ in tr.foldable_norms(rep)]
    imgs = prefixes.images()
    for y in tr.run_tensors(rep, names, imgs).values():
        r = np.abs(y.reshape(-1, y.shape[-1])).max(axis=0)
        assert r.max() / r.min() < 1.0001


def test_dynamic_and_weight_only_graphs(tiny, tmp_path):
    _, fp32, _, x = tiny
    dyn, wo = tmp_path / "dyn.onnx", tmp_path / "wo.onnx"
    tr.quantize_dynamic_int8(fp32, dyn)
    tr.weight_only_int8(fp32, wo)
    d = onnx.load(str(dyn))
    ops = [n.op_type for n in d.graph.node]
    assert ops.count("MatMulInteger") == 8 and ops.count("DynamicQuantizeLinear") == 8  # the 8 linear layers
    linear = [n.name for n in d.graph.node if n.op_type == "MatMul" and any(f"/{x}/" in n.name for x in LINEARS)]
    assert not linear and sum(n.name.endswith(("attn/MatMul", "attn/MatMul_1")) for n in d.graph.node) == 4
    w = onnx.load(str(wo))
    assert not [n for n in w.graph.node if n.op_type == "QuantizeLinear"]  # activations never quantised
    inits = {t.name: t for t in w.graph.initializer}
    dqs = [n for n in w.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 8 and all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in dqs)
    ref = _run(fp32, x)
    for path in (dyn, wo):
        y = _run(path, x)
        assert (y * ref).sum(1).min() > 0.9  # unit-norm embeddings stay close on a plain tiny ViT
    # weight-only: the dequantised weights are within half a step of the float ones
    f = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(fp32)).graph.initializer}
    for n in dqs:
        q, s = numpy_helper.to_array(inits[n.input[0]]), numpy_helper.to_array(inits[n.input[1]])
        orig = f[n.input[0][: -len("_w8")]]
        assert np.abs(q * s - orig).max() <= s.max() / 2 + 1e-7


def test_error_ranking_is_the_sqnr_of_each_tensor(tiny, tmp_path):
    _, fp32, _, x = tiny
    wo = tmp_path / "wo.onnx"
    tr.weight_only_int8(fp32, wo)
    rank = tr.error_ranking(fp32, wo, x[:2], top=5)
    worst = rank["worst"]
    assert len(worst) == 5 and [r["sqnr_db"] for r in worst] == sorted(r["sqnr_db"] for r in worst)
    t = worst[0]["tensor"]  # recomputed by hand
    a = tr.run_tensors(onnx.load(str(fp32)), [t], x[:2])[t]
    c = tr.run_tensors(onnx.load(str(wo)), [t], x[:2])[t]
    assert worst[0]["sqnr_db"] == pytest.approx(20 * math.log10(np.linalg.norm(a) / np.linalg.norm(a - c)), abs=0.01)
    assert set(rank["worst_per_block"]) >= {"vit.blocks.00", "vit.blocks.01"}


def _calibrate(bundle, dataset, tmp_path, *args):
    import shutil

    from click.testing import CliRunner

    from dcssa.export.cli import main as export_cli

    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    res = CliRunner().invoke(export_cli, ["calibrate", str(out), "--data", str(dataset), "--max-calib", "4",
                                          "--max-heldout", "6", "--no-noise-floor", *args])
    return out, res


def test_weight_only_quantiser_through_calibrate(arnet_bundle, arnet_dataset, tmp_path):
    import json

    out, res = _calibrate(arnet_bundle, arnet_dataset, tmp_path, "--precision", "int8", "--quantiser", "weight-only")
    assert res.exit_code == 0, res.output
    m = json.loads((out / mf.MANIFEST).read_text())
    entry = m["graphs"][mf.SKETCH_ENCODER]["int8"]
    assert entry["quantiser"] == "weight-only" and m["calibration"]["int8"]["recipe"]["mode"] == "weight-only"
    q = onnx.load(str(out / entry["file"]))
    assert not [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert sum(n.op_type == "DequantizeLinear" for n in q.graph.node) == 8
    ranking = m["fidelity"]["int8"]["error_ranking"]
    assert ranking["worst"] and ranking["worst"][0]["sqnr_db"] == min(r["sqnr_db"] for r in ranking["worst"])


def test_bf16_for_arnet_is_refused_where_the_cpu_has_no_native_bf16(arnet_bundle, arnet_dataset, tmp_path):
    ov = pytest.importorskip("openvino", reason="openvino is not installed")
    if "BF16" in [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]:
        pytest.skip("this CPU has native bf16: the plan is measured, not refused (tests/calibration/test_plan_search.py)")
    out, res = _calibrate(arnet_bundle, arnet_dataset, tmp_path, "--precision", "bf16")
    assert res.exit_code != 0 and "no native bf16" in res.output
    assert not list(out.glob("*.bf16*")) and "bf16" not in (out / mf.MANIFEST).read_text()


def test_bf16_units_of_a_vit_are_its_blocks(tiny):
    from dcssa.calibration.bf16 import bf16_units

    _, fp32, _, _ = tiny
    units = bf16_units(onnx.load(str(fp32)))
    assert [u for u in units if "blocks" in u] == ["/encoder/blocks/blocks.0", "/encoder/blocks/blocks.1"]


def test_tensorrt_graphs_of_a_vit_keep_norms_and_the_score_path_out_of_reduced_precision(tiny, tmp_path):
    """int8 (symmetric, TensorRT's Q/DQ): no LayerNorm, Softmax or score MatMul reads a dequantised
    tensor; fp16: they all stay FP32 islands."""
    from dcssa.calibration.fp16 import convert_fp16

    _, fp32, prefixes, _ = tiny
    sym = tmp_path / "sym.onnx"
    recipe = tr.transformer_recipe("minmax")
    quantize_int8(fp32, sym, recipe, collect_ranges(fp32, prefixes, "minmax", tmp_path / "r.json", symmetric=True),
                  symmetric=True)
    fed = _dq_fed(onnx.load(str(sym)))
    assert not [n for n, node in fed.items() if node.op_type in ("LayerNormalization", "Softmax")
                or n.endswith(("attn/MatMul", "attn/MatMul_1"))]
    kept = set(convert_fp16(fp32, tmp_path / "fp16.onnx")["fp32_nodes"])
    model = onnx.load(str(fp32))
    islands = {n.name for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")
               or n.name.endswith(("attn/MatMul", "attn/MatMul_1", "attn/Mul"))}
    assert islands and islands <= kept
    assert not kept & {f"/encoder/blocks/blocks.0/{x}/MatMul" for x in LINEARS}  # the linear layers are fp16
