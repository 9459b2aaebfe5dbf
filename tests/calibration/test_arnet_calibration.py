"""ARNet bundles through calibration: the ViT's blocks are named, the family's default recipe
quantises exactly their linear layers, and the int8 graph stays close to fp32."""

from __future__ import annotations

import json
import shutil

import onnx
from click.testing import CliRunner

from dcssa.calibration.int8 import node_block, searchable_blocks
from dcssa.export.cli import main as export_cli
from dcssa.runtime.contract import manifest as mf


def test_vit_node_names_map_to_blocks():
    cases = {
        "/encoder/patch_embed/proj/Conv": "vit.patch_embed",
        "/encoder/blocks/blocks.0/attn/qkv/MatMul": "vit.blocks.00",
        "/encoder/blocks/blocks.11/mlp/fc2/MatMul": "vit.blocks.11",
        "/encoder/blocks/blocks.3/attn/proj/Add": "vit.blocks.03",
        "/encoder/blocks/blocks.3/attn/MatMul_1": "vit.scores",
        "/encoder/blocks/blocks.3/attn/Softmax": "vit.scores",
        "/encoder/norm/LayerNormalization": "other",
        "/mlp_head/mlp_head.0/Gemm": "projection",
        "/trunk/Mixed_6b/branch7x7_1/conv/Conv": "Mixed_6b",  # DC-SSA's names are unchanged
    }
    assert {k: node_block(k) for k in cases} == cases


def test_default_recipe_quantises_the_transformer_blocks(arnet_bundle, arnet_dataset, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(arnet_bundle, out)
    res = CliRunner().invoke(export_cli, ["calibrate", str(out), "--data", str(arnet_dataset), "--precision", "int8",
                                          "--recipe", "default", "--max-calib", "8", "--max-heldout", "8", "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / mf.MANIFEST).read_text())
    assert m["calibration"]["int8"]["recipe"]["blocks"] == ["vit.blocks.*"]
    fp32 = onnx.load(str(out / m["graphs"][mf.SKETCH_ENCODER]["fp32"]["file"]))
    assert searchable_blocks(fp32) == ["vit.patch_embed", "vit.blocks.00", "vit.blocks.01"]
    q = onnx.load(str(out / m["graphs"][mf.SKETCH_ENCODER]["int8"]["file"]))
    # every linear layer of both blocks reads quantised weights; the patch embedding, q.k^T and attention.v do not
    dq_out = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    consumers = {n.name: n for n in q.graph.node}
    quantised = {name for name, n in consumers.items() if n.op_type in ("MatMul", "Conv") and set(n.input) <= dq_out}
    want = {f"/encoder/blocks/blocks.{i}/{layer}/MatMul" for i in range(2) for layer in ("attn/qkv", "attn/proj", "mlp/fc1", "mlp/fc2")}
    assert want <= quantised, sorted(want - quantised)
    assert not any("patch_embed" in n or n.endswith(("attn/MatMul", "attn/MatMul_1")) for n in quantised)
    assert m["fidelity"]["int8"]["embedding_cosine"]["min"] > 0.95
