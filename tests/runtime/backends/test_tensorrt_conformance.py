"""Every TensorRT name our code uses exists in the real APIs: TensorRT 10.13 (its type stubs) and 11.4
(the names compiled into its bindings), per version guard, with no GPU.

Our builder (``build_engines``) and runner (``TensorRTBackend``: the K/V head, the photo encoder's
per-shape memory, a version-compatible plan) run on the recording stand-in set to each TensorRT
generation; what they touched must exist in the API of that generation. A static scan of the source
catches ``trt.X.Y`` names on paths the runs do not take. The stand-in itself is checked against the
stubs, so it cannot offer a method TensorRT lacks. The checks are shown to fail on removed APIs
(``execute_async_v2``; ``BuilderFlag.FP16`` on 11).
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import numpy as np
import pytest
import trt_api
from fake_tensorrt import (
    FakeConfig,
    FakeContext,
    FakeEngine,
    FakeNetwork,
    FakeProfile,
    FakeTensor,
    FakeTensorRT,
    FakeTimingCache,
    engine_blob,
    head_engine,
)
from tiny_bundle import write_tiny_bundle

from dcssa.calibration import engines as eng
from dcssa.runtime.backends import cuda_memory
from dcssa.runtime.backends import tensorrt as trtb
from dcssa.runtime.contract import manifest as mf

ROOT = Path(__file__).resolve().parents[3]
SOURCES = [ROOT / "runtime" / "backends" / "tensorrt.py", ROOT / "calibration" / "engines.py"]
#: names missing from TensorRT 11 that our code uses behind a version guard (exercised below)
GUARDED_BEFORE_11 = {"BuilderFlag.FP16", "BuilderFlag.INT8", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH"}


def _surface(kind: str):
    try:
        if kind == "stubs":
            return trt_api.stub_surface(trt_api.wheel(*trt_api.STUBS))
        return trt_api.binary_surface(trt_api.wheel(*trt_api.BINDINGS))
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"the real TensorRT API surface cannot be had here: {exc}")


@pytest.fixture(scope="module")
def stubs():
    return _surface("stubs")


@pytest.fixture(scope="module")
def trt11():
    return _surface("bindings")


def _exercise(monkeypatch, tmp_path, **fake) -> set[tuple[str, str]]:
    """Run our builder and runner on a recorded stand-in; return every (owner, name) they touched."""
    trt = FakeTensorRT(**fake)
    proxy, log = trt_api.recorder(trt)
    monkeypatch.setitem(sys.modules, "tensorrt", proxy)
    monkeypatch.setattr(cuda_memory, "cuda_api", lambda: trt.cuda)
    folder = write_tiny_bundle(tmp_path / "b")
    for prec in ("fp32",):
        eng.build_engines(folder, [prec], max_batch=2, max_strokes=8, verbose=True, version_compatible=True)
    builder = eng._EngineBuilder(proxy, None, {}, 64, tmp_path, "87")
    for prec in ("fp16", "int8"):
        builder._config(prec)
    backend = trtb.TensorRTBackend()
    backend._compatible.add(tmp_path / "head.engine")
    (tmp_path / "head.engine").write_bytes(head_engine(4, 6))
    head = backend.load(tmp_path / "head.engine", mf.graph_spec(mf.HEAD_STEP, 4, 4))
    head.run({mf.FEATURE: np.ones((1, 4), np.float32), mf.PAST_KEYS: np.zeros((0, 4), np.float32),
              mf.PAST_VALUES: np.zeros((0, 4), np.float32)})
    head.close()
    (tmp_path / "photo.engine").write_bytes(engine_blob("encoder", [
        {"name": "images", "input": True, "shape": [-1, 3, -1, -1], "profile": [[1, 3, 8, 8]] * 2 + [[2, 3, 16, 16]]},
        {"name": "embeddings", "input": False, "shape": [1, 4]}]))
    photo = backend.load(tmp_path / "photo.engine", mf.GraphSpec(mf.PHOTO_ENCODER, {"images": ["N", 3, "H", "W"]},
                                                                {"embeddings": ["N", 4]}))
    photo.run({"images": np.zeros((1, 3, 8, 8), np.float32)})
    photo.close()
    return log


def _dotted(used: set[tuple[str, str]]) -> set[str]:
    return {f"{o}.{n}" for o, n in used}


@pytest.mark.parametrize("version,typed,explicit", [("10.3.0", True, True), ("10.13.0", True, True),
                                                    ("9.3.0", True, True), ("8.6.1", False, True)])
def test_every_name_used_up_to_10_is_in_the_10_13_stubs(monkeypatch, tmp_path, stubs, version, typed, explicit):
    used = _exercise(monkeypatch, tmp_path, version=version, strongly_typed=typed, explicit_batch=explicit)
    assert ("IExecutionContext", "execute_async_v3") in used and ("Builder", "build_serialized_network") in used
    assert trt_api.missing(used, stubs) == []


@pytest.mark.parametrize("typed", [True, False])  # 11.4 has the deprecated STRONGLY_TYPED; a later 11.x may not
def test_every_name_used_on_11_is_compiled_into_the_11_4_bindings(monkeypatch, tmp_path, trt11, typed):
    used = _exercise(monkeypatch, tmp_path, version="11.4.0", strongly_typed=typed, explicit_batch=False)
    assert trt_api.missing(used, trt11) == []
    assert not (_dotted(used) & GUARDED_BEFORE_11)  # the guards hold: nothing 11 removed is touched


def test_the_surfaces_are_the_real_ones_and_the_check_fails_on_removed_apis(stubs, trt11):
    assert stubs.has("IExecutionContext", "execute_async_v3") and trt11.has("IExecutionContext", "execute_async_v3")
    assert stubs.has("Logger", "WARNING") and stubs.has("Runtime", "engine_host_code_allowed")  # via base classes
    removed_in_10 = {("IExecutionContext", "execute_async_v2"), ("ICudaEngine", "get_binding_index")}
    assert trt_api.missing(removed_in_10, stubs) == ["ICudaEngine.get_binding_index", "IExecutionContext.execute_async_v2"]
    assert trt_api.missing(removed_in_10, trt11) == ["ICudaEngine.get_binding_index", "IExecutionContext.execute_async_v2"]
    fp16 = {("BuilderFlag", "FP16"), ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH")}
    assert trt_api.missing(fp16, stubs) == []  # still in 10.x (deprecated there) ...
    assert trt_api.missing(fp16, trt11) == ["BuilderFlag.FP16", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH"]
    assert trt11.has("NetworkDefinitionCreationFlag", "STRONGLY_TYPED") and trt11.has("BuilderFlag", "VERSION_COMPATIBLE")


def _static_uses(path: Path) -> set[str]:
    """``trt.X`` / ``trt.X.Y`` chains in a source file (``trt`` as a name or an attribute: ``self.trt``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        chain = []
        while isinstance(node, ast.Attribute):
            chain.append(node.attr)
            node = node.value
        root = node.id if isinstance(node, ast.Name) else None
        if chain and (root == "trt" or (chain[-1] == "trt" and isinstance(node, ast.Name))):
            names = list(reversed(chain))
            names = names[1:] if names[0] == "trt" else names
            if names:
                out.add(".".join([trt_api.MODULE, *names][-2:]) if len(names) == 1 else ".".join(names[:2]))
    return out


def test_every_trt_name_in_the_source_is_in_10_13_and_in_11_4_unless_guarded(stubs, trt11):
    used = set().union(*(_static_uses(p) for p in SOURCES))
    assert {"BuilderFlag.FP16", "tensorrt.Runtime", "ExecutionContextAllocationStrategy.USER_MANAGED"} <= used
    pairs = {tuple(u.split(".", 1)) for u in used}
    assert trt_api.missing(pairs, stubs) == []
    # by name only on 11.4: INT8 survives there as DataType.INT8, and EXPLICIT_BATCH is read through a local
    # (``kinds``); the recorded 11.x runs above prove neither is touched on 11
    assert trt_api.missing(pairs, trt11) == ["BuilderFlag.FP16"]


#: each stand-in class and the TensorRT class it plays; members that are test helpers, not API
PLAYS = {FakeEngine: "ICudaEngine", FakeContext: "IExecutionContext", FakeConfig: "IBuilderConfig",
         FakeTimingCache: "ITimingCache", FakeNetwork: "INetworkDefinition", FakeProfile: "IOptimizationProfile",
         FakeTensor: "ITensor"}
HELPERS = {"read_inputs", "doc", "inputs", "trt", "kind", "tensors", "shapes", "addresses", "executions",
           "refuse_shapes", "refuse_addresses", "fail_execution", "strategy", "device_memory", "engine", "blob",
           "flags", "cache_calls", "cache", "profiles", "pool"}


def test_the_stand_in_offers_nothing_tensorrt_lacks(stubs):
    for cls, real in PLAYS.items():
        public = {n for n, _ in inspect.getmembers(cls) if not n.startswith("_")} | set(
            inspect.signature(cls.__init__).parameters) - {"self"}
        for name in sorted(public - HELPERS):
            assert stubs.has(real, name), f"{cls.__name__}.{name}: {real} has no {name} in TensorRT 10.13"
    trt = FakeTensorRT()
    for enum in ("NetworkDefinitionCreationFlag", "TensorIOMode", "DataType", "BuilderFlag", "MemoryPoolType",
                 "ExecutionContextAllocationStrategy"):
        for member in vars(getattr(trt, enum)):
            assert stubs.has(enum, member), f"{enum}.{member} is not in TensorRT 10.13"
    for name in ("Runtime", "Builder", "OnnxParser", "Logger", "nptype"):
        assert stubs.has(trt_api.MODULE, name)
    for cls, real in ((trt.Runtime, "Runtime"), (trt.Builder, "Builder"), (trt.OnnxParser, "OnnxParser")):
        for name in (n for n in vars(cls) if not n.startswith("_")):
            assert stubs.has(real, name), f"{real}.{name} is not in TensorRT 10.13"
    assert stubs.has("Logger", "min_severity") and stubs.has("Logger", "VERBOSE")
