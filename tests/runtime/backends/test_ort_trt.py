"""``--backend ort-trt`` wiring without a GPU: which file it loads and the provider options it passes.

onnxruntime's TensorRT provider is absent here, so ``InferenceSession`` is wrapped: it records the
path and the provider list it is given, then runs the graph on the CPU provider (the retriever
must still work end to end) and reports the TensorRT provider as active. The expected option
strings are worked out by hand from the tiny bundle (D = 16, 256 strokes).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime
import pytest
from tiny_bundle import write_tiny_bundle

from dcssa.runtime import Bundle, Retriever
from dcssa.runtime.backends.ort import OrtBackend, trt_precision_flags
from dcssa.runtime.backends.profiles import ort_trt_options
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import sha256_file
from dcssa.runtime.data.synthetic import random_sketch

TRT = "TensorrtExecutionProvider"


@pytest.fixture
def sessions(monkeypatch):
    """Every InferenceSession made: (path, {provider: options})."""
    made: list[tuple[str, dict]] = []
    real = onnxruntime.InferenceSession

    class Recorded:
        def __init__(self, path, sess_options=None, providers=None):
            made.append((str(path), {p[0] if isinstance(p, tuple) else p: (p[1] if isinstance(p, tuple) else {})
                                     for p in providers}))
            self.inner = real(str(path), sess_options=sess_options, providers=["CPUExecutionProvider"])
            self.first = list(made[-1][1])[0]

        def get_providers(self):
            return [self.first, "CPUExecutionProvider"]

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Recorded)
    monkeypatch.setattr(OrtBackend, "available_for", staticmethod(lambda name: True))
    return made


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    """The tiny bundle with an int8 sketch encoder entry whose CPU and TensorRT files differ
    (copies of the fp32 graph: only which one gets loaded matters here)."""
    folder = write_tiny_bundle(tmp_path_factory.mktemp("ort-trt") / "b")
    manifest = json.loads((folder / mf.MANIFEST).read_text())
    fp32 = manifest["graphs"][mf.SKETCH_ENCODER]["fp32"]
    for name in ("se.int8-cpu.onnx", "se.int8sym.onnx"):
        shutil.copy(folder / fp32["file"], folder / name)
        manifest["files"][name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    manifest["graphs"][mf.SKETCH_ENCODER]["int8"] = {**fp32, "file": "se.int8-cpu.onnx", "precision": "int8",
                                                     "tensorrt_file": "se.int8sym.onnx"}
    manifest["precisions"] = ["fp32", "int8"]
    (folder / mf.MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_profile_option_strings_by_hand():
    profile = {"past_keys": ((0, 16), (16, 16), (256, 16)), "past_values": ((0, 16), (16, 16), (256, 16))}
    assert ort_trt_options(profile) == {
        "trt_profile_min_shapes": "past_keys:0x16,past_values:0x16",
        "trt_profile_opt_shapes": "past_keys:16x16,past_values:16x16",
        "trt_profile_max_shapes": "past_keys:256x16,past_values:256x16",
    }
    assert ort_trt_options({}) == {}


def test_int8_loads_the_tensorrt_graph_with_profiles_and_no_precision_flags(sessions, int8_bundle):
    bundle = Bundle.load(int8_bundle)
    retriever = Retriever(bundle, None, backend=OrtBackend("ort-trt"), precision="int8")
    by_file = {p.rsplit("/", 1)[-1]: opts[TRT] for p, opts in sessions}
    assert set(by_file) == {"se.int8sym.onnx", bundle.graph_entry(mf.HEAD_STEP)["file"]}  # never the CPU int8 graph
    enc = by_file["se.int8sym.onnx"]
    # onnxruntime >= 1.18 (TensorRT 10+): no precision flag, so the provider builds a strongly typed network
    assert onnxruntime.__version__ >= "1.18"
    assert "trt_int8_enable" not in enc and "trt_fp16_enable" not in enc
    assert enc["trt_profile_min_shapes"] == "images:1x3x299x299"
    assert enc["trt_profile_opt_shapes"] == "images:8x3x299x299"  # tuned at the serving batch
    assert enc["trt_profile_max_shapes"] == "images:8x3x299x299"
    head = by_file[bundle.graph_entry(mf.HEAD_STEP)["file"]]
    assert "trt_int8_enable" not in head and "trt_fp16_enable" not in head  # the head has no int8 graph: fp32
    assert head["trt_profile_min_shapes"] == "past_keys:0x16,past_values:0x16"
    assert head["trt_profile_max_shapes"] == "past_keys:256x16,past_values:256x16"
    for _p, opts in sessions:
        assert list(opts)[-1] == "CPUExecutionProvider"
    session = retriever.session()
    for stroke in random_sketch(np.random.default_rng(0), 3):
        result = session.add_stroke(stroke)
    assert result.embedding.shape == (bundle.embed_dim,)


def test_fp32_loads_the_fp32_graph_with_profiles_only(sessions, int8_bundle):
    bundle = Bundle.load(int8_bundle)
    Retriever(bundle, None, backend=OrtBackend("ort-trt"), precision="fp32")
    by_file = {p.rsplit("/", 1)[-1]: opts[TRT] for p, opts in sessions}
    enc = by_file[bundle.graph_entry(mf.SKETCH_ENCODER)["file"]]
    assert "trt_int8_enable" not in enc and "trt_fp16_enable" not in enc
    assert enc["trt_profile_max_shapes"] == "images:8x3x299x299"


def test_ort_cpu_loads_the_cpu_int8_graph(sessions, int8_bundle):
    bundle = Bundle.load(int8_bundle)
    Retriever(bundle, None, backend=OrtBackend("ort-cpu"), precision="int8")
    files = [p.rsplit("/", 1)[-1] for p, _ in sessions]
    assert "se.int8-cpu.onnx" in files and "se.int8sym.onnx" not in files
    assert all(TRT not in opts for _p, opts in sessions)


@pytest.mark.parametrize("version,precision,flags", [
    ("1.17.3", "fp16", {"trt_fp16_enable": "True"}),  # built against TensorRT 8.6: no strong typing, flags needed
    ("1.17.3", "int8", {"trt_fp16_enable": "True", "trt_int8_enable": "True"}),
    ("1.17.3", "fp32", {}),
    ("1.18.0", "fp16", {}),  # TensorRT 10+: typed graphs, strongly typed only without the flags
    ("1.22.1", "int8", {}),
    ("1.32.0", "fp16", {}),
])
def test_precision_flags_only_for_onnxruntime_built_before_tensorrt_10(version, precision, flags):
    assert trt_precision_flags(precision, version) == flags


def test_ort_cuda_refuses_int8_by_name_before_any_provider_is_looked_up(sessions, int8_bundle, monkeypatch):
    from dcssa.runtime.backends import get_backend
    from dcssa.runtime.errors import BackendError

    monkeypatch.setattr(OrtBackend, "available_for", staticmethod(lambda name: pytest.fail("provider looked up")))
    with pytest.raises(BackendError) as err:
        get_backend("ort-cuda", precision="int8")
    assert "ort-cuda does not run int8" in err.value.message and "ort-trt" in err.value.hint
    monkeypatch.setattr(OrtBackend, "available_for", staticmethod(lambda name: True))
    with pytest.raises(BackendError, match="ort-cuda does not run int8"):  # a backend object gets the same answer
        Retriever(Bundle.load(int8_bundle), None, backend=OrtBackend("ort-cuda"), precision="int8")
    assert sessions == []  # nothing was loaded


def test_auto_never_picks_ort_cuda_for_int8(monkeypatch):
    import dcssa.runtime.backends as backends

    for name in ("tensorrt", "ort-trt", "openvino"):  # a GPU box without TensorRT or OpenVINO
        monkeypatch.setitem(backends.REGISTRY, name, backends.REGISTRY[name].__class__(
            backends.REGISTRY[name].cls, backends.REGISTRY[name].make, lambda: False))
    monkeypatch.setattr(OrtBackend, "available_for", staticmethod(lambda name: True))
    assert backends.get_backend("auto", precision="int8").name == "ort-cpu"
    assert backends.get_backend("auto", precision="fp16").name == "ort-cuda"
