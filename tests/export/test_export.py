"""The exported bundle: manifest contract, loadability in onnxruntime, parity, failure modes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from dcssa.export import dcssa as export_bundle_mod
from dcssa.export.cli import main as export_cli
from dcssa.export.parity import ParityError, check_parity
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import sha256_file

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_records_the_contract(bundle2: Path):
    m = json.loads((bundle2 / "manifest.json").read_text())
    assert m["schema_version"] == mf.SCHEMA_VERSION and m["family"] == "dcssa"
    assert m["phase"] == 2 and m["demo"] is True
    assert m["dims"] == {"feature": 2048, "embedding": 64, "heads": 8, "head_dim": 256}
    assert set(m["graphs"]) == {"sketch_encoder", "photo_encoder", "stroke_head_step", "stroke_head_full"}
    sk = m["preprocessing"]["sketch"]
    assert sk["canvas"] == 400 and sk["frame"] == 256 and sk["size"] == [299, 299]
    assert sk["mean"] == [0.485, 0.456, 0.406] and sk["std"] == [0.229, 0.224, 0.225]
    assert m["preprocessing"]["photo"]["resize_shorter_side"] == 299
    for tool in ("torch", "onnx", "onnxruntime", "torchvision"):
        assert m["tools"][tool]
    assert m["source"]["layout"] == "phase2-full"
    # every file on disk is listed with its true hash and size
    onnx_files = sorted(p.name for p in bundle2.glob("*.onnx"))
    assert sorted(m["files"]) == onnx_files
    for name, entry in m["files"].items():
        assert entry["sha256"] == sha256_file(bundle2 / name)
        assert entry["bytes"] == (bundle2 / name).stat().st_size
    # parity numbers are recorded and within the FP32 bound
    assert set(m["parity"]) == set(m["graphs"])
    for rep in m["parity"].values():
        assert rep["passed"] and 0 <= rep["max_abs_err"] <= 1e-4


@pytest.mark.parametrize("name", ["sketch_encoder", "photo_encoder", "stroke_head_step", "stroke_head_full"])
def test_graphs_load_in_our_onnxruntime(bundle2: Path, name: str):
    model = onnx.load(str(bundle2 / f"{name}.onnx"), load_external_data=False)
    # onnxruntime 1.31 reads IR <= 13; onnx 1.23 would write 14 if we let it
    assert model.ir_version == mf.IR_VERSION <= 13
    assert {o.domain: o.version for o in model.opset_import}[""] == mf.OPSET
    sess = ort.InferenceSession(str(bundle2 / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    spec = mf.graph_spec(name)
    assert [i.name for i in sess.get_inputs()] == list(spec.input_names)
    assert [o.name for o in sess.get_outputs()] == list(spec.output_names)


def test_photo_encoder_takes_any_size(bundle2: Path, ref_model):
    sess = ort.InferenceSession(str(bundle2 / "photo_encoder.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(0, 1, (1, 3, 310, 431)).astype(np.float32)
    got = sess.run(None, {"images": x})[0]
    with torch.no_grad():
        want = ref_model.photo_embedding(torch.from_numpy(x)).numpy()
    assert got.shape == (1, 64)
    assert np.abs(got - want).max() <= 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_step_graph_from_empty_cache_to_256(bundle2: Path, ref_model):
    """The incremental head equals the last row of the reference head on every prefix."""
    sess = ort.InferenceSession(str(bundle2 / "stroke_head_step.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    seq = np.abs(rng.normal(0, 1, (256, 2048))).astype(np.float32)
    seq /= np.linalg.norm(seq, axis=1, keepdims=True)
    keys = np.zeros((0, 2048), np.float32)
    values = np.zeros((0, 2048), np.float32)
    outs = []
    for t in range(256):
        e, k, v = sess.run(None, {"feature": seq[t : t + 1], "past_keys": keys, "past_values": values})
        keys = np.concatenate([keys, k])
        values = np.concatenate([values, v])
        outs.append(e[0])
    with torch.no_grad():
        for t in (1, 2, 17, 100, 256):
            want = ref_model.attn(torch.from_numpy(seq[:t]))[-1].numpy()
            assert np.abs(outs[t - 1] - want).max() <= 1e-4, t


def test_phase1_bundle_has_projection_instead_of_head(bundle1: Path):
    m = json.loads((bundle1 / "manifest.json").read_text())
    assert m["phase"] == 1
    assert set(m["graphs"]) == {"sketch_encoder", "photo_encoder", "sketch_projection"}
    assert m["parity"]["sketch_projection"]["max_abs_err"] <= 1e-4


def test_wrong_head_count_is_caught_by_parity(ref_model, tmp_path: Path):
    """Graphs built with 4 heads disagree with the 8-head reference: parity must say so."""
    export_bundle_mod.export_graphs(ref_model, tmp_path, heads=4)
    with pytest.raises(ParityError) as err:
        check_parity(ref_model, tmp_path)
    assert "num-heads" in str(err.value)


def test_export_failure_leaves_nothing_behind(demo_ckpt: Path, tmp_path: Path, monkeypatch):
    real = export_bundle_mod.export_graphs
    monkeypatch.setattr(export_bundle_mod, "export_graphs", lambda model, folder, heads, say: real(model, folder, 2, say))
    out = tmp_path / "bundle"
    res = CliRunner().invoke(export_cli, ["--ckpt", str(demo_ckpt), "--out", str(out), "-q"])
    assert res.exit_code != 0
    assert "disagree with the PyTorch reference" in res.output
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp folder left either


def test_existing_bundle_needs_force(demo_ckpt: Path, tmp_path: Path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    res = CliRunner().invoke(export_cli, ["--ckpt", str(demo_ckpt), "--out", str(out), "-q"])
    assert res.exit_code != 0 and "--force" in res.output
    assert (out / "keep.txt").read_text() == "x"


def test_runtime_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; sys.modules['onnx'] = None\n"
        "import dcssa.runtime, dcssa.runtime.cli, dcssa.runtime.session, dcssa.runtime.search.gallery\n"
        "import dcssa.runtime.stroke.raster, dcssa.runtime.stroke.parse, dcssa.runtime.data.datasets\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_cli_help_exits_zero():
    for args in ([], ["demo-checkpoint"]):
        res = CliRunner().invoke(export_cli, [*args, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output


def test_export_help_needs_no_torch():
    """`dcssa-export --help` (and the CLI reference made from it) work where torch is not installed."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "from click.testing import CliRunner\n"
        "from dcssa.export.cli import main\n"
        "for args in ([], ['calibrate'], ['engines'], ['demo-checkpoint'], ['triton']):\n"
        "    res = CliRunner().invoke(main, [*args, '--help'])\n"
        "    assert res.exit_code == 0, (args, res.output)\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
