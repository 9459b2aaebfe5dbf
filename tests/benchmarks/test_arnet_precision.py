"""`dcssa-bench arnet-precision table`: every candidate x variant as one Markdown row, measured or not,
and the fp32 noise floor as rows of its own (hand-written records, expectations written out)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dcssa.benchmarks.arnet_precision import cli


def _task(mb: float, mb_up: float, a10: float, a10_up: float) -> dict:
    return {"m@B": {"drop": mb, "drop_upper": mb_up}, "acc@10": {"drop": a10, "drop_upper": a10_up}}


def test_table_rows_for_measured_refused_missing_and_noise_floor(tmp_path):
    record = {"variants": {"plain": {"cells": {
        "transformer": {"status": "measured", "task": _task(0.004, 0.009, 0.0, 0.01), "top1_agreement": 0.875,
                        "embedding_cosine": {"mean": 0.99512}, "latency": {"ratio": 0.5},
                        "latency_openvino": {"ratio": 0.41}, "meets_objective": True},
        "bf16": {"status": "refused", "reason": "no native bf16"},
        "noise-floor": {"status": "measured", "perturbations": {
            "shift-1px": {"task": _task(0.002, 0.006, -0.01, 0.0), "top1_agreement": 0.9,
                          "embedding_cosine": {"mean": 0.998}}}},
    }}}}
    path = tmp_path / "arnet-precision.json"
    path.write_text(json.dumps(record))
    out = CliRunner().invoke(cli, ["table", str(path)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert ("| transformer recipe (weight MatMuls, outputs float) | plain | +0.004 (<= +0.009) | +0.000 (<= +0.010) "
            "| 87.5% | 0.9951 | 0.50 | 0.41 | yes |") in lines
    assert "| bf16 (OpenVINO) | plain | refused: no native bf16 | | | | | | |" in lines
    assert "| onnxruntime dynamic int8 | plain | not measured | | | | | | |" in lines
    assert ("| fp32 noise floor (strokes shift-1px) | plain | +0.002 (<= +0.006) | -0.010 (<= +0.000) | 90.0% "
            "| 0.9980 | | | |") in lines
    assert len([x for x in lines if x.startswith("| ")]) == 1 + 12 + 1  # header, 12 candidates, 1 noise row
    compact = CliRunner().invoke(cli, ["table", "--compact", str(path)]).output.splitlines()
    assert "| transformer recipe (weight MatMuls, outputs float) | +0.0090/+0.0100; 88%; 0.995; 0.41/0.50; **yes** |" in compact
    assert "| bf16 (OpenVINO) | refused: no native bf16 |" in compact and len(compact) == 2 + 12


def test_each_bundle_gets_its_own_cached_fp32_reference(tmp_path, monkeypatch):
    """The sweep wraps the fp32 pass once per bundle: the second wrapper must run the real pass for its
    bundle, not hand back the first bundle's cached reference."""
    from types import SimpleNamespace

    from dcssa.benchmarks import arnet_sweep
    from dcssa.calibration import fidelity as fd

    def fp32_pass(bundle, prefixes, gallery, backend=None, on_batch=lambda _n: None):
        return SimpleNamespace(features=[bundle] * len(prefixes))

    monkeypatch.setattr(fd, "reference", fp32_pass)
    monkeypatch.setattr(arnet_sweep, "FP32_REFERENCE", fp32_pass)
    got = {}
    for name in ("plain", "outliers"):
        fd.reference = arnet_sweep.cached_reference(tmp_path / f"{name}.pkl")
        got[name] = fd.reference(name, [0, 1, 2], None).features
    assert got == {"plain": ["plain"] * 3, "outliers": ["outliers"] * 3}
    fd.reference = arnet_sweep.cached_reference(tmp_path / "plain.pkl")  # a rerun reads its own cache
    assert fd.reference("ignored", [0, 1, 2], None).features == ["plain"] * 3
