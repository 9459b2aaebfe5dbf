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


#: (TensorRT version, has STRONGLY_TYPED, has EXPLICIT_BATCH, flags by hand, strongly typed?)
GENERATIONS = [
    ("8.6.1", False, True, 1 << 0, False),        # EXPLICIT_BATCH (= 0 in TensorRT's enum), weakly typed
    ("9.3.0", True, True, 1 << 1 | 1 << 0, True),  # STRONGLY_TYPED (= 1) AND EXPLICIT_BATCH: 9.x needs both
    ("10.3.0", True, True, 1 << 1, True),          # JetPack 6: EXPLICIT_BATCH deprecated, ignored: not set
    ("11.4.0", True, False, 1 << 1, True),         # 11.x: STRONGLY_TYPED deprecated, set while it exists
    ("11.9.0", False, False, 0, True),             # a later 11.x without the flag: still strongly typed
]


@pytest.mark.parametrize("version,strongly_typed,explicit_batch,flags,typed", GENERATIONS)
def test_every_network_is_parsed_with_an_explicit_batch(tmp_path, fake, version, strongly_typed, explicit_batch,
                                                        flags, typed):
    trt = fake(strongly_typed=strongly_typed, explicit_batch=explicit_batch, version=version)
    folder = write_tiny_bundle(tmp_path / "b")
    manifest = eng.build_engines(folder, ["fp32"], max_batch=2, max_strokes=8)
    assert [n["flags"] for n in trt.networks] == [flags] * len(manifest["graphs"]), version
    assert all(n["parsed"] for n in trt.networks)
    built = manifest["engines"]["graphs"]
    assert set(built) == set(manifest["graphs"])
    assert {r["strongly_typed"] for per in built.values() for r in per.values()} == {typed}
    for per in built.values():
        assert (folder / per["fp32"]["file"]).is_file()
    # TensorRT < 9 takes precision from builder flags; strongly typed networks never get them
    assert all(c.flags == [] for c in trt.configs)


def test_an_implicit_batch_network_is_what_the_parser_refuses(fake):
    """The stand-in's parser refuses flags 0, as TensorRT 8's does: the test above can fail."""
    trt = fake(strongly_typed=False, explicit_batch=True, version="8.6.1")
    network = trt.Builder(None).create_network(0)
    parser = trt.OnnxParser(network, None)
    assert not parser.parse_from_file("x.onnx")
    assert trt.OnnxParser(trt.Builder(None).create_network(1 << 0), None).parse_from_file("x.onnx")
    assert "explicit batch" in parser.get_error(0)


def test_int8_without_strong_typing_sets_the_builder_flag(tmp_path, fake):
    trt = fake(strongly_typed=False, explicit_batch=True, version="8.6.1")
    builder = eng._EngineBuilder(trt, None, {}, 64, tmp_path, "87")
    assert builder.network_flags() == 1
    assert builder._config("int8").flags == ["INT8"]
    assert builder._config("fp16").flags == ["FP16"]


@pytest.mark.parametrize("version", ["11.4.0", "11.9.0"])
def test_tensorrt_11_never_touches_the_removed_precision_flags(tmp_path, fake, version):
    """11.x has no BuilderFlag.FP16/INT8 (the stand-in lacks them too): fp16 and int8 builds must not ask."""
    trt = fake(strongly_typed=version == "11.4.0", explicit_batch=False, version=version)
    assert not hasattr(trt.BuilderFlag, "FP16")
    builder = eng._EngineBuilder(trt, None, {}, 64, tmp_path, "90")
    assert builder.strongly_typed
    for prec in ("fp16", "int8"):
        assert builder._config(prec).flags == []


def test_version_compatible_sets_the_flag_and_is_recorded(tmp_path, fake):
    trt = fake()
    manifest = eng.build_engines(write_tiny_bundle(tmp_path / "b"), ["fp32"], max_batch=2, max_strokes=8,
                                 version_compatible=True)
    assert all(c.flags == ["VERSION_COMPATIBLE"] for c in trt.configs) and trt.configs
    assert manifest["engines"]["version_compatible"] is True
    assert all(r["version_compatible"] for per in manifest["engines"]["graphs"].values() for r in per.values())


def test_no_timing_cache_from_tensorrt_builds_without_one_and_says_so(tmp_path, fake):
    trt = fake(timing_cache=False)
    said: list[str] = []
    manifest = eng.build_engines(write_tiny_bundle(tmp_path / "b"), ["fp32"], max_batch=2, max_strokes=8,
                                 say=said.append)
    assert any("could not create a timing cache" in line for line in said)
    assert all(c.cache is None and c.cache_calls == [] for c in trt.configs)
    assert manifest["engines"]["timing_cache"] is None and manifest["engines"]["graphs"]


def test_graphs_builds_only_those_and_keeps_the_engines_recorded_before(tmp_path, fake):
    fake()
    folder = write_tiny_bundle(tmp_path / "b")
    names = list(json.loads((folder / mf.MANIFEST).read_text())["graphs"])
    first = eng.build_engines(folder, ["fp32"], max_batch=2, max_strokes=8, graphs=[mf.SKETCH_ENCODER])
    assert list(first["engines"]["graphs"]) == [mf.SKETCH_ENCODER]
    rest = [n for n in names if n != mf.SKETCH_ENCODER]
    second = eng.build_engines(folder, ["fp32"], max_batch=2, max_strokes=8, graphs=rest)
    assert set(second["engines"]["graphs"]) == set(names)  # the first build's engine is still recorded
    assert second["engines"]["graphs"][mf.SKETCH_ENCODER] == first["engines"]["graphs"][mf.SKETCH_ENCODER]
    third = eng.build_engines(folder, ["fp32"], max_batch=4, max_strokes=8, graphs=rest)  # other limits
    assert set(third["engines"]["graphs"]) == set(rest)  # engines of another profile are not mixed in
    with pytest.raises(eng.EngineBuildError, match="no graph nope"):
        eng.build_engines(folder, ["fp32"], graphs=["nope"])


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
    assert [lg.min_severity for lg in trt.loggers] == [level]


def test_each_dynamic_input_gets_the_profile_of_the_serving_batch(tmp_path, fake):
    """By hand for the tiny bundle (D = 16) at --max-batch 4: batch 1..4 tuned at 4, caches 0..8."""
    trt = fake()
    eng.build_engines(write_tiny_bundle(tmp_path / "b"), ["fp32"], max_batch=4, max_strokes=8,
                      graphs=[mf.SKETCH_ENCODER, mf.HEAD_STEP])
    shapes = [p.shapes for c in trt.configs for p in c.profiles]
    assert shapes == [{"images": ((1, 3, 299, 299), (4, 3, 299, 299), (4, 3, 299, 299))},
                      {"past_keys": ((0, 16), (8, 16), (8, 16)), "past_values": ((0, 16), (8, 16), (8, 16))}]
