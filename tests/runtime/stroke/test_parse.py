"""Stroke formats: hand-written documents with hand-computed expected coordinates, and errors that
name the stroke and point so a user can find the bad value."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dcssa.runtime.errors import StrokeError
from dcssa.runtime.stroke.parse import (
    load_strokes_file,
    parse_stroke,
    parse_strokes,
    points_to_strokes,
    strokes_to_points,
)


def as_lists(strokes):
    return [s.tolist() for s in strokes]


# --------------------------------------------------------------------------------------------------
# Accepted forms
# --------------------------------------------------------------------------------------------------


def test_strokes_form_without_frame_is_already_in_256_frame():
    strokes = parse_strokes({"strokes": [[[1, 2], [3.5, 4]], [[-10, 300]]]})
    assert as_lists(strokes) == [[[1.0, 2.0], [3.5, 4.0]], [[-10.0, 300.0]]]  # outside the frame is fine
    assert all(s.dtype == np.float64 and s.shape[1] == 2 for s in strokes)


def test_strokes_form_wide_frame_scales_and_centres_vertically():
    # 512 x 256: s = 256 / 512 = 0.5; x offset 0; y offset (256 - 0.5 * 256) / 2 = 64
    doc = {"frame": [512, 256], "strokes": [[[0, 0], [512, 256]], [[100, 50]]]}
    assert as_lists(parse_strokes(doc)) == [[[0.0, 64.0], [256.0, 192.0]], [[50.0, 89.0]]]


def test_strokes_form_tall_frame_scales_and_centres_horizontally():
    # 300 x 600: s = 256 / 600; x offset (256 - s * 300) / 2 = 64; y offset 0
    doc = {"frame": [300, 600], "strokes": [[[0, 0], [300, 600], [150, 300], [75, 150]]]}
    (stroke,) = parse_strokes(doc)
    np.testing.assert_allclose(stroke, [[64, 0], [192, 256], [128, 128], [96, 64]], rtol=0, atol=1e-12)


def test_strokes_form_square_frames():
    doc = {"frame": [256, 256], "strokes": [[[10, 20]]]}
    assert as_lists(parse_strokes(doc)) == [[[10.0, 20.0]]]
    doc = {"frame": [1024.0, 1024.0], "strokes": [[[512, 256]]]}
    assert as_lists(parse_strokes(doc)) == [[[128.0, 64.0]]]


def test_qmul_points_form_splits_on_pen_up_and_keeps_an_open_last_stroke():
    doc = {"points": [[1, 2, 0], [3, 4, 1], [5, 6, 1.0], [7, 8, 0], [9, 10, 0]]}
    assert as_lists(parse_strokes(doc)) == [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0]], [[7.0, 8.0], [9.0, 10.0]]]
    doc = {"points": [[1, 2, 0], [3, 4, 1]], "frame": [128, 512]}
    # s = 0.5; x offset (256 - 64) / 2 = 96
    assert as_lists(parse_strokes(doc)) == [[[96.5, 1.0], [97.5, 2.0]]]


def test_quickdraw_drawing_form():
    doc = {"word": "cat", "drawing": [[[0, 10, 255], [5, 6, 7]], [[1], [2]]]}
    assert as_lists(parse_strokes(doc)) == [[[0.0, 5.0], [10.0, 6.0], [255.0, 7.0]], [[1.0, 2.0]]]
    # raw form with timings: the third list is ignored
    doc = {"drawing": [[[1, 2], [3, 4], [0, 17]]]}
    assert as_lists(parse_strokes(doc)) == [[[1.0, 3.0], [2.0, 4.0]]]
    # optional frame: 128 x 64 -> s = 2, y offset (256 - 128) / 2 = 64
    doc = {"frame": [128, 64], "drawing": [[[0, 128], [0, 64]]]}
    assert as_lists(parse_strokes(doc)) == [[[0.0, 64.0], [256.0, 192.0]]]


def test_parse_stroke_bare_list():
    assert parse_stroke([[1, 2], [3, 4]]).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert parse_stroke([[512, 0]], frame=[512, 256]).tolist() == [[256.0, 64.0]]
    assert parse_stroke([(5.5, 6)]).shape == (1, 2)


def test_strokes_points_round_trip():
    strokes = [np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[5.0, 6.0]])]
    points = strokes_to_points(strokes)
    assert points.tolist() == [[1, 2, 0], [3, 4, 1], [5, 6, 1]]
    assert as_lists(points_to_strokes(points)) == as_lists(strokes)
    # a trailing stroke without its closing pen_up still counts
    assert as_lists(points_to_strokes(np.array([[1, 2, 1], [3, 4, 0], [5, 6, 0]]))) == [[[1, 2]], [[3, 4], [5, 6]]]
    assert strokes_to_points([]).shape == (0, 3)
    assert points_to_strokes(np.zeros((0, 3))) == []


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def _doc_with(bad):
    """Strokes document whose stroke 2, point 1 is replaced by ``bad``."""
    return {"strokes": [[[0, 0]], [[1, 1], [2, 2]], [[3, 3], bad, [4, 4]]]}


@pytest.mark.parametrize(
    "bad, words",
    [
        ([float("nan"), 1], "NaN"),
        ([1, float("inf")], "infinite"),
        ([1, float("-inf")], "infinite"),
        (["3", 1], "string"),
        ([True, 1], "boolean"),
        ([1, None], "null"),
        ([1, [2]], "list"),
        ([1, 10**400], "too large"),
        ([1], "pair"),
        ([1, 2, 3], "pair"),
        (5, "pair"),
        ({"x": 1, "y": 2}, "pair"),
    ],
)
def test_bad_point_names_stroke_and_point(bad, words):
    with pytest.raises(StrokeError) as err:
        parse_strokes(_doc_with(bad), source="sketch.json")
    text = str(err.value)
    assert "stroke 2, point 1" in text
    assert words in text
    assert text.startswith("sketch.json: ")


def test_nan_from_json_text_is_rejected():
    doc = json.loads('{"strokes": [[[1, 2]], [[3, 4], [5, 6], [7, NaN]]]}')
    with pytest.raises(StrokeError, match=r"stroke 1, point 2: y is NaN"):
        parse_strokes(doc)


def test_empty_and_misnested_strokes():
    with pytest.raises(StrokeError, match=r"stroke 1: empty stroke"):
        parse_strokes({"strokes": [[[1, 2]], []]})
    with pytest.raises(StrokeError, match=r"stroke 0: expected a list of \[x, y\] points"):
        parse_strokes({"strokes": [7]})
    with pytest.raises(StrokeError, match=r"stroke 0, point 0: expected a pair"):
        parse_strokes({"strokes": [[1, 2]]})  # one level of nesting missing
    with pytest.raises(StrokeError, match="no strokes"):
        parse_strokes({"strokes": []})
    with pytest.raises(StrokeError, match='"strokes" must be a list'):
        parse_strokes({"strokes": "abc"})


def test_unknown_format_hint_names_the_three_forms():
    for doc in ({"lines": []}, [[1, 2]], "strokes", None, {"strokes": [[[1, 2]]], "points": [[1, 2, 1]]}):
        with pytest.raises(StrokeError) as err:
            parse_strokes(doc, source="in.json")
        assert err.value.hint is not None
        for key in ('"strokes"', '"points"', '"drawing"'):
            assert key in err.value.hint
        assert err.value.path == "in.json"


@pytest.mark.parametrize("frame", [[0, 10], [10, -1], [10], [1, 2, 3], "800x600", [True, 3], [float("nan"), 3], 5])
def test_bad_frame(frame):
    with pytest.raises(StrokeError, match="frame") as err:
        parse_strokes({"frame": frame, "strokes": [[[1, 2]]]})
    assert err.value.hint is not None
    with pytest.raises(StrokeError, match="frame"):
        parse_stroke([[1, 2]], frame=frame)


def test_points_form_errors():
    with pytest.raises(StrokeError, match=r"stroke 1, point 2: pen_up must be 0 or 1, got 2"):
        parse_strokes({"points": [[1, 2, 1], [3, 4, 0], [5, 6, 2]]})
    with pytest.raises(StrokeError, match=r"stroke 0, point 1: expected \[x, y, pen_up\]"):
        parse_strokes({"points": [[1, 2, 0], [3, 4]]})
    with pytest.raises(StrokeError, match=r"stroke 1, point 2: x is NaN"):
        parse_strokes({"points": [[1, 2, 1], [3, 4, 0], [float("nan"), 6, 1]]})
    with pytest.raises(StrokeError, match="no strokes"):
        parse_strokes({"points": []})


def test_drawing_form_errors():
    with pytest.raises(StrokeError, match=r"stroke 1: 2 x values but 1 y values"):
        parse_strokes({"drawing": [[[1], [2]], [[1, 2], [3]]]})
    with pytest.raises(StrokeError, match=r"stroke 0, point 1: y is a string"):
        parse_strokes({"drawing": [[[1, 2], [3, "4"]]]})
    with pytest.raises(StrokeError, match=r"stroke 0: empty stroke"):
        parse_strokes({"drawing": [[[], []]]})
    with pytest.raises(StrokeError, match=r"stroke 0: expected \[\[x, \.\.\.\], \[y, \.\.\.\]\]"):
        parse_strokes({"drawing": [[1, 2]]})


def test_parse_stroke_errors():
    with pytest.raises(StrokeError, match=r"point 3: x is NaN"):
        parse_stroke([[1, 2], [3, 4], [5, 6], [float("nan"), 8]])
    with pytest.raises(StrokeError, match="empty stroke"):
        parse_stroke([])
    with pytest.raises(StrokeError, match=r"point 0: expected a pair"):
        parse_stroke([1, 2])
    with pytest.raises(StrokeError) as err:
        parse_stroke({"stroke": []}, source="client")
    assert str(err.value).startswith("client: ")


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def test_load_strokes_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"frame": [512, 256], "strokes": [[[0, 0], [512, 256]]]}))
    assert as_lists(load_strokes_file(good)) == [[[0.0, 64.0], [256.0, 192.0]]]

    missing = tmp_path / "missing.json"
    with pytest.raises(StrokeError, match="cannot read") as err:
        load_strokes_file(missing)
    assert str(missing) in str(err.value)

    for name, content, match in [
        ("broken.json", b'{"strokes": [[[1, 2]]\n', r"invalid JSON at line \d+, column \d+"),
        ("binary.json", b"\xff\xfe\x00garbage", None),
        ("bad_point.json", b'{"strokes": [[[1, 2], [3, true]]]}', r"stroke 0, point 1: y is a boolean"),
    ]:
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(StrokeError, match=match) as err:
            load_strokes_file(bad)
        assert str(bad) in str(err.value)

    with pytest.raises(StrokeError, match="cannot read"):
        load_strokes_file(tmp_path)  # a directory


def test_as_stroke_is_the_one_check_before_drawing():
    from dcssa.runtime.stroke.parse import as_stroke, check_points

    arr = np.array([[1.0, 2.0], [3.5, 4.0]], dtype=np.float32)
    out = as_stroke(arr)
    assert out.dtype == np.float64 and out.flags.c_contiguous and np.array_equal(out, arr)
    assert np.array_equal(as_stroke([[1, 2], [3.5, 4]]), arr)  # JSON-like input is parsed
    with pytest.raises(StrokeError, match="point 1: y is NaN"):
        as_stroke(np.array([[0.0, 0.0], [1.0, np.nan]]))
    with pytest.raises(StrokeError, match="empty stroke"):
        as_stroke(np.zeros((0, 2)))
    with pytest.raises(StrokeError, match=r"point 0: expected a pair"):
        as_stroke(np.zeros((2, 3)))
    with pytest.raises(StrokeError, match="point 2: coordinate is not a finite number"):
        check_points(np.array([[0, 0, 0], [1, 1, 1], [np.inf, 2, 1]]))
    with pytest.raises(StrokeError, match="N x 3"):
        check_points(np.zeros((4, 2)))
