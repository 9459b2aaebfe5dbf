"""Smoke test of the benchmark harness (2 strokes, 2 repeats): outputs and their arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from dcssa.runtime.cli import main as rt


def test_bench_writes_report_tables_and_plots(bundle2: Path, gallery2: Path, demo_ckpt: Path, tmp_path: Path):
    out = tmp_path / "bench"
    res = CliRunner().invoke(rt, ["bench", "--bundle", str(bundle2), "--gallery", str(gallery2), "--out", str(out),
                                  "--max-strokes", "2", "--repeats", "2", "--ckpt", str(demo_ckpt),
                                  "--backend", "ort-cpu", "--search-sizes", "500,2000"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "bench.json").read_text())
    assert rep["schema"] == "dcssa-bench/1"
    assert set(rep["per_stroke"]) == {"naive", "torch-eager", "runtime/ort-cpu/fp32"}
    for v in rep["per_stroke"].values():
        assert len(v["median_ms"]) == 2 and all(x > 0 for x in v["median_ms"])
        assert all(p >= m for p, m in zip(v["p90_ms"], v["median_ms"]))
    # ratios are the quotients of the medians they are said to compare
    ps = rep["per_stroke"]
    r = rep["ratios"]["vs torch-eager"]["runtime/ort-cpu/fp32"]
    assert np.isclose(r["stroke_1"], ps["torch-eager"]["median_ms"][0] / ps["runtime/ort-cpu/fp32"]["median_ms"][0], rtol=0.01)
    assert set(rep["phases"]["runtime/ort-cpu/fp32"]) == {"rasterise", "preprocess", "encode", "head", "search", "total"}
    assert rep["undo_ms"]["runtime/ort-cpu/fp32"] >= 0
    assert rep["peak_rss_mb"]["runtime/ort-cpu/fp32"] > 50
    assert [s["size"] for s in rep["search"]] == [500, 2000]
    md = (out / "bench.md").read_text()
    assert "Per-stroke latency" in md and "runtime/ort-cpu/fp32" in md and "Speed-up vs naive" in md
    for png in ("latency_per_stroke.png", "search_scaling.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 300


def test_search_scaling_matches_brute_force():
    from dcssa.benchmarks.search_scaling import search_scaling
    from dcssa.runtime.gallery import Gallery

    rows = search_scaling((300,), dim=16, k=5, repeats=1)
    assert rows[0]["size"] == 300 and rows[0]["ours_ms"] > 0
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    q = rng.normal(size=16).astype(np.float32)
    idx, _ = Gallery(None, emb, [str(i) for i in range(300)], {}).search(q, 5)
    assert list(idx) == list(np.argsort(-(emb.astype(np.float64) @ q))[:5])
