"""Fidelity maths, worked out by hand: ranking agreement and the interleaved latency scheme."""

from __future__ import annotations

import numpy as np
import pytest

from dcssa.calibration import fidelity as fd


def test_compare_counts_agreement_by_hand():
    gal = fd.GalleryMatrix(np.eye(12, dtype=np.float32), [f"p{i}" for i in range(12)], "hand")
    # reference query prefers photo 0 most, then 1, 2, ...; candidate swaps 0 and 11
    ref_e = np.linspace(1.0, 0.1, 12, dtype=np.float32)[None]
    cand = ref_e.copy()
    cand[0, [0, 11]] = cand[0, [11, 0]]
    ref = fd.Reference(ref_e.copy(), ref_e, gal.topk(ref_e))
    rep = fd.compare(ref, cand, cand, gal)
    assert rep["top1_agreement"] == 0.0  # top-1 is now photo 11
    assert rep["top10_overlap"] == pytest.approx(9 / 10)  # photo 0 left the top 10, photo 11 joined
    c = float((ref_e * cand).sum() / (np.linalg.norm(ref_e) * np.linalg.norm(cand)))
    assert rep["embedding_cosine"]["mean"] == pytest.approx(c, rel=1e-6)
    same = fd.compare(ref, ref_e, ref_e, gal)
    assert same["top1_agreement"] == 1.0 and same["top10_overlap"] == 1.0


def test_interleaved_latency_times_blocks_and_skips_each_hand_over(monkeypatch):
    """Fake clock: a run costs 10 (a) or 4 (b) units, plus 50 when it follows the other graph's run
    (the other pool still spinning); the scheme must time neither warm-up nor hand-over runs."""
    clock = {"t": 0.0, "last": None}
    order = []

    class Fake:
        def __init__(self, name, cost):
            self.name, self.cost = name, cost

        def run(self, feeds):
            order.append(self.name)
            clock["t"] += self.cost + (50 if clock["last"] not in (None, self.name) else 0)
            clock["last"] = self.name

    monkeypatch.setattr(fd.time, "perf_counter", lambda: clock["t"])
    images = np.zeros((3, 3, 299, 299), np.float32)
    lat = fd.interleaved_latency(Fake("a", 10.0), Fake("b", 4.0), images, repeats=2, warmup=1)
    assert lat["fp32_ms"] == 10_000.0 and lat["reduced_ms"] == 4_000.0  # perf_counter units are seconds
    assert lat["ratio"] == 0.4 and lat["runs"] == 6
    assert order == ["a", "b"] + (["a"] * 4 + ["b"] * 4) * 2


def test_protocol_gallery_rows_by_hand():
    from dcssa.runtime.evaluation.metrics import protocol_gallery_rows

    ids = ["a.png", "b.png", "c.png", "d.png"]
    rows, missing = protocol_gallery_rows(ids, ["c.png", "a.png", "c.png", "x.png", "d.png"])
    assert rows == [2, 0, 3]  # first appearance, once each
    assert missing == ["x.png"]


def _held(targets, split):
    from dcssa.calibration.calibset import Sketch

    return [Sketch(f"s{i}", [], t, split) for i, t in enumerate(targets)]


def test_protocol_gallery_keeps_the_test_split_photos_only():
    emb = np.eye(5, dtype=np.float32)
    gal = fd.GalleryMatrix(emb, ["p0", "p1", "p2", "p3", "p4"], "photos/")
    sub = fd.protocol_gallery(gal, _held(["p3", "p1", "p3"], "test"))
    assert sub.ids == ["p3", "p1"] and sub.rule == fd.PROTOCOL_RULE
    np.testing.assert_array_equal(sub.embeddings, emb[[3, 1]])
    # no train/test split (a strokes folder), or a target without a photo: the whole gallery
    assert fd.protocol_gallery(gal, _held(["p3", "p1"], None)) is gal
    assert fd.protocol_gallery(gal, _held(["p3", "zz"], "test")) is gal
