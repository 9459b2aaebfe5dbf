"""The native TensorRT backend, everything that runs without a GPU: engine metadata checks, engine
lookup, buffer planning by hand, and backend selection when TensorRT is missing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_bundle import write_tiny_bundle

import dcssa.runtime.backends as backends
from dcssa.runtime import Bundle
from dcssa.runtime.backends import available_backends, backend_names, get_backend
from dcssa.runtime.backends import tensorrt as trtb
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.errors import BackendError


def _gpu_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip cannot install it on this CPU-only machine)"
    try:
        from dcssa.runtime.backends.cuda_memory import cuda_api

        cuda_api()
    except BackendError as exc:
        return f"no usable GPU: {exc.message}"
    return None


NO_GPU = _gpu_reason()
LOCAL = {"tensorrt": "10.3.0", "gpu": "Orin (nvgpu)", "compute_capability": "8.7"}


@pytest.mark.parametrize("field,other", [("tensorrt", "10.7.0"), ("compute_capability", "8.6")])
def test_engine_metadata_mismatch_is_refused(field, other):
    recorded = {**LOCAL, field: other}
    with pytest.raises(BackendError) as info:
        trtb.check_engine_metadata(recorded, LOCAL, bundle="/b", precision="int8")
    assert other in info.value.message and LOCAL[field] in info.value.message
    assert "dcssa-export engines /b --precision int8" in info.value.hint
    assert info.value.path == "/b"
    assert trtb.check_engine_metadata(dict(LOCAL), LOCAL, bundle="/b") == []  # identical: accepted, no note
    with pytest.raises(BackendError):
        trtb.check_engine_metadata({k: v for k, v in LOCAL.items() if k != field}, LOCAL, bundle="/b")


def test_another_gpu_of_the_same_compute_capability_runs_with_a_note():
    """H100 PCIe and H100 SXM (both sm 9.0) run each other's engines: a note, not a refusal."""
    here = {"tensorrt": "10.13.0", "gpu": "NVIDIA H100 PCIe", "compute_capability": "9.0"}
    notes = trtb.check_engine_metadata({**here, "gpu": "NVIDIA H100 80GB HBM3"}, here, bundle="/b", precision="fp16")
    assert len(notes) == 1 and "H100 80GB HBM3" in notes[0] and "same compute capability" in notes[0]
    with pytest.raises(BackendError):  # the compute capability still decides
        trtb.check_engine_metadata({**here, "gpu": "NVIDIA A100", "compute_capability": "8.0"}, here, bundle="/b")


@pytest.mark.parametrize("built,local,compatible,ok", [
    ("10.3.0", "10.3.0", False, True),
    ("10.3.0", "10.7.0", False, False),   # a plan loads only on the TensorRT that built it ...
    ("10.3.0", "10.7.0", True, True),     # ... unless version-compatible: then on a later release of the major
    ("10.7.0", "10.3.0", True, False),    # never on an earlier one
    ("10.3.0", "11.1.0", True, False),    # nor across majors
])
def test_version_compatible_engines_load_on_later_releases_of_the_same_major(built, local, compatible, ok):
    here = {**LOCAL, "tensorrt": local}
    recorded = {**LOCAL, "tensorrt": built, "version_compatible": compatible}
    if ok:
        assert trtb.check_engine_metadata(recorded, here, bundle="/b") == []
    else:
        with pytest.raises(BackendError, match=f"built for TensorRT {built}"):
            trtb.check_engine_metadata(recorded, here, bundle="/b")


def test_tensorrt_backend_refuses_a_foreign_engine(tmp_path):
    folder = write_tiny_bundle(tmp_path / "b")
    manifest = json.loads((folder / mf.MANIFEST).read_text())
    source = manifest["graphs"][mf.SKETCH_ENCODER]["fp32"]["file"]
    manifest["engines"] = {**LOCAL, "tensorrt": "10.7.0",
                           "graphs": {mf.SKETCH_ENCODER: {"fp32": {"file": "e.engine", "onnx": source}}}}
    (folder / mf.MANIFEST).write_text(json.dumps(manifest))
    b = Bundle.load(folder)
    backend = object.__new__(trtb.TensorRTBackend)  # no GPU here: only the metadata path runs
    backend.local, backend.notes, backend._compatible = dict(LOCAL), [], set()
    with pytest.raises(BackendError) as info:
        backend.artifact(b, mf.SKETCH_ENCODER, "fp32")
    assert "10.7.0" in str(info.value) and "dcssa-export engines" in info.value.hint
    with pytest.raises(BackendError) as info:
        backend.artifact(b, mf.PHOTO_ENCODER, "fp32")
    assert "no TensorRT engine" in info.value.message
    with pytest.raises(BackendError) as info:
        backend.load(folder / source)
    assert "not ONNX graphs" in info.value.message
    hand = {"engines": {"graphs": {"sketch_encoder": {"int8": {"file": "e.engine", "onnx": "se.onnx"}}}}}
    assert trtb.find_engine(hand, "se.onnx")[:2] == ("sketch_encoder", "int8")


def test_buffer_plan_by_hand():
    f32, f16 = np.dtype(np.float32), np.dtype(np.float16)
    tensors = {
        "images": (True, f32, (-1, 3, 299, 299)),
        "past_keys": (True, f32, (-1, 2048)),
        "scale": (True, f16, (3,)),
        "features": (False, f32, (-1, 2048)),
    }
    plan = trtb.plan_buffers(tensors, {"images": (8, 3, 299, 299), "past_keys": (256, 2048)}, {"features": (8, 2048)})
    assert plan["images"].nbytes == 8582656  # 8 * 3 * 299 * 299 * 4 = 8582592 bytes, up to 33526 * 256
    assert plan["past_keys"].nbytes == 256 * 2048 * 4
    assert plan["scale"].nbytes == 256  # 6 bytes, rounded up to the 256-byte alignment
    assert plan["features"].max_shape == (8, 2048) and not plan["features"].is_input
    with pytest.raises(BackendError):
        trtb.plan_buffers({"x": (True, f32, (-1, 4))}, {}, {})
    with pytest.raises(BackendError) as info:
        trtb.check_shape("images", (9, 3, 299, 299), (1, 3, 299, 299), (8, 3, 299, 299), "sketch_encoder")
    assert "outside the engine's profile" in info.value.message
    trtb.check_shape("past_keys", (0, 2048), (0, 2048), (256, 2048), "head")


def test_backend_selection_without_tensorrt(monkeypatch):
    assert "tensorrt" in backend_names()
    if NO_GPU:
        assert "tensorrt" not in available_backends()
        with pytest.raises(BackendError) as info:
            get_backend("tensorrt")
        assert info.value.hint
        assert get_backend("auto").name != "tensorrt"
    with pytest.raises(BackendError) as info:
        get_backend("tensorrt-ish")
    assert "tensorrt" in info.value.hint

    class Fake(trtb.TensorRTBackend):
        def __init__(self, **_kw):
            self.local = dict(LOCAL)

    entry = backends.BackendEntry(Fake, lambda threads, cache_dir: Fake(), lambda: True)
    monkeypatch.setitem(backends.REGISTRY, "tensorrt", entry)
    assert isinstance(get_backend("auto"), Fake)  # auto prefers the native runner when it can run


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a GPU: the no-driver path cannot be observed")
def test_cuda_without_a_driver_fails_with_the_reason():
    from dcssa.runtime.backends.cuda_memory import cuda_api

    with pytest.raises(BackendError) as info:
        cuda_api()
    assert "cuda" in info.value.message.lower() and info.value.hint
