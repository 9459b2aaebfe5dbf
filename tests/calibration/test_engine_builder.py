"""``build_engines`` wiring against a recording stand-in of ``tensorrt`` (no GPU here).

Checked: the network creation flags per TensorRT generation (a network made with flags 0 is
implicit-batch, which TensorRT < 10's ONNX parser refuses), the timing cache (a cache TensorRT
refuses is replaced, not silently unused), and the verbose builder log. Nothing numeric.
"""

from __future__ import annotations

import json

import pytest
from fake_tensorrt import FakeCuda, FakeTensorRT
from tiny_bundle import write_tiny_bundle

from dcssa.calibration import engines as eng
from dcssa.runtime.backends import cuda_memory
from dcssa.runtime.contract import manifest as mf


@pytest.fixture
def fake(monkeypatch):
    def install(**kw) -> FakeTensorRT:
        trt = FakeTensorRT(**kw)
        monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
        monkeypatch.setattr(cuda_memory, "cuda_api", lambda: FakeCuda(gpu="Fake GPU", cc="8.7"))
        return trt

    return install


@pytest.mark.parametrize("generation,strongly_typed,explicit_batch,flags", [
    ("TensorRT 8.x", False, True, 1 << 0),   # EXPLICIT_BATCH (= 0 in TensorRT's enum)
    ("TensorRT 10/11", True, True, 1 << 1),  # STRONGLY_TYPED (= 1), EXPLICIT_BATCH ignored
    ("TensorRT 11, no EXPLICIT_BATCH", True, False, 1 << 1),
])
def test_every_network_is_parsed_with_an_explicit_batch(tmp_path, fake, generation, strongly_typed, explicit_batch,
                                                        flags):
    trt = fake(strongly_typed=strongly_typed, explicit_batch=explicit_batch)
    folder = write_tiny_bundle(tmp_path / "b")
    manifest = eng.build_engines(folder, ["fp32"], max_batch=2, max_strokes=8)
    assert [n["flags"] for n in trt.networks] == [flags] * len(manifest["graphs"]), generation
    assert all(n["parsed"] for n in trt.networks)
    built = manifest["engines"]["graphs"]
    assert set(built) == set(manifest["graphs"])
    assert {r["strongly_typed"] for per in built.values() for r in per.values()} == {strongly_typed}
    for per in built.values():
        assert (folder / per["fp32"]["file"]).is_file()
    # TensorRT < 9 takes precision from builder flags; strongly typed networks never get them
    assert all(c.flags == [] for c in trt.configs)


def test_an_implicit_batch_network_is_what_the_parser_refuses(fake):
    """The stand-in's parser refuses flags 0, as TensorRT 8's does: the test above can fail."""
    trt = fake(strongly_typed=False, explicit_batch=True)
    network = trt.Builder(None).create_network(0)
    parser = trt.OnnxParser(network, None)
    assert not parser.parse_from_file("x.onnx")
    assert "explicit batch" in parser.get_error(0)


def test_int8_without_strong_typing_sets_the_builder_flag(tmp_path, fake):
    trt = fake(strongly_typed=False, explicit_batch=True)
    builder = eng._EngineBuilder(trt, None, {}, 64, tmp_path, "87")
    assert builder.network_flags() == 1
    assert builder._config("int8").flags == ["INT8"]
    assert builder._config("fp16").flags == ["FP16"]


def test_a_timing_cache_tensorrt_refuses_is_replaced_and_said(tmp_path, fake):
    foreign = b"timings from another GPU"
    trt = fake(foreign_cache=foreign)
    folder = write_tiny_bundle(tmp_path / "b")
    (folder / eng.TIMING_CACHE).write_bytes(foreign)
    said: list[str] = []
    manifest = eng.build_engines(folder, ["fp32"], max_batch=2, max_strokes=8, say=said.append)
    assert any("another GPU or TensorRT build" in line for line in said)
    first = trt.configs[0]
    assert first.cache_calls == [foreign, b""]  # refused, then a fresh cache
    assert all(c.cache is not None for c in trt.configs)  # every build ran with a cache set
    assert manifest["engines"]["timing_cache"] == eng.TIMING_CACHE
    assert (folder / eng.TIMING_CACHE).read_bytes() != foreign
    on_disk = json.loads((folder / mf.MANIFEST).read_text())
    assert eng.TIMING_CACHE in on_disk["files"]


def test_a_matching_timing_cache_is_used_without_a_word(tmp_path, fake):
    trt = fake()
    folder = write_tiny_bundle(tmp_path / "b")
    (folder / eng.TIMING_CACHE).write_bytes(b"ours")
    said: list[str] = []
    eng.build_engines(folder, ["fp32"], max_batch=2, max_strokes=8, say=said.append)
    assert trt.configs[0].cache_calls == [b"ours"]
    assert not any("timing cache" in line for line in said)


@pytest.mark.parametrize("verbose,level", [(False, "WARNING"), (True, "VERBOSE")])
def test_builder_log_level(tmp_path, fake, verbose, level):
    trt = fake()
    eng.build_engines(write_tiny_bundle(tmp_path / "b"), ["fp32"], max_batch=1, max_strokes=4, verbose=verbose)
    assert [lg.level for lg in trt.loggers] == [level]
