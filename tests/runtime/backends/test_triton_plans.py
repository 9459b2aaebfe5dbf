"""Triton ``tensorrt_plan`` models: the repository records the TensorRT that built each plan (and
whether version-compatible), the client checks it, and a plan the server's TensorRT cannot load is
met with the fix that works (build on the server's TensorRT, or version-compatible), not "regenerate
the repository". The engines come from ``build_engines`` on the recording TensorRT stand-in."""

from __future__ import annotations

import sys

import pytest
from fake_tensorrt import FakeCuda, FakeTensorRT
from tiny_bundle import write_tiny_bundle

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (pip install 'dcssa-rt[dev]')")

from triton_harness import parse_config  # noqa: E402

from dcssa.calibration.engines import build_engines  # noqa: E402
from dcssa.export.triton import write_repository  # noqa: E402
from dcssa.runtime.backends import cuda_memory  # noqa: E402
from dcssa.runtime.backends import triton as tb  # noqa: E402
from dcssa.runtime.contract import manifest as mf  # noqa: E402
from dcssa.runtime.errors import BackendError  # noqa: E402

#: what TensorRT says about a plan from another release (as Triton reports it in the model's reason)
TRT_MISMATCH = ("version 1 is at UNAVAILABLE state: Internal: unable to load plan file to auto complete config: "
                "The engine plan file is not compatible with this version of TensorRT, expecting library version "
                "10.7.0.23 got 10.3.0.30, please rebuild.")


@pytest.fixture
def engines_bundle(tmp_path, monkeypatch):
    def make(version_compatible: bool):
        trt = FakeTensorRT(version="10.3.0")
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(cuda_memory, "cuda_api", lambda: FakeCuda())
        folder = write_tiny_bundle(tmp_path / f"b{int(version_compatible)}")
        build_engines(folder, ["fp32"], max_batch=8, max_strokes=8, version_compatible=version_compatible)
        return folder
    return make


@pytest.mark.parametrize("compatible", [False, True])
def test_plan_models_record_the_tensorrt_that_built_them(engines_bundle, tmp_path, compatible):
    folder = engines_bundle(compatible)
    doc = write_repository(folder, tmp_path / "repo", platform="tensorrt")
    assert doc["tensorrt"] == "10.3.0"
    for model in doc["models"]:
        cfg = parse_config(tmp_path / "repo" / model / "config.pbtxt")
        assert cfg.platform == "tensorrt_plan"
        assert cfg.parameters[tb.PARAM_TENSORRT].string_value == "10.3.0"
        assert cfg.parameters[tb.PARAM_VERSION_COMPATIBLE].string_value == ("true" if compatible else "false")
    assert ("--backend-config=tensorrt,version-compatible=true" in doc["serve"]) == compatible
    onnx_doc = write_repository(folder, tmp_path / "repo-onnx")  # onnxruntime models record no TensorRT
    cfg = parse_config(tmp_path / "repo-onnx" / next(iter(onnx_doc["models"])) / "config.pbtxt")
    assert tb.PARAM_TENSORRT not in cfg.parameters and "serve" not in onnx_doc


def _runner(engines_tensorrt: str | None) -> tb.TritonRunner:
    r = object.__new__(tb.TritonRunner)  # the config checks only; no server here
    r.engines_tensorrt, r.model, r.protocol, r.address = engines_tensorrt, "sketch_encoder", "grpc", "gpu:8001"
    return r


def test_the_client_refuses_a_plan_from_other_engines_than_the_bundles(tmp_path):
    config = {"platform": "tensorrt_plan", "parameters": {tb.PARAM_TENSORRT: {"string_value": "10.7.0"}}}
    with pytest.raises(BackendError) as err:
        _runner("10.3.0")._check_plan(config, tmp_path, "fp16")
    assert "built with TensorRT 10.7.0" in err.value.message and "10.3.0" in err.value.message
    assert "--version-compatible" in err.value.hint and "server's TensorRT" in err.value.hint
    assert err.value.path == str(tmp_path / mf.MANIFEST)
    _runner("10.7.0")._check_plan(config, tmp_path, "fp16")  # the same: accepted
    _runner("10.3.0")._check_plan({"platform": "onnxruntime_onnx", "parameters": {}}, tmp_path, "fp16")


def test_a_plan_the_servers_tensorrt_cannot_load_gets_the_fix_that_works(tmp_path):
    assert tb.plan_load_failure(TRT_MISMATCH)
    assert not tb.plan_load_failure("failed to load 'sketch_encoder': model.onnx not found")
    hint = tb.plan_fix(tmp_path, "fp16", "10.3.0")
    assert "only on the TensorRT release that built it (these: 10.3.0)" in hint
    assert f"dcssa-export engines {tmp_path} --precision fp16 --version-compatible" in hint
    assert "--backend-config=tensorrt,version-compatible=true" in hint
    assert hint.index("engines") < hint.index("write the repository again")  # rebuilding comes first
