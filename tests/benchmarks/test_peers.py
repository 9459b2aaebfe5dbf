"""The PyTorch peers of `dcssa-bench run` (benchmarks/torch_peers.py): same outputs as eager fp32 within
each peer's tolerance, compile time reported apart, peers a CPU cannot run left out with the reason.

No timing is asserted: the numbers are the benchmark's business, the tests check what is measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from dcssa.benchmarks import torch_peers as tp  # noqa: E402
from dcssa.benchmarks.cli import main as bench  # noqa: E402
from dcssa.runtime import Bundle, Gallery  # noqa: E402
from dcssa.runtime.data.synthetic import random_sketch  # noqa: E402

STROKES = 3
NO_BF16 = "this CPU has no native bf16 (avx512_bf16 / amx_bf16): the torch-bf16 peer is left out here"
#: fp32 peers do the same arithmetic in another order (NHWC kernels, fused inductor kernels)
FP32_EMBEDDING_ATOL = 1e-4
FP32_SCORE_ATOL = 1e-3  # |score diff| <= ||embedding diff||_2 for unit photos; near-ties may swap places
#: bf16 keeps 8 bits of mantissa through a deep random net: the embedding turns a little, the ranking mostly holds
BF16_MIN_COSINE = 0.95
BF16_MIN_TOP10_OVERLAP = 0.7


def _sketch() -> list[np.ndarray]:
    return random_sketch(np.random.default_rng(0), STROKES)


def _build(bundle_path: Path, gallery_path: Path, ckpt: Path, peers: tuple[str, ...]):
    b = Bundle.load(bundle_path)
    g = Gallery.load(gallery_path, b)
    sketch = _sketch()
    found = tp.torch_methods(b, ckpt, g, sketch, None, peers)
    photos = torch.from_numpy(np.array(g.embeddings, np.float32))
    return found, sketch, photos


def _run(found, sketch) -> dict[str, list]:
    out = {}
    for m in found.methods:
        m.start()
        out[m.name] = [m.stroke(t) for t in range(len(sketch))]
    return out


def _assert_fp32_agrees(ref: list, got: list, photos) -> None:
    for (e_ref, k_ref), (e, k) in zip(ref, got):
        assert e.dtype == torch.float32 and e.shape == e_ref.shape
        assert float((e - e_ref).abs().max()) <= FP32_EMBEDDING_ATOL
        # the peer's top-10 is a top-10 of the reference scores (a near-tie may swap two places)
        np.testing.assert_allclose((photos @ e_ref)[k.indices].numpy(), k_ref.values.numpy(), atol=FP32_SCORE_ATOL)


def _assert_bf16_agrees(ref: list, got: list) -> None:
    for (e_ref, k_ref), (e, k) in zip(ref, got):
        assert e.dtype == torch.float32  # cast back for the search
        assert float(torch.nn.functional.cosine_similarity(e, e_ref, dim=0)) >= BF16_MIN_COSINE
        overlap = len(set(k.indices.tolist()) & set(k_ref.indices.tolist())) / len(k_ref.indices)
        assert overlap >= BF16_MIN_TOP10_OVERLAP


@pytest.fixture(scope="module")
def dcssa_run(bundle2: Path, gallery2: Path, demo_ckpt: Path):
    """DC-SSA's fast peers, built and run once over the sketch."""
    peers = ("eager", "channels-last", *(("bf16",) if tp.native_bf16() else ()))
    found, sketch, photos = _build(bundle2, gallery2, demo_ckpt, peers)
    return found, _run(found, sketch), photos


def test_dcssa_channels_last_matches_eager(dcssa_run):
    found, out, photos = dcssa_run
    assert [m.name for m in found.methods][:3] == ["naive", "torch-eager", "torch-channels-last"]
    assert found.skipped == {}
    _assert_fp32_agrees(out["torch-eager"], out["torch-channels-last"], photos)
    # naive recomputes every prefix: the last stroke's result is torch-eager's
    _assert_fp32_agrees(out["torch-eager"], out["naive"], photos)
    info = found.peers["torch-channels-last"]
    assert "channels_last" in info["setup"] and info["first_call_ms"] > 0


@pytest.mark.skipif(not tp.native_bf16(), reason=NO_BF16)
def test_dcssa_bf16_close_to_eager(dcssa_run):
    found, out, _ = dcssa_run
    _assert_bf16_agrees(out["torch-eager"], out["torch-bf16"])
    setup = found.peers["torch-bf16"]["setup"]
    assert "bfloat16" in setup and "channels_last" in setup
    assert any(f in setup for f in tp.NATIVE_BF16_FLAGS)


@pytest.mark.slow  # inductor compiles Inception-v3: minutes on 2 cores
def test_dcssa_compile_matches_eager(bundle2: Path, gallery2: Path, demo_ckpt: Path):
    found, sketch, photos = _build(bundle2, gallery2, demo_ckpt, ("eager", "compile"))
    if "torch-compile" in found.skipped:
        pytest.skip(f"torch.compile cannot run here: {found.skipped['torch-compile']}")
    out = _run(found, sketch)
    _assert_fp32_agrees(out["torch-eager"], out["torch-compile"], photos)
    info = found.peers["torch-compile"]
    assert info["first_call_ms"] > 0 and "first compile" in info["inductor_cache"]


@pytest.fixture(scope="module")
def arnet_run(arnet_bundle: Path, arnet_gallery: Path, arnet_ckpt: Path):
    found, sketch, photos = _build(arnet_bundle, arnet_gallery, arnet_ckpt, tp.PEERS)
    return found, _run(found, sketch), photos


def test_arnet_peers_match_eager_and_channels_last_is_left_out(arnet_run):
    found, out, photos = arnet_run
    # a ViT has no memory format to change: the peer is not measured, and the report says why
    assert "torch-channels-last" not in out and "not applicable" in found.skipped["torch-channels-last"]
    if "torch-compile" in found.skipped:
        pytest.skip(f"torch.compile cannot run here: {found.skipped['torch-compile']}")
    _assert_fp32_agrees(out["torch-eager"], out["torch-compile"], photos)
    _assert_fp32_agrees(out["torch-eager"], out["naive"], photos)
    if tp.native_bf16():
        _assert_bf16_agrees(out["torch-eager"], out["torch-bf16"])
        assert "channels_last" not in found.peers["torch-bf16"]["setup"]
    else:
        assert "no native bf16" in found.skipped["torch-bf16"]


def test_agreement_measures_what_it_says():
    photos = torch.eye(4)
    e = torch.tensor([0.9, 0.1, 0.0, 0.0])
    f = torch.tensor([0.1, 0.9, 0.0, 0.0])
    top = lambda v: torch.topk(photos @ v, 2)  # noqa: E731
    same = tp.agreement([(e, top(e))], [(e, top(e))])
    assert same == {"max_abs_embedding_diff": 0.0, "top1_same": 1.0, "top10_overlap": 1.0}
    moved = tp.agreement([(e, top(e)), (e, top(e))], [(e, top(e)), (f, top(f))])
    assert moved["top1_same"] == 0.5 and moved["top10_overlap"] == 1.0  # the same two, swapped
    assert np.isclose(moved["max_abs_embedding_diff"], 0.8)


def test_peers_a_cpu_cannot_run_are_left_out_with_the_reason(arnet_bundle, arnet_gallery, arnet_ckpt, monkeypatch):
    def no_compiler(model, *a, **k):
        def call(*args, **kwargs):
            raise RuntimeError("Compiler: g++ is not found")
        return call

    monkeypatch.setattr(tp, "native_bf16", lambda: [])
    monkeypatch.setattr(tp, "cxx_compiler", lambda: None)
    monkeypatch.setattr(tp.torch, "compile", no_compiler)
    found, _, _ = _build(arnet_bundle, arnet_gallery, arnet_ckpt, tp.PEERS)
    assert [m.name for m in found.methods] == ["naive", "torch-eager"]
    assert set(found.skipped) == {"torch-channels-last", "torch-bf16", "torch-compile"}
    assert "no native bf16" in found.skipped["torch-bf16"] and "avx512_bf16" in found.skipped["torch-bf16"]
    assert found.skipped["torch-compile"].startswith("RuntimeError: no C++ compiler on PATH")
    assert "g++ is not found" in found.skipped["torch-compile"]
    assert set(found.peers) == {"torch-eager"}


def test_bench_reports_compile_time_apart_and_the_best_peer(arnet_bundle, arnet_gallery, arnet_ckpt, tmp_path):
    out = tmp_path / "bench"
    res = CliRunner().invoke(bench, ["run", "--bundle", str(arnet_bundle), "--gallery", str(arnet_gallery),
                                     "--ckpt", str(arnet_ckpt), "--out", str(out), "--max-strokes", "2",
                                     "--repeats", "1", "--backend", "ort-cpu", "--search-sizes", "",
                                     "--peers", "eager,compile,channels-last", "--quiet"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "bench.json").read_text())
    if "torch-compile" in rep["skipped"]:
        pytest.skip(f"torch.compile cannot run here: {rep['skipped']['torch-compile']}")
    ps, peers = rep["per_stroke"], rep["torch_peers"]
    assert set(ps) == {"naive", "torch-eager", "torch-compile", "runtime/ort-cpu/fp32"}
    assert "not applicable" in rep["skipped"]["torch-channels-last"]
    # the compile is the first call, made before the warm-up: a field of its own, not a per-stroke time
    assert peers["torch-compile"]["first_call_ms"] > 0 and "inductor_cache" in peers["torch-compile"]
    assert len(ps["torch-compile"]["median_ms"]) == 2
    assert peers["torch-eager"]["vs_torch_eager"] is None
    assert peers["torch-compile"]["vs_torch_eager"]["max_abs_embedding_diff"] <= FP32_EMBEDDING_ATOL
    # the best peer is the faster of the two over the whole sketch; the runtime is compared with it
    best = rep["best_torch_peer"]["method"]
    assert best == min(("torch-eager", "torch-compile"), key=lambda n: ps[n]["total_median_ms"])
    rt_name = "runtime/ort-cpu/fp32"
    ratio = rep["ratios"]["vs best peer"][rt_name]["whole_sketch"]
    assert np.isclose(ratio, ps[best]["total_median_ms"] / ps[rt_name]["total_median_ms"], rtol=0.01)
    assert list(rep["ratios"]) == ["vs best peer", "vs torch-eager", "vs naive"]
    assert f"the best PyTorch peer ({best})" in rep["summary"][0] and "naive" in rep["summary"][0]
    md = (out / "bench.md").read_text()
    assert "first call ms (compile included)" in md and f"Speed-up vs best peer ({best})" in md
    assert f"Best PyTorch peer: **{best}**" in md and "`torch-channels-last` left out: not applicable" in md


def test_bench_peers_option_is_checked(bundle2: Path, gallery2: Path, tmp_path: Path):
    from dcssa.benchmarks.run import PEERS as BENCH_PEERS  # what --peers accepts
    from dcssa.benchmarks.stroke_latency import PEERS

    assert BENCH_PEERS == PEERS == tp.PEERS
    res = CliRunner().invoke(bench, ["run", "--bundle", str(bundle2), "--gallery", str(gallery2),
                                     "--out", str(tmp_path / "b"), "--peers", "eager,jit"])
    assert res.exit_code == 2 and "jit" in res.output and "channels-last" in res.output
    assert not (tmp_path / "b").exists()
