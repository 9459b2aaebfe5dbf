"""The backend registry and the onnxruntime backends, on a tiny graph built here with onnx.helper.

Expected numbers are worked out by hand (y = 2x + 1); which providers exist is read from
onnxruntime directly, with our own name mapping, never from the registry under test.
"""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, checker, helper, numpy_helper, save_model

from dcssa.runtime.backends import available_backends, backend_names, get_backend
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.errors import BackendError

HAVE = set(onnxruntime.get_available_providers())
HAVE_CUDA = "CUDAExecutionProvider" in HAVE
HAVE_TRT = "TensorrtExecutionProvider" in HAVE
ALL_NAMES = ("ort-cpu", "ort-cuda", "ort-trt")
# Our own statement of which backend needs which provider.
ORT_HERE = [n for n, p in (("ort-cpu", "CPUExecutionProvider"), ("ort-cuda", "CUDAExecutionProvider"),
                           ("ort-trt", "TensorrtExecutionProvider")) if p in HAVE]
AVAILABLE_HERE = list(ORT_HERE)
try:  # the openvino backend (tests/runtime/backends/test_openvino.py) counts when OpenVINO sees a CPU
    import openvino

    HAVE_OPENVINO = "CPU" in openvino.Core().available_devices
except ImportError:
    HAVE_OPENVINO = False
AVAILABLE_HERE += ["openvino"] if HAVE_OPENVINO else []

X = np.array([[0.0, 1.0, -2.5], [10.0, 0.25, 3.0]], dtype=np.float32)
Y = np.array([[1.0, 3.0, -4.0], [21.0, 1.5, 7.0]], dtype=np.float32)  # 2x + 1, by hand


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    """y = x * 2 + 1 over a float32 [N, 3] input, opset 17, IR version 8."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["twice"]),
            helper.make_node("Add", ["twice", "one"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    save_model(model, str(path))
    return path


def _check_runs(runner) -> None:
    assert runner.input_names == ("x",)
    assert runner.output_names == ("y",)
    out = runner.run({"x": X})
    assert set(out) == {"y"}
    assert out["y"].dtype == np.float32
    np.testing.assert_array_equal(out["y"], Y)
    out = runner.run({"x": np.full((1, 3), -0.5, dtype=np.float32)})
    np.testing.assert_array_equal(out["y"], np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(BackendError, match="missing x"):
        runner.run({})
    with pytest.raises(BackendError, match="unknown images"):
        runner.run({"x": X, "images": X})


def test_cpu_backend_runs_tiny_graph(tiny_graph):
    backend = get_backend("ort-cpu", threads=1)
    assert backend.name == "ort-cpu"
    _check_runs(backend.load(tiny_graph))


def test_available_backends_has_cpu():
    got = available_backends()
    assert "ort-cpu" in got
    assert sorted(got) == sorted(AVAILABLE_HERE)


@pytest.mark.skipif(HAVE_CUDA or HAVE_TRT, reason="a GPU provider is installed: auto picks it, not the CPU")
def test_auto_resolves_to_cpu_without_gpu(tiny_graph, monkeypatch):
    from dcssa.runtime.backends import openvino as ovb

    monkeypatch.setattr(ovb.OpenVINOBackend, "available", classmethod(lambda cls: False))  # see test_openvino
    backend = get_backend("auto")
    assert backend.name == "ort-cpu"
    runner = backend.load(tiny_graph)
    np.testing.assert_array_equal(runner.run({"x": X})["y"], Y)


@pytest.mark.parametrize(
    "name, provider",
    [("ort-cuda", "CUDAExecutionProvider"), ("ort-trt", "TensorrtExecutionProvider")],
)
def test_gpu_backend_absent_is_a_clear_error(name, provider):
    if provider in HAVE:
        pytest.skip(f"{provider} is installed here, so {name} is available")
    with pytest.raises(BackendError) as err:
        get_backend(name)
    msg = str(err.value)
    assert name in msg
    for available in ORT_HERE:  # onnxruntime's error lists onnxruntime's providers
        assert available in msg
    assert "ort-cpu" in msg


def test_registry_names_every_backend_once():
    assert backend_names() == ("ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "openvino", "triton")
    assert set(available_backends()) <= set(backend_names())


def test_unknown_backend_names_the_choices():
    with pytest.raises(BackendError) as err:
        get_backend("nope")
    msg = str(err.value)
    assert "nope" in msg
    for choice in ("auto", *ALL_NAMES):
        assert choice in msg


def test_corrupted_onnx_names_the_file(tmp_path):
    path = tmp_path / "sketch_encoder.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(BackendError) as err:
        get_backend("ort-cpu").load(path)
    assert str(path) in str(err.value)


def test_missing_onnx_names_the_file(tmp_path):
    path = tmp_path / "absent.onnx"
    with pytest.raises(BackendError) as err:
        get_backend("ort-cpu").load(path)
    assert str(path) in str(err.value)


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUDA, reason="needs an NVIDIA GPU with onnxruntime-gpu")
def test_cuda_backend_runs_tiny_graph(tiny_graph):
    backend = get_backend("ort-cuda")
    runner = backend.load(tiny_graph)
    assert "CUDAExecutionProvider" in runner.session.get_providers()
    _check_runs(runner)


def test_only_the_encoders_spin(tiny_graph):
    """Idle pools of the small graphs must block, or they take the cores from the next encoder run.

    Which graphs spin is the spec's ``heavy`` flag (from the manifest), never a name the backend knows.
    """
    backend = get_backend("ort-cpu")
    names = (mf.SKETCH_ENCODER, mf.PHOTO_ENCODER, mf.HEAD_STEP, mf.SKETCH_PROJECTION)
    runners = {name: backend.load(tiny_graph, mf.graph_spec(name)) for name in names}
    runners["loose file"] = backend.load(tiny_graph)  # no spec: a plain graph, not heavy
    spin = {n: r.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
            for n, r in runners.items()}
    assert spin == {mf.SKETCH_ENCODER: "1", mf.PHOTO_ENCODER: "1", mf.HEAD_STEP: "0",
                    mf.SKETCH_PROJECTION: "0", "loose file": "0"}
    assert runners[mf.SKETCH_ENCODER].name == mf.SKETCH_ENCODER and runners["loose file"].name == "tiny"
    # the policy changes scheduling only, never the numbers
    for r in runners.values():
        np.testing.assert_allclose(r.run({"x": X})["y"], Y)
