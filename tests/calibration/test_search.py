"""Choosing a point of the trade-off curve: fidelity first, then speed."""

from __future__ import annotations

from dcssa.calibration.search import choose


def test_choose_prefers_fastest_faithful_point():
    """With no objective given, agreement (top-1 and top-10 >= 90%) decides; speed only among those."""
    curve = [
        {"blocks": 1, "top10_overlap": 0.99, "top1_agreement": 0.98, "latency_ratio": 0.9},
        {"blocks": 2, "top10_overlap": 0.95, "top1_agreement": 0.92, "latency_ratio": 0.45},
        {"blocks": 3, "top10_overlap": 0.80, "top1_agreement": 0.60, "latency_ratio": 0.35},
    ]
    assert choose(curve) == (curve[1], True)
    curve[1]["latency_ratio"] = 0.95  # slower than point 1 now: the fastest faithful point is point 1
    assert choose(curve) == (curve[0], True)
    for p in curve:
        p["top1_agreement"] = 0.5  # nothing faithful: the most faithful point, and said so
    assert choose(curve) == (curve[0], False)
