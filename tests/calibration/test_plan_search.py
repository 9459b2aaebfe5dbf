"""The plan searches judged by the task: a reachable bound is met by the fastest plan that keeps it,
an unreachable one is reported with the closest plan; the bf16 plan lands in the encoder's spec.

Both searches run on a few blocks of the test model (the full searches differ only in length).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from dcssa.calibration import job as cb
from dcssa.calibration import task as T
from dcssa.calibration.options import CalibrationOptions
from dcssa.calibration.search import SearchContext, run_search
from dcssa.runtime import Bundle
from dcssa.runtime.contract import manifest as mf

BLOCKS = ["Mixed_6e", "Mixed_7a", "attention.proj"]


@pytest.fixture(scope="module")
def prep(bundle2, dataset, gallery2, tmp_path_factory):
    work = tmp_path_factory.mktemp("plan")
    b = work / "bundle"
    shutil.copytree(bundle2, b)
    p = cb.prepare(Bundle.load(b), dataset, work, CalibrationOptions(fidelity_gallery=gallery2, max_calib=3,
                                                                    max_heldout=12, noise_floor=True), quiet=True)
    assert p.ref.task is not None, "the test data must have ground truth"
    return p


def _with(prep, objective):
    return dataclasses.replace(prep, objective=objective)


def _search(latency_rasters):
    """The searches' options of these tests: 2 sketches for the sensitivity order, patience 2."""
    return CalibrationOptions(sensitivity_sketches=2, patience=2, latency_rasters=latency_rasters)


def test_the_noise_floor_compares_fp32_with_itself_on_moved_strokes(prep):
    assert set(prep.noise) == set(T.PERTURBATIONS)
    for rec in prep.noise.values():
        assert 0 <= rec["top1_agreement"] <= 1 and "m@B" in rec["task"]
        t = rec["task"]["m@B"]
        assert t["reference"] == pytest.approx(T.means(prep.ref.task)["m@B"])  # the clean fp32 run, unchanged
        assert t["drop_interval"][0] <= t["drop"] <= t["drop_interval"][1]


def test_int8_search_meets_a_reachable_bound_and_reports_an_unreachable_one(prep):
    ctx = SearchContext(_with(prep, T.Objective("task", {"m@B": -1.0})), _search(1))
    missed = run_search(ctx, methods=("minmax",), blocks=BLOCKS)
    assert missed["chosen"]["meets_objective"] is False
    curve = missed["curve"]
    assert 1 <= len(curve) <= 2  # patience 2: every point misses, the walk stops after two
    best = min(p["task"]["m@B"]["drop_upper"] for p in curve)
    assert curve[missed["chosen"]["blocks"] - 1]["task"]["m@B"]["drop_upper"] == pytest.approx(best)

    # a bound the closest point just meets is reachable: the search must find a plan within it
    ctx = SearchContext(_with(prep, T.Objective("task", {"m@B": best})), _search(1))
    met = run_search(ctx, methods=("minmax",), blocks=BLOCKS)
    assert met["chosen"]["meets_objective"] is True
    keep = [p for p in met["curve"] if p["task"]["m@B"]["drop_upper"] <= best + 1e-12]
    chosen = met["curve"][met["chosen"]["blocks"] - 1]
    assert chosen in keep and chosen["latency_ratio"] == min(p["latency_ratio"] for p in keep)
    assert met["objective"]["max_drop"] == {"m@B": best}


def test_the_one_shot_reports_carry_task_bounds_and_agreement(prep):
    ctx = SearchContext(_with(prep, T.Objective()), _search(0))
    from dcssa.calibration.int8 import Int8Recipe

    rep = ctx.evaluate(Int8Recipe(method="minmax", blocks=["Mixed_7a"]), latency=False)
    assert {"top1_agreement", "top10_overlap", "task", "target_accuracy", "meets_objective"} <= set(rep)
    assert rep["task"]["acc@1"]["reference"] == rep["target_accuracy"]["fp32"]["acc@1"]
    assert rep["meets_objective"] == all(rep["task"][m]["drop_upper"] <= v for m, v in T.DEFAULT_MAX_DROP.items())


ov = pytest.importorskip("openvino", reason="openvino is not installed: no bf16 plans")
HAS_BF16 = "BF16" in [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bf16 (AMX / AVX512-BF16)")


@needs_bf16
def test_bf16_search_meets_a_reachable_bound_and_reports_an_unreachable_one(prep):
    from dcssa.calibration.bf16 import Bf16Search, bf16_units, run_bf16_search

    units = ["/trunk/Conv2d_1a_3x3", "/trunk/Mixed_6e", "/attention"]
    import onnx

    assert set(units) <= set(bf16_units(onnx.load(str(prep.bundle.graph_path(mf.SKETCH_ENCODER)), load_external_data=False)))
    ctx = Bf16Search(_with(prep, T.Objective("task", {"m@B": -1.0})),
                     CalibrationOptions(latency_rasters=1, sensitivity_sketches=2, patience=None), latency_repeats=1)
    missed = run_bf16_search(ctx, units)
    assert missed["chosen"]["meets_objective"] is False
    assert [s["block"] for s in missed["sensitivity"]] == units and len(missed["curve"]) == len(units)
    assert missed["curve"][-1]["f32_scopes"] == []  # the walk ends with every block in bf16

    ctx.yard = _with(prep, T.Objective("task", {"m@B": 1.0}))  # any plan keeps this: no search, the faster timed plan
    met = run_bf16_search(ctx, units)
    assert met["chosen"]["meets_objective"] is True and met["curve"] == []
    timed = met["reference_points"]
    assert met["chosen"]["latency_ratio"] == min(p["latency_ratio"] for p in timed)


@needs_bf16
def test_the_chosen_bf16_plan_is_written_into_the_encoder_spec(prep):
    from dcssa.runtime.backends.openvino import OpenVINOBackend

    plan = ["/trunk/Mixed_6a"]
    stage = cb.StageOutput(bf16={"plan": {"graph": mf.SKETCH_ENCODER, "f32_scopes": plan}, "chosen": {}})
    cb.commit_stages(prep, [stage])
    b = Bundle.load(prep.bundle.path)
    assert b.graph_spec(mf.SKETCH_ENCODER, "fp32").f32_scopes == tuple(plan)
    doc = json.loads((b.path / mf.MANIFEST).read_text())
    assert doc["calibration"]["bf16"]["plan"]["f32_scopes"] == plan and "noise_floor" in doc["calibration"]
    r = OpenVINOBackend().load(b.graph_path(mf.SKETCH_ENCODER), b.graph_spec(mf.SKETCH_ENCODER), precision="bf16")
    assert r.precisions == ("bf16", "fp32", "bf16")
    # an all-bf16 plan removes the scopes: one bf16 segment
    cb.commit_stages(prep, [cb.StageOutput(bf16={"plan": {"graph": mf.SKETCH_ENCODER, "f32_scopes": []}, "chosen": {}})])
    b = Bundle.load(prep.bundle.path)
    assert b.graph_spec(mf.SKETCH_ENCODER, "fp32").f32_scopes == ()
    x = prep.held.images(0, 1)
    r = OpenVINOBackend().load(b.graph_path(mf.SKETCH_ENCODER), b.graph_spec(mf.SKETCH_ENCODER), precision="bf16")
    assert r.precisions == ("bf16",) and np.isfinite(r.run({mf.IMAGES: x})[mf.encoder_output(r.spec)]).all()


def test_reference_plans_settle_the_bf16_search_when_they_can():
    """Hand-made points: the search stops at the reference plans exactly when no other plan could
    keep more blocks in bf16 (no OpenVINO needed)."""
    from dcssa.calibration.bf16 import settled_by_reference

    def pt(label, drop_upper, latency):
        return {"label": label, "task": {"m@B": {"drop_upper": drop_upper}}, "latency_ratio": latency,
                "top1_agreement": 0.9, "top10_overlap": 0.9}

    goal = T.Objective("task", {"m@B": 0.01})
    everything, default = pt("all", 0.02, 0.50), pt("default", 0.005, 0.45)
    assert settled_by_reference([everything, default], 1, goal) == (default, True)
    # a default plan of two f32 blocks: a plan with one f32 block may exist, search on
    assert settled_by_reference([everything, default], 2, goal) is None
    # neither keeps it: search on
    assert settled_by_reference([everything, pt("default", 0.011, 0.45)], 1, goal) is None
    # all in bf16 keeps it: the faster of the two timed plans that keep it
    fast_default = pt("default", 0.0, 0.40)
    assert settled_by_reference([pt("all", 0.009, 0.50), fast_default], 1, goal) == (fast_default, True)
    assert settled_by_reference([pt("all", 0.009, 0.50)], 0, goal)[0]["label"] == "all"
