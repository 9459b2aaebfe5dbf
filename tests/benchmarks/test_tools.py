"""The stand-alone harnesses' pieces: fast-path replay and fidelity on a tiny run, load-test inputs."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pytest

from dcssa.benchmarks.clients import FRAME, to_client
from dcssa.benchmarks.load_test import _settings
from dcssa.benchmarks.stroke_latency import rotated
from dcssa.runtime.data.synthetic import random_sketch
from dcssa.runtime.stroke.parse import parse_stroke


def test_rotated_gives_every_item_the_first_turn():
    assert [rotated("abc", k) for k in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]


def test_load_test_client_strokes_come_back_to_the_model_frame():
    for stroke in random_sketch(np.random.default_rng(3), 4):
        sent = to_client(stroke)
        assert max(max(p) for p in sent) <= FRAME
        # rounding to 0.01 in a 500 frame moves a point by at most 0.005 * 256 / 500 in the model frame
        np.testing.assert_allclose(parse_stroke(sent, frame=[FRAME, FRAME]), stroke, atol=0.005 * 256 / 500 + 1e-9)


def test_load_test_settings():
    assert _settings(("1:0", "8:10"), None) == [("max_batch=1 window=0ms", 1, 0.0), ("max_batch=8 window=10ms", 8, 10.0)]
    assert _settings(("1:0",), "http://127.0.0.1:8000/") == [("external", None, None)]
    with pytest.raises(click.BadParameter, match="MAX_BATCH:WINDOW_MS"):
        _settings(("8",), None)


def test_fastpath_replays_sessions_and_scores_fidelity(bundle2: Path, gallery2: Path, tmp_path: Path):
    from dcssa.benchmarks.openvino_fastpath import MARGIN, REFERENCE, markdown, run_fastpath
    from dcssa.runtime.backends import available_backends

    other = ("openvino", "fp32") if "openvino" in available_backends() else ("auto", "fp32")
    folder = tmp_path / "D" / "Shapes" / "strokes"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i, n in enumerate((2, 3)):
        (folder / f"{i}.json").write_text(json.dumps({"strokes": [s.tolist() for s in random_sketch(rng, n)]}))
    rep = run_fastpath(bundle2, gallery2, [folder], methods=(REFERENCE, other, ("no-such-backend", "fp32")),
                       threads=1, progress=False)
    ref, cand = "/".join(REFERENCE), "/".join(other)
    assert rep["methods"] == [ref, cand] and list(rep["skipped"]) == ["no-such-backend/fp32"]
    assert {n: rep["latency"][n]["strokes"] for n in rep["methods"]} == {ref: 5, cand: 5}
    assert rep["latency"][ref]["ratio_to_ort_fp32"] == 1.0
    assert list(rep["fidelity"]) == ["D/Shapes"]  # a set is named by its dataset and category
    block = rep["fidelity"]["D/Shapes"]
    assert block["prefixes"] == 5 and ref not in block
    # fp32 on another engine: the same embeddings up to float rounding, so the same rankings
    assert block[cand]["embedding_cosine"]["min"] > 0.999
    clear = block[cand][f"top1_agreement_margin_{MARGIN}"]
    assert clear == 1.0 if block["clear_top1_prefixes"] else clear is None
    table = markdown(rep).splitlines()
    assert table[0].startswith("| method | ms / stroke (median) | encoder ms | x ort fp32 |")
    assert table[2].startswith(f"| {ref} |") and table[2].endswith("| reference | - | - |")


def test_ptq_compare_table_carries_the_task_drops_and_the_failures():
    from dcssa.benchmarks.ptq_compare import markdown as ptq_markdown

    fid = {"embedding_cosine": {"mean": 0.99, "min": 0.95}, "top1_agreement": 0.9, "top10_overlap": 0.97,
           "target_accuracy": {"fp32": {"acc@1": 0.55}, "int8": {"acc@1": 0.5}},
           "task": {"m@B": {"drop": 0.0041, "drop_upper": 0.0093}, "acc@10": {"drop": 0.0, "drop_upper": 0.0}},
           "latency": {"ratio": 0.7, "reduced_ms": 70.0, "fp32_ms": 100.0}}
    rep = {"bundle": "b", "data": "d", "calibration_prefixes": 96, "heldout": {"prefixes": 726, "sketches": 120},
           "gallery": {"photos": 20, "rule": "r"},
           "env": {"cpu": "cpu", "isa": "avx512", "cores": 2, "load_average": (1.0, 1.0, 1.0), "onnxruntime": "1",
                   "openvino": "2", "nncf": "3", "aimet_onnx": None},
           "variants": {"nncf-control": {"describe": "x", "fidelity": fid, "calibrate_seconds": 600.0,
                                         "openvino_latency": {"ratio": 0.3, "reduced_ms": 30.0, "fp32_ms": 100.0}},
                        "aimet-adaround": {"describe": "y", "skipped": "aimet-onnx is not installed"}}}
    lines = ptq_markdown(rep).splitlines()
    head = [c.strip() for c in lines[3].strip("|").split("|")]
    cells = dict(zip(head, (c.strip() for c in lines[5].strip("|").split("|"))))
    assert cells["m@B drop (95% upper)"] == "+0.004 (+0.009)" and cells["acc@10 drop (upper)"] == "+0.000 (+0.000)"
    assert cells["acc@1 fp32 -> int8"] == "0.55 -> 0.50" and cells["OpenVINO int8 vs OV fp32"].startswith("0.30x")
    assert any("aimet-adaround: skipped: aimet-onnx is not installed" in x for x in lines)


def test_ptq_compare_saves_the_report_after_every_variant(monkeypatch, tmp_path):
    """A comparison runs for hours: a stopped run keeps the variants it finished, marked partial."""
    import json
    from types import SimpleNamespace

    from click.testing import CliRunner

    import dcssa.calibration.job as cb
    import dcssa.runtime.contract.bundle as rb
    from dcssa.benchmarks import ptq_compare as pc
    from dcssa.benchmarks.cli import main as bench

    out = tmp_path / "out"
    seen: list[dict] = []

    def first(path, prep, say):
        raise pc._Skip("first is not installed")

    def second(path, prep, say):  # by now the first variant's result is on disk, marked partial
        seen.append(json.loads((out / "ptq-compare.json").read_text()))
        seen.append({"md": (out / "ptq-compare.md").read_text()})
        raise RuntimeError("second broke")

    class Held(list):
        sketches = [0, 1]

    prep = SimpleNamespace(calib=[0] * 3, held=Held([0] * 5), gallery=SimpleNamespace(
        ids=["a"], rule="every photo", source="s"))
    monkeypatch.setattr(rb.Bundle, "load", staticmethod(lambda path: object()))
    monkeypatch.setattr(cb, "prepare", lambda *a, **k: prep)
    monkeypatch.setattr(pc, "VARIANTS", {"one": pc.Variant("one", "d1", first), "two": pc.Variant("two", "d2", second)})
    res = CliRunner().invoke(bench, ["ptq-compare", "--bundle", str(tmp_path), "--data", "synthetic:2",
                                     "--variants", "one,two", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    partial, md = seen
    assert partial["complete"] is False and list(partial["variants"]) == ["one"]
    assert "**Partial**: 1 of 2 variants" in md["md"]
    final = json.loads((out / "ptq-compare.json").read_text())
    assert final["complete"] is True and final["variants"]["two"]["failed"] == "RuntimeError: second broke"
    assert "Partial" not in (out / "ptq-compare.md").read_text()
