"""bench.md and the plots rendered from hand-made reports (no measuring): the text and files users read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from dcssa.benchmarks.markdown import markdown, summary_line
from dcssa.benchmarks.plots import plots
from dcssa.benchmarks.run import speedups

RT = "runtime/ort-cpu/fp32"


def _report(*, faiss: bool) -> dict:
    search = {"size": 10_000, "dim": 64, "k": 10, "ours_ms": 0.4321}
    if faiss:
        search |= {"faiss_flat_ip_ms": 0.05, "faiss_flat_ip_1thread_ms": 0.0304, "same_topk_as_faiss": True}
    return {
        "schema": "dcssa-bench/1",
        "env": {"cpu": "Test CPU", "isa": "avx2", "cores": 4, "threads": 2, "torch_threads": 2, "gpu": None,
                "onnxruntime": "1.0", "numpy": "2.0", "torch": "2.1", "openvino": None, "tensorrt": None,
                "faiss": None, "load_average_before": 0.5, "load_average_after": 0.75},
        "config": {"sketch": "generated", "strokes": 5, "repeats": 3, "bundle": "b", "gallery_size": 12,
                   "demo": True, "checkpoint": None, "checkpoint_found": None},
        "summary": ["a summary line"],
        "per_stroke": {
            "naive": {"median_ms": [10.0, 20.0, 30.0, 40.0, 50.0], "p90_ms": [12.0, 21.0, 33.0, 44.0, 55.5],
                      "total_median_ms": 150.0},
            RT: {"median_ms": [2.0, 2.1, 2.2, 2.3, 4.0], "p90_ms": [2.26, 2.2, 2.3, 2.4, 4.44], "total_median_ms": 12.6},
        },
        "skipped": {"torch-eager": "no torch here"},
        "phases": {RT: {"rasterise": 0.1, "preprocess": 0.2, "encode": 1.5, "head": 0.3, "search": 0.05, "total": 2.15}},
        "undo_ms": {RT: 0.0123},
        "cold_first_stroke_ms": {RT: {"load": 812.4, "first_stroke": 40.6, "total": 853.0}},
        "peak_rss_mb": {RT: 412.3},
        "ratios": {"vs naive": {RT: {"stroke_1": 5.0, "whole_sketch": 11.9}}},
        "search": [search],
    }


def test_markdown_renders_every_table_row():
    lines = markdown(_report(faiss=False)).splitlines()
    want = [
        "# dcssa-rt benchmark",
        "Sketch: generated, 5 strokes, 3 repeats (medians), gallery of 12 photos (DEMO bundle).",
        "- a summary line",
        "| method | stroke 1 | stroke 5 | whole sketch |",
        "| --- | --- | --- | --- |",
        "| naive | 10.0 [12.0] | 50.0 [55.5] | 150 |",
        "| runtime/ort-cpu/fp32 | 2.0 [2.3] | 4.0 [4.4] | 13 |",
        "- `torch-eager` skipped: no torch here",
        "## Speed-up vs naive (x, higher is better)",
        "| method | stroke_1 | whole_sketch |",
        "| runtime/ort-cpu/fp32 | 5.00 | 11.90 |",
        "| method | rasterise | preprocess | encode | head | search | total | undo | restart: load + first stroke | peak RSS MB |",
        "| runtime/ort-cpu/fp32 | 0.10 | 0.20 | 1.50 | 0.30 | 0.05 | 2.15 | 0.012 | 812 + 41 | 412 |",
        "| photos | dcssa-rt exact |",
        "| --- | --- |",
        "| 10,000 | 0.432 |",
        "FAISS not installed (`pip install faiss-cpu` to compare).",
    ]
    missing = [w for w in want if w not in lines]
    assert not missing, "\n".join(lines)
    # in this order: header, latency, ratios, phases, search
    assert [lines.index(w) for w in want] == sorted(lines.index(w) for w in want)
    assert "Machine: Test CPU (avx2), 4 cores, 2 threads (torch: 2); GPU: none." in lines[2]


def test_markdown_search_table_with_faiss_and_short_sketch():
    rep = _report(faiss=True)
    rep["config"]["strokes"] = 3  # stroke 5 is past the sketch: only stroke 1 is tabled
    lines = markdown(rep).splitlines()
    assert "| method | stroke 1 | whole sketch |" in lines
    assert "| photos | dcssa-rt exact | FAISS IndexFlatIP | FAISS, 1 thread | same top-10 |" in lines
    assert "| 10,000 | 0.432 | 0.050 | 0.030 | True |" in lines
    assert not any("FAISS not installed" in line for line in lines)


def test_speedups_and_summary_say_what_the_medians_say():
    per = _report(faiss=False)["per_stroke"]
    ratios = speedups(per, 5)
    assert ratios == {"vs naive": {RT: {"stroke_1": 5.0, "whole_sketch": 11.9}}}  # 10/2, 150/12.6 = 11.904...
    assert summary_line(RT, ratios, 5) == (f"{RT}: 11.90x faster than naive at whole sketch, "
                                           "11.90x faster than naive over the sketch")
    slow = {"vs torch-eager": {RT: {"whole_sketch": 0.5}}, "vs naive": {RT: {"stroke_5": 4.0, "whole_sketch": 2.0}}}
    assert summary_line(RT, slow, 5) == (f"{RT}: 2.00x SLOWER than torch-eager over the whole sketch; "
                                         "4.00x faster than naive at stroke 5, 2.00x faster than naive over the sketch")
    assert summary_line(RT, {}, 5) == f"{RT}: no PyTorch baseline measured"


@pytest.mark.parametrize("faiss", [False, True])
def test_plots_writes_two_pngs_without_pyplot(tmp_path: Path, faiss: bool):
    had_pyplot = "matplotlib.pyplot" in sys.modules
    names = plots(_report(faiss=faiss), tmp_path)
    assert names == ["latency_per_stroke.png", "search_scaling.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    # figsize x dpi 120: 7.5 x 4.8 and 6 x 4 inches
    for name, size in zip(names, [(900, 576), (720, 480)]):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size == size
            im.load()  # the whole image decodes
            assert len(im.getcolors(1 << 16) or range(1 << 16)) > 2  # something is drawn on it
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules


def test_plots_skip_the_search_plot_without_a_search_section(tmp_path: Path):
    rep = _report(faiss=False)
    rep["search"] = []
    assert plots(rep, tmp_path) == ["latency_per_stroke.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["latency_per_stroke.png"]


def _peer_report() -> dict:
    rep = _report(faiss=False)
    rep["per_stroke"]["torch-eager"] = {"median_ms": [8.0] * 5, "p90_ms": [9.0] * 5, "total_median_ms": 40.0}
    rep["per_stroke"]["torch-compile"] = {"median_ms": [5.0] * 5, "p90_ms": [6.0] * 5, "total_median_ms": 25.0}
    rep["skipped"] = {"torch-bf16": "this CPU has no native bf16"}
    rep["torch_peers"] = {
        "torch-eager": {"setup": "eager fp32", "first_call_ms": 120.4, "vs_torch_eager": None},
        "torch-compile": {"setup": "torch.compile(encoder)", "first_call_ms": 61234.5, "inductor_cache": "empty",
                          "vs_torch_eager": {"max_abs_embedding_diff": 3.1e-6, "top1_same": 1.0, "top10_overlap": 0.95}},
    }
    rep["best_torch_peer"] = {"method": "torch-compile", "total_median_ms": 25.0, "by": "whole-sketch median"}
    rep["ratios"] = speedups(rep["per_stroke"], 5, "torch-compile")
    rep["summary"] = [summary_line(RT, rep["ratios"], 5, "torch-compile")]
    return rep


def test_best_peer_ratios_summary_and_peer_table():
    rep = _peer_report()
    assert list(rep["ratios"]) == ["vs best peer", "vs torch-eager", "vs naive"]
    assert rep["ratios"]["vs best peer"][RT]["whole_sketch"] == round(25.0 / 12.6, 2)
    assert rep["ratios"]["vs best peer"]["torch-eager"]["whole_sketch"] == round(25.0 / 40.0, 2)
    assert "torch-compile" not in rep["ratios"]["vs best peer"]
    assert rep["summary"] == [f"{RT}: 1.98x faster than the best PyTorch peer (torch-compile) over the whole sketch; "
                              "11.90x faster than naive at whole sketch, 11.90x faster than naive over the sketch"]
    lines = markdown(rep).splitlines()
    want = [
        "## PyTorch peers",
        "| peer | setup | first call ms (compile included) | whole sketch ms | vs torch-eager: max abs embedding diff "
        "| top-1 same | top-10 overlap |",
        "| torch-eager | eager fp32 | 120 | 40 | (reference) |  |  |",
        "| **torch-compile** (best) | torch.compile(encoder) | 61234 | 25 | 3.10e-06 | 100% | 95% |",
        "- `torch-bf16` left out: this CPU has no native bf16",
        "## Speed-up vs best peer (torch-compile) (x, higher is better)",
        f"| {RT} | 2.50 | 1.98 |",
    ]
    missing = [w for w in want if w not in lines]
    assert not missing, "\n".join(lines)
    assert any(line.startswith("Best PyTorch peer: **torch-compile** (25 ms") for line in lines)


def test_latency_plot_names_the_best_peer_and_the_compile_time():
    from dcssa.benchmarks.plots import _label

    rep = _peer_report()
    assert _label(rep, "torch-compile", "torch-compile") == "torch-compile (best PyTorch peer) [compile: 61 s, not plotted]"
    assert _label(rep, "torch-eager", "torch-compile") == "torch-eager"
