"""The task yardstick: per-sketch metrics, paired bootstrap bounds, --max-drop and the plan choice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dcssa.calibration import task as T
from dcssa.calibration.calibset import PrefixSet, Sketch
from dcssa.calibration.search import choose, trade_off_table
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.evaluation import metrics as M
from dcssa.runtime.evaluation.paired import paired_bootstrap


def _binom_quantile(n: int, p: float, q: float) -> int:
    """Smallest k with P(Binomial(n, p) <= k) >= q, summed by hand."""
    acc = 0.0
    for k in range(n + 1):
        acc += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if acc >= q - 1e-12:
            return k
    return n


def test_a_constant_shift_has_no_uncertainty():
    a = {"m@B": np.linspace(0.2, 0.8, 50)}
    b = {"m@B": a["m@B"] - 0.03}
    r = paired_bootstrap(a, b)["m@B"]
    assert r["drop"] == pytest.approx(0.03)
    assert r["drop_upper"] == pytest.approx(0.03) and r["drop_interval"] == pytest.approx([0.03, 0.03])
    assert r["sketches_changed"] == 50


def test_flipped_sketches_give_the_binomial_bound():
    """k of n finished sketches lose their target: the resampled drop is Binomial(n, k/n)/n."""
    n, k = 100, 3
    a = {"acc@10": np.ones(n)}
    b = {"acc@10": np.r_[np.zeros(k), np.ones(n - k)]}
    r = paired_bootstrap(a, b, resamples=20000)["acc@10"]
    assert r["drop"] == pytest.approx(k / n)
    want = _binom_quantile(n, k / n, 0.95) / n
    assert abs(r["drop_upper"] - want) <= 1 / n + 1e-9
    assert r["drop_interval"][0] >= 0 and r["drop_interval"][1] >= r["drop_upper"]


def test_mean_rank_drop_is_a_loss_when_ranks_grow():
    r = paired_bootstrap({"mean_rank": np.array([1.0, 2.0])}, {"mean_rank": np.array([2.0, 4.0])})["mean_rank"]
    assert r["drop"] == pytest.approx(1.5)


def _prefixes(sketch_steps: list[int], targets: list[str]) -> PrefixSet:
    sk = np.concatenate([[k] * t for k, t in enumerate(sketch_steps)])
    st = np.concatenate([np.arange(1, t + 1) for t in sketch_steps])
    sketches = [Sketch(f"s{k}", [np.zeros((2, 2))] * t, tg, "test") for k, (t, tg) in enumerate(zip(sketch_steps, targets))]
    return PrefixSet(np.zeros((len(sk), 4, 4), np.uint8), sk, st, sketches, pipeline=None)


def test_per_sketch_metrics_by_hand():
    """Three photos on the unit circle; the queries sit exactly on photos, so the ranks are known."""
    photos = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
    ids = ["p0", "p1", "p2"]
    # sketch 0 (target p1): step 1 on p0 (p1 is second), step 2 on p1 -> ranks 2, 1
    # sketch 1 (target p2): one step on p1 -> p1 first, then p0 and p2 at equal distance: tie counts against -> rank 3
    emb = np.array([[1, 0], [0, 1], [0, 1]], np.float32)
    pre = _prefixes([2, 1], ["p1", "p2"])
    targets = T.sketch_targets(pre, ids)
    assert targets.sketches == [0, 1] and targets.rows == [1, 2]
    v = T.per_sketch(emb, pre, photos, targets)
    assert v["acc@1"].tolist() == [1.0, 0.0] and v["acc@10"].tolist() == [1.0, 1.0]
    assert v["stroke_acc@1"].tolist() == [0.5, 0.0]
    assert v["m@B"] == pytest.approx([(1 / 2 + 1) / 2, 1 / 3])
    assert v["m@A"] == pytest.approx([((3 - 2) / 2 + 1) / 2, 0.0])
    assert v["mean_rank"].tolist() == [1.5, 3.0]
    # second path: eval's summary of the same ranks
    s = M.summarize([np.array([2, 1]), np.array([3])], 3)
    assert s["m@A"] == pytest.approx(v["m@A"].mean()) and s["m@B"] == pytest.approx(v["m@B"].mean())
    assert s["acc@1"] == pytest.approx(v["acc@1"].mean())


def test_sketches_without_their_photo_are_left_out():
    pre = _prefixes([1, 1], ["p1", "elsewhere"])
    assert T.sketch_targets(pre, ["p0", "p1"]).sketches == [0]
    assert T.sketch_targets(_prefixes([1], [None]), ["p0"]) is None


def test_max_drop_parsing():
    assert T.parse_max_drop(None) == T.DEFAULT_MAX_DROP
    assert T.parse_max_drop("m@B=0.005, acc@1=0.1") == {"m@B": 0.005, "acc@1": 0.1}
    for bad in ("mean_rank=1", "m@B", "nope=0.1", ","):
        with pytest.raises(DcssaError):
            T.parse_max_drop(bad)


def _pt(k: int, drop_upper: float, latency: float, top1: float = 0.9) -> dict:
    return {"blocks": k, "added": f"b{k}", "latency_ratio": latency, "top1_agreement": top1, "top10_overlap": 0.95,
            "task": {"m@B": {"drop": drop_upper / 2, "drop_upper": drop_upper, "candidate": 0.3, "reference": 0.31}}}


def test_the_search_keeps_the_fastest_plan_within_the_bound_and_reports_an_unreachable_one():
    curve = [_pt(1, 0.001, 0.9), _pt(2, 0.008, 0.6), _pt(3, 0.03, 0.4)]
    reachable = T.Objective("task", {"m@B": 0.01})
    assert choose(curve, reachable) == (curve[1], True)  # point 3 is faster but loses too much
    unreachable = T.Objective("task", {"m@B": -0.5})
    p, ok = choose(curve, unreachable)
    assert not ok and p is curve[0]  # the closest: the smallest loss
    assert "| 1 (chosen) |" in trade_off_table(curve, unreachable, chosen=1)
    # agreement: the same curve judged by top-1 agreement only
    curve[2]["top1_agreement"] = 0.95
    assert choose(curve, T.Objective("agreement")) == (curve[2], True)


def test_task_falls_back_to_agreement_without_ground_truth():
    p = {"top1_agreement": 0.95, "top10_overlap": 0.95}
    obj = T.Objective("task", {"m@B": 0.0})
    assert obj.effective(p) == "agreement" and obj.faithful(p)


def test_perturbations_move_strokes_by_a_pixel():
    s = [Sketch("a", [np.array([[10.0, 20.0], [255.0, 0.0]])], "p", "test")]
    moved = T.perturb(s, "shift-1px")[0].strokes[0]
    assert moved.tolist() == [[11.0, 21.0], [255.0, 1.0]]  # clipped to the frame
    big = [Sketch("b", [np.full((4000, 2), 100.0)], None, None)]
    j = T.perturb(big, "jitter-1px")[0].strokes[0] - 100.0
    assert abs(j.std() - 1.0) < 0.05 and abs(j.mean()) < 0.05
    assert s[0].strokes[0][0, 0] == 10.0  # the input is not modified
