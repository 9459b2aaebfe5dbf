"""Smoke test of the benchmark harness (2 strokes, 2 repeats): outputs and their arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dcssa.benchmarks.cli import main as bench


def test_bench_writes_report_tables_and_plots(bundle2: Path, gallery2: Path, demo_ckpt: Path, tmp_path: Path):
    out = tmp_path / "bench"
    # no --ckpt: the checkpoint the manifest names is found beside the bundle
    beside = bundle2.parent / demo_ckpt.name
    beside.symlink_to(demo_ckpt)
    try:
        res = CliRunner().invoke(bench, ["run", "--bundle", str(bundle2), "--gallery", str(gallery2), "--out", str(out),
                                         "--max-strokes", "2", "--repeats", "2",
                                         "--backend", "ort-cpu", "--search-sizes", "500,2000", "--peers", "eager"])
    finally:
        beside.unlink()
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "bench.json").read_text())
    assert rep["config"]["checkpoint"] == [str(beside)] and "beside the bundle" in rep["config"]["checkpoint_found"]
    assert rep["schema"] == "dcssa-bench/1"
    assert set(rep["per_stroke"]) == {"naive", "torch-eager", "runtime/ort-cpu/fp32"}
    assert rep["best_torch_peer"]["method"] == "torch-eager" and set(rep["torch_peers"]) == {"torch-eager"}
    for v in rep["per_stroke"].values():
        assert len(v["median_ms"]) == 2 and all(x > 0 for x in v["median_ms"])
        assert all(p >= m for p, m in zip(v["p90_ms"], v["median_ms"]))
    # ratios are the quotients of the medians they are said to compare
    ps = rep["per_stroke"]
    r = rep["ratios"]["vs torch-eager"]["runtime/ort-cpu/fp32"]
    assert np.isclose(r["stroke_1"], ps["torch-eager"]["median_ms"][0] / ps["runtime/ort-cpu/fp32"]["median_ms"][0], rtol=0.01)
    assert set(rep["phases"]["runtime/ort-cpu/fp32"]) == {"rasterise", "preprocess", "encode", "head", "search", "total"}
    assert rep["undo_ms"]["runtime/ort-cpu/fp32"] >= 0
    cold = rep["cold_first_stroke_ms"]["runtime/ort-cpu/fp32"]
    assert np.isclose(cold["total"], cold["load"] + cold["first_stroke"], rtol=0.05) and cold["load"] > 0
    # the child loaded ~220 MB of fp32 graphs; far below what this test process (torch, models) holds
    assert 150 < rep["peak_rss_mb"]["runtime/ort-cpu/fp32"] < 2048
    whole = ps["torch-eager"]["total_median_ms"] / ps["runtime/ort-cpu/fp32"]["total_median_ms"]
    said = f"{whole:.2f}x faster than torch-eager" if whole >= 1 else f"{1 / whole:.2f}x SLOWER than torch-eager"
    said = said.replace("torch-eager", "the best PyTorch peer (torch-eager)")
    assert rep["summary"][0].startswith(f"runtime/ort-cpu/fp32: {said} over the whole sketch"), rep["summary"]
    assert [s["size"] for s in rep["search"]] == [500, 2000]
    md = (out / "bench.md").read_text()
    assert "Per-stroke latency" in md and "runtime/ort-cpu/fp32" in md and "Speed-up vs naive" in md
    for png in ("latency_per_stroke.png", "search_scaling.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 300


def test_search_scaling_matches_brute_force():
    from dcssa.benchmarks.search_scaling import search_scaling
    from dcssa.runtime.search.gallery import Gallery

    rows = search_scaling((300,), dim=16, k=5, repeats=1)
    assert rows[0]["size"] == 300 and rows[0]["ours_ms"] > 0
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    q = rng.normal(size=16).astype(np.float32)
    idx, _ = Gallery(None, emb, [str(i) for i in range(300)], {}).search(q, 5)
    assert list(idx) == list(np.argsort(-(emb.astype(np.float64) @ q))[:5])


def test_find_source_checkpoint_checks_name_and_hash(tmp_path: Path):
    from types import SimpleNamespace

    from dcssa.benchmarks.run import find_source_checkpoint
    from dcssa.runtime.contract.bundle import sha256_file

    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"weights" * 100)
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    manifest = {"source": {"checkpoints": [{"name": "model.pth", "sha256": sha256_file(ckpt), "bytes": 700}]}}
    bundle = SimpleNamespace(manifest=manifest, path=bundle_dir)
    assert find_source_checkpoint(bundle) == [ckpt]
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.pth").write_bytes(b"WEIGHTS" * 100)  # same name and size, other content: not it
    assert find_source_checkpoint(bundle, where=[other]) is None
    assert find_source_checkpoint(bundle, where=[other, tmp_path]) == [ckpt]
    assert find_source_checkpoint(SimpleNamespace(manifest={}, path=bundle_dir)) is None


def test_peak_rss_is_the_childs_own(bundle2: Path, gallery2: Path):
    """Linux carries a parent's ru_maxrss across fork + exec; the child must report its own peak."""
    import resource

    from dcssa.benchmarks.stroke_latency import peak_rss_mb
    from dcssa.runtime.data.synthetic import random_sketch

    ballast = np.ones(2 * 2**30 // 8)  # 2 GiB, touched: the parent's high-water mark is above it
    parent_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = peak_rss_mb(bundle2, gallery2, "ort-cpu", "fp32", random_sketch(np.random.default_rng(1), 2), None)
    del ballast
    assert parent_mb > 2048
    assert child_mb is not None and 150 < child_mb < parent_mb - 1024


def test_top_k_is_exact_with_ties_on_both_paths():
    from dcssa.runtime.search.gallery import SAMPLE_MIN, top_k

    rng = np.random.default_rng(7)
    for n in (1, 7, 1000, SAMPLE_MIN, 300_000):
        scores = rng.normal(size=n).astype(np.float32)
        scores[rng.integers(n, size=n // 3)] = np.float32(1.5)  # a block of ties near the top
        for k in (0, 1, 10, 100, n + 3):
            idx, got = top_k(scores, k)
            want = np.lexsort((np.arange(n), -scores))[: max(0, min(k, n))]  # score desc, then index
            assert list(idx) == list(want), (n, k)
            np.testing.assert_array_equal(got, scores[want])
    flat = np.zeros(200_000, np.float32)  # every photo ties: the threshold keeps them all, index order wins
    assert list(top_k(flat, 5)[0]) == [0, 1, 2, 3, 4]


def test_bench_refuses_an_existing_output_before_measuring(bundle2: Path, gallery2: Path, tmp_path: Path, monkeypatch):
    from dcssa.benchmarks import stroke_latency

    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    monkeypatch.setattr(stroke_latency, "measure", lambda *a, **k: pytest.fail("measured before refusing"))
    res = CliRunner().invoke(bench, ["run", "--bundle", str(bundle2), "--gallery", str(gallery2), "--out", str(out)])
    assert res.exit_code == 2
    assert str(out) in res.output and "--force" in res.output
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
