"""Calibration sets: sketch sources, the split by sketch, and every stroke prefix as a session draws it.

Prefixes are checked against a second code path: each is re-rasterised from scratch with
``rasterize`` (not the incremental canvas) and preprocessed with the authors' transform written
out in Pillow and numpy (the ``authors_transform`` fixture).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from tiny_bundle import write_tiny_bundle

from dcssa.calibration.calibset import (
    CalibrationDataError,
    Sketch,
    bundle_prefix_set,
    load_sketch_data,
    prefix_set,
    split_heldout,
    synthetic_sketches,
)
from dcssa.runtime import Bundle
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.stroke.parse import strokes_to_points
from dcssa.runtime.stroke.raster import rasterize


def test_prefixes_equal_full_rerasterisation(authors_transform):
    sketches = synthetic_sketches(2, seed=4)
    ps = prefix_set(sketches)
    assert len(ps) == sum(len(s.strokes) for s in sketches)
    for i in range(len(ps)):
        strokes = sketches[ps.sketch[i]].strokes[: ps.stroke[i]]
        want = rasterize(strokes_to_points(strokes))
        np.testing.assert_array_equal(ps.canvases[i], want)
        np.testing.assert_allclose(ps.images(i, i + 1), authors_transform(want), atol=1e-6)
    # each sketch's prefixes in stroke order, for the causal head
    for k, idx in enumerate(ps.sequences()):
        assert list(ps.stroke[idx]) == list(range(1, len(sketches[k].strokes) + 1))


def test_bundle_prefixes_follow_the_bundles_recipe(tmp_path, authors_transform):
    """Canvas and frame come from the bundle's manifest, not from defaults."""
    folder = write_tiny_bundle(tmp_path / "b")
    manifest = json.loads((folder / mf.MANIFEST).read_text())
    manifest["preprocessing"]["sketch"].update(canvas=320, frame=200.0)
    (folder / mf.MANIFEST).write_text(json.dumps(manifest))
    sketches = synthetic_sketches(1, seed=6)
    ps = bundle_prefix_set(Bundle.load(folder), sketches, max_strokes=3)
    assert len(ps) == min(3, len(sketches[0].strokes))
    for i in range(len(ps)):
        want = rasterize(strokes_to_points(sketches[0].strokes[: i + 1]), frame=200.0, canvas=320)
        np.testing.assert_array_equal(ps.canvases[i], want)
        np.testing.assert_allclose(ps.images(i, i + 1), authors_transform(want), atol=1e-6)


def test_subsample_spreads_over_the_set():
    ps = prefix_set(synthetic_sketches(3, seed=1))
    sub = ps.subsample(5)
    assert len(sub) == 5
    assert sub.stroke[0] == ps.stroke[0] and sub.sketch[-1] == ps.sketch[-1]  # first and last kept
    assert ps.subsample(None) is ps and ps.subsample(10_000) is ps


def test_spread_sketches_keeps_whole_sketches_under_the_cap():
    from dcssa.calibration.calibset import Sketch, spread_sketches

    sk = [Sketch(f"s{i}", [np.zeros((2, 2))] * n) for i, n in enumerate((3, 1, 4, 2, 5))]  # 15 strokes in all
    assert spread_sketches(sk, None) == sk and spread_sketches(sk, 15) == sk
    # 4 evenly spread sketches (0, 1, 3, 4) need 11 prefixes, 3 (0, 2, 4) need 12, 2 (0, 4) need 8
    assert [s.name for s in spread_sketches(sk, 11)] == ["s0", "s1", "s3", "s4"]
    assert [s.name for s in spread_sketches(sk, 10)] == ["s0", "s4"]
    assert [s.name for s in spread_sketches(sk, 2)] == ["s0"]  # at least one sketch, even beyond the cap
    ps = prefix_set(spread_sketches(sk, 10))
    for k, idx in enumerate(ps.sequences()):  # every kept sketch has all its prefixes, in stroke order
        assert ps.stroke[idx].tolist() == list(range(1, len(ps.sketches[k].strokes) + 1))


def test_sources_qmul_pickle_strokes_folder_synthetic(dataset):
    coords = pickle.loads(next(dataset.glob("*_Coordinate")).read_bytes())
    data = load_sketch_data(dataset)
    assert len(data.sketches) == len(coords)
    assert data.photos == dataset / "photo"
    s = next(s for s in data.sketches if s.name == sorted(coords)[0])
    np.testing.assert_allclose(strokes_to_points(s.strokes), coords[s.name])
    assert (dataset / "photo" / f"{s.target}.png").is_file()  # target = name minus its _n suffix
    assert s.split in ("train", "test")
    folder = load_sketch_data(dataset / "strokes")
    assert len(folder.sketches) == len(list((dataset / "strokes").glob("*.json")))
    assert all((dataset / "photo" / f"{x.target}.png").is_file() for x in folder.sketches)
    a, b = load_sketch_data("synthetic:3:7"), load_sketch_data("synthetic:3:7")
    assert len(a.sketches) == 3
    for x, y in zip(a.sketches, b.sketches):
        for u, v in zip(x.strokes, y.strokes):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("bad", ["/nonexistent/sketches", "synthetic:x", "synthetic:0"])
def test_bad_sources_are_user_errors(bad):
    with pytest.raises(DcssaError) as info:
        load_sketch_data(bad)
    assert info.value.hint


def test_corrupt_pickle_names_the_file(tmp_path):
    bad = tmp_path / "X_Coordinate"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(CalibrationDataError) as info:
        load_sketch_data(tmp_path)
    assert info.value.path == str(bad)


def test_split_by_sketch(dataset):
    data = load_sketch_data(dataset)
    calib, held = split_heldout(data.sketches)
    assert {s.split for s in calib} == {"train"} and {s.split for s in held} == {"test"}
    plain = [Sketch(f"s{i}", [], None, None) for i in range(40)]
    c1, h1 = split_heldout(plain, 0.3)
    c2, h2 = split_heldout(plain, 0.3)
    assert [s.name for s in c1] == [s.name for s in c2]  # stable
    assert {s.name for s in c1}.isdisjoint({s.name for s in h1})
    assert len(c1) + len(h1) == 40 and 0 < len(h1) < 40
    with pytest.raises(CalibrationDataError):
        split_heldout(plain[:1])
