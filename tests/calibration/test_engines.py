"""TensorRT engine planning from the bundle (runs without a GPU) and, on a GPU box, the engines."""

from __future__ import annotations

import shutil

import pytest
from tiny_bundle import write_tiny_bundle

from dcssa.calibration.calibset import synthetic_sketches
from dcssa.calibration.engines import engine_sources, profiles
from dcssa.runtime import Bundle, Retriever
from dcssa.runtime.backends import tensorrt as trtb
from dcssa.runtime.contract import manifest as mf

HAS_GPU = trtb.TensorRTBackend.available()


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


@pytest.mark.parametrize("schema", [1, 2])
def test_profiles_cover_every_dynamic_input_of_the_specs(tmp_path, schema):
    """Worked out by hand for D = 16: batch 1..8, strokes 1..40 (caches from 0), photos 299..896."""
    b = Bundle.load(write_tiny_bundle(tmp_path / "b", schema=schema, feature_dim=16))
    assert profiles(b, max_batch=8, max_strokes=40) == {
        mf.SKETCH_ENCODER: {"images": ((1, 3, 299, 299), (8, 3, 299, 299), (8, 3, 299, 299))},
        mf.PHOTO_ENCODER: {"images": ((1, 3, 299, 299), (8, 3, 299, 398), (8, 3, 896, 896))},
        mf.HEAD_STEP: {"past_keys": ((0, 16), (16, 16), (40, 16)), "past_values": ((0, 16), (16, 16), (40, 16))},
        mf.HEAD_FULL: {"features": ((1, 16), (16, 16), (40, 16))},
    }
    # a single-user device tunes for one stroke at a time; opt never exceeds max
    single = profiles(b, max_batch=8, max_strokes=40, opt_batch=1)
    assert single[mf.SKETCH_ENCODER]["images"][1] == (1, 3, 299, 299)
    assert profiles(b, max_batch=2, opt_batch=8)[mf.SKETCH_ENCODER]["images"][1][0] == 2


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs TensorRT and an NVIDIA GPU")
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
