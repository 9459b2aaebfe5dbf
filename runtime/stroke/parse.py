"""Stroke input formats -> strokes in the model's 256 frame.

Sketches arrive as JSON from files, web clients and datasets. Everything is normalised here into a
list of ``(n, 2)`` float64 arrays in the 256 x 256 frame the model was trained on, and every way
the input can be wrong becomes a :class:`StrokeError` naming the stroke and point, so a user can find
the bad value instead of reading a numpy traceback. Indices in messages count from 0, like the JSON
arrays they point into. Points outside the frame are legal: the rasteriser just does not draw them.

What the parsers return is a :class:`CheckedStroke`: a session draws it without checking it again, so
a stroke is validated once, where it enters (a file, a request body, a dataset, :func:`as_stroke`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from ..contract.recipes import SketchRecipe
from ..errors import StrokeError

__all__ = [
    "MODEL_FRAME",
    "CheckedStroke",
    "as_stroke",
    "check_points",
    "load_strokes_file",
    "parse_stroke",
    "parse_strokes",
    "points_to_strokes",
    "strokes_to_points",
]

#: the square frame strokes are normalised into: the sketch recipe's (DC-SSA: 256)
MODEL_FRAME = SketchRecipe().frame

_FORMS_HINT = (
    'use one of: {"strokes": [[[x, y], ...], ...], "frame": [w, h]} (frame optional), '
    '{"points": [[x, y, pen_up], ...]} (QMUL, pen_up = 1 ends a stroke), or '
    '{"drawing": [[[x, ...], [y, ...]], ...]} (QuickDraw simplified)'
)
_FORM_KEYS = ("strokes", "points", "drawing")
_PAIR_TYPES = {list, tuple}
_JSON_NUMBERS = {int, float}  # exact types: bool (an int) and numpy scalars take the point-by-point path
_FRAME_HINT = 'send canvas coordinates with "frame": [canvas width, canvas height]'


class CheckedStroke(np.ndarray):
    """A stroke this module has checked: ``(n >= 1, 2)`` finite float64 points in the model frame, read-only.

    :func:`as_stroke` hands it back as it is, in O(1), so the layers below the boundary that parsed a
    stroke never check it again. Only :func:`_checked` marks one as checked; arrays derived from it
    (slices, arithmetic, copies, unpickled ones) are not marked and go through :func:`as_stroke`'s check.
    """

    checked = False


def _checked(xy: np.ndarray) -> CheckedStroke:
    """``xy`` (a fresh ``(n >= 1, 2)`` finite float64 array nobody else holds) marked as checked."""
    out = np.ascontiguousarray(xy, dtype=np.float64).view(CheckedStroke)
    out.flags.writeable = False
    out.checked = True
    return out


def _kind(value: Any) -> str:
    """Short JSON-ish type name for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


def _number(value: Any, where: str, source: str | None, what: str = "coordinate") -> float:
    """A finite float from a JSON number; bools, strings, NaN and inf are rejected."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise StrokeError(f"{where}: {what} is {_kind(value)}, not a number", path=source)
    try:
        out = float(value)
    except OverflowError:
        raise StrokeError(f"{where}: {what} is too large", path=source) from None
    if math.isnan(out):
        raise StrokeError(f"{where}: {what} is NaN", path=source)
    if math.isinf(out):
        raise StrokeError(f"{where}: {what} is infinite", path=source)
    return out


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _parse_frame(frame: Any, source: str | None) -> tuple[float, float] | None:
    """``[w, h]`` as two positive finite floats, or None when absent."""
    if frame is None:
        return None
    hint = 'give "frame": [width, height] with two positive numbers, e.g. [800, 600]'
    if not _is_list(frame) or len(frame) != 2:
        raise StrokeError(f"frame must be two positive numbers [w, h], got {_kind(frame)}", path=source, hint=hint)
    try:
        w = _number(frame[0], "frame", source, "width")
        h = _number(frame[1], "frame", source, "height")
    except StrokeError as exc:
        reason = exc.message.removeprefix("frame: ")
        raise StrokeError(f"frame must be two positive numbers [w, h]; {reason}", path=source, hint=hint) from None
    if w <= 0 or h <= 0:
        raise StrokeError(f"frame must be two positive numbers [w, h], got [{w:g}, {h:g}]", path=source, hint=hint)
    return w, h


def _to_model_frame(xy: np.ndarray, frame: tuple[float, float] | None, label: str, source: str | None) -> CheckedStroke:
    """Scale uniformly so the longer side spans 256, and centre the shorter side.

    ``xy`` holds finite numbers; an extreme frame can still scale them past float64, which is refused here.
    """
    if frame is None:
        return _checked(xy)
    w, h = frame
    with np.errstate(over="ignore", invalid="ignore"):
        s = MODEL_FRAME / max(w, h)
        out = xy * s
        out[:, 0] += (MODEL_FRAME - s * w) / 2.0
        out[:, 1] += (MODEL_FRAME - s * h) / 2.0
    bad = _first_bad_row(out)
    if bad is not None:
        raise StrokeError(f"{label}, point {bad}: out of range once mapped into the 256 model frame",
                          path=source, hint=_FRAME_HINT)
    return _checked(out)


def _plain_pairs(stroke: list | tuple) -> np.ndarray | None:
    """``stroke`` as ``(n, 2)`` float64 in one numpy call when it is plainly valid: lists of two finite
    JSON numbers (what a request body holds once its schema passed, or a well-formed file). None sends
    it point by point through :func:`_pair_stroke`, which accepts the same and names what is wrong."""
    if not set(map(type, stroke)) <= _PAIR_TYPES or not set(map(type, chain.from_iterable(stroke))) <= _JSON_NUMBERS:
        return None  # bools, strings, numpy scalars, nesting: the slow path decides
    try:
        out = np.array(stroke, dtype=np.float64)
    except (OverflowError, ValueError):  # an int past float64, ragged points
        return None
    return out if out.shape == (len(stroke), 2) and np.isfinite(out).all() else None


def _pair_stroke(stroke: Any, label: str, source: str | None) -> np.ndarray:
    """``[[x, y], ...]`` -> ``(n, 2)`` float64; ``label`` prefixes messages ("stroke 3")."""
    if not _is_list(stroke):
        raise StrokeError(f"{label}: expected a list of [x, y] points, got {_kind(stroke)}", path=source)
    if len(stroke) == 0:
        raise StrokeError(f"{label}: empty stroke (a stroke needs at least one point)", path=source)
    out = _plain_pairs(stroke)
    if out is not None:
        return out
    out = np.empty((len(stroke), 2), dtype=np.float64)
    for j, point in enumerate(stroke):
        where = f"{label}, point {j}"
        if not _is_list(point) or len(point) != 2:
            raise StrokeError(f"{where}: expected a pair [x, y], got {_kind(point)}", path=source)
        out[j, 0] = _number(point[0], where, source, "x")
        out[j, 1] = _number(point[1], where, source, "y")
    return out


def _parse_strokes_form(doc: Mapping[str, Any], source: str | None) -> list[np.ndarray]:
    strokes = doc["strokes"]
    if not _is_list(strokes):
        raise StrokeError(f'"strokes" must be a list of strokes, got {_kind(strokes)}', path=source)
    return [_pair_stroke(stroke, f"stroke {i}", source) for i, stroke in enumerate(strokes)]


def _parse_points_form(doc: Mapping[str, Any], source: str | None) -> list[np.ndarray]:
    points = doc["points"]
    if not _is_list(points):
        raise StrokeError(f'"points" must be a list of [x, y, pen_up] rows, got {_kind(points)}', path=source)
    strokes: list[np.ndarray] = []
    current: list[tuple[float, float]] = []
    for j, row in enumerate(points):
        where = f"stroke {len(strokes)}, point {j}"
        if not _is_list(row) or len(row) != 3:
            raise StrokeError(f"{where}: expected [x, y, pen_up], got {_kind(row)}", path=source)
        x = _number(row[0], where, source, "x")
        y = _number(row[1], where, source, "y")
        pen = _number(row[2], where, source, "pen_up")
        if pen not in (0.0, 1.0):
            raise StrokeError(f"{where}: pen_up must be 0 or 1, got {pen:g}", path=source)
        current.append((x, y))
        if pen == 1.0:
            strokes.append(np.asarray(current, dtype=np.float64))
            current = []
    if current:  # a last stroke without its closing pen_up still counts
        strokes.append(np.asarray(current, dtype=np.float64))
    return strokes


def _parse_drawing_form(doc: Mapping[str, Any], source: str | None) -> list[np.ndarray]:
    drawing = doc["drawing"]
    if not _is_list(drawing):
        raise StrokeError(f'"drawing" must be a list of [[x...], [y...]] strokes, got {_kind(drawing)}', path=source)
    strokes: list[np.ndarray] = []
    for i, stroke in enumerate(drawing):
        label = f"stroke {i}"
        # [xs, ys] (simplified) or [xs, ys, ts] (raw, timings ignored)
        if not _is_list(stroke) or len(stroke) not in (2, 3) or not all(_is_list(v) for v in stroke):
            raise StrokeError(f"{label}: expected [[x, ...], [y, ...]], got {_kind(stroke)}", path=source)
        xs, ys = stroke[0], stroke[1]
        if len(xs) != len(ys):
            raise StrokeError(f"{label}: {len(xs)} x values but {len(ys)} y values", path=source)
        if len(xs) == 0:
            raise StrokeError(f"{label}: empty stroke (a stroke needs at least one point)", path=source)
        out = np.empty((len(xs), 2), dtype=np.float64)
        for j, (x, y) in enumerate(zip(xs, ys)):
            where = f"{label}, point {j}"
            out[j, 0] = _number(x, where, source, "x")
            out[j, 1] = _number(y, where, source, "y")
        strokes.append(out)
    return strokes


def parse_strokes(doc: Any, source: str | Path | None = None) -> list[CheckedStroke]:
    """A loaded JSON sketch in any accepted form -> strokes ``(n, 2)`` in the 256 frame.

    ``source`` (a file name) is only used to prefix error messages. An optional ``"frame": [w, h]``
    is honoured in every form (QuickDraw simplified data is already 0..255, i.e. the 256 frame).
    """
    src = None if source is None else str(source)
    if not isinstance(doc, Mapping):
        raise StrokeError(f"a sketch must be a JSON object, got {_kind(doc)}", path=src, hint=_FORMS_HINT)
    present = [k for k in _FORM_KEYS if k in doc]
    if not present:
        keys = ", ".join(repr(k) for k in list(doc)[:5]) or "none"
        raise StrokeError(f"unknown sketch format (keys: {keys})", path=src, hint=_FORMS_HINT)
    if len(present) > 1:
        raise StrokeError(
            f"ambiguous sketch: it has both {present[0]!r} and {present[1]!r}", path=src, hint=_FORMS_HINT
        )
    frame = _parse_frame(doc.get("frame"), src)
    form = present[0]
    if form == "strokes":
        strokes = _parse_strokes_form(doc, src)
    elif form == "points":
        strokes = _parse_points_form(doc, src)
    else:
        strokes = _parse_drawing_form(doc, src)
    if not strokes:
        raise StrokeError(f'the sketch has no strokes ("{form}" is empty)', path=src)
    return [_to_model_frame(s, frame, f"stroke {i}", src) for i, s in enumerate(strokes)]


def parse_stroke(obj: Any, frame: Any = None, source: str | Path | None = None) -> CheckedStroke:
    """One stroke as a client posts it, ``[[x, y], ...]`` -> ``(n, 2)`` in the 256 frame."""
    src = None if source is None else str(source)
    return _to_model_frame(_pair_stroke(obj, "stroke", src), _parse_frame(frame, src), "stroke", src)


def _first_bad_row(arr: np.ndarray) -> int | None:
    bad = ~np.isfinite(arr).all(axis=1)
    return int(np.nonzero(bad)[0][0]) if bad.any() else None


def as_stroke(stroke: Any, source: str | Path | None = None) -> np.ndarray:
    """The one check every stroke passes before drawing: ``(n, 2)`` finite float64, ``n >= 1``.

    A :class:`CheckedStroke` was checked where it was parsed and is returned as it is. Another ndarray
    of that shape is checked in bulk (the fast path of a live session); anything else is parsed as a
    JSON stroke ``[[x, y], ...]``, with the offending point named on error.
    """
    if type(stroke) is CheckedStroke and stroke.checked:
        return stroke
    if not (isinstance(stroke, np.ndarray) and stroke.ndim == 2 and stroke.shape[1] == 2 and len(stroke)):
        return parse_stroke(stroke.tolist() if isinstance(stroke, np.ndarray) else stroke, source=source)
    arr = np.ascontiguousarray(stroke, dtype=np.float64)
    bad = _first_bad_row(arr)
    if bad is not None:
        return parse_stroke(arr.tolist(), source=source)  # raises, naming the point and coordinate
    return arr


def check_points(points: Any) -> np.ndarray:
    """A whole sketch as ``N x 3`` (x, y, pen_up) rows with finite coordinates (float64)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise StrokeError(f"points must be an N x 3 array (x, y, pen_up), got shape {pts.shape}")
    bad = _first_bad_row(pts[:, :2])
    if bad is not None:
        raise StrokeError(f"point {bad}: coordinate is not a finite number")
    return pts


def strokes_to_points(strokes: list[np.ndarray]) -> np.ndarray:
    """Strokes -> ``N x 3`` (x, y, pen_up) rows, pen_up = 1 on each stroke's last point."""
    parts = []
    for stroke in strokes:
        xy = np.asarray(stroke, dtype=np.float64).reshape(-1, 2)
        if len(xy) == 0:
            continue
        rows = np.zeros((len(xy), 3), dtype=np.float64)
        rows[:, :2] = xy
        rows[-1, 2] = 1.0
        parts.append(rows)
    return np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.float64)


def points_to_strokes(points: np.ndarray) -> list[CheckedStroke]:
    """``N x 3`` rows -> checked strokes, split after each pen_up; a trailing open stroke still counts."""
    pts = check_points(points)
    ends = np.nonzero(pts[:, 2] == 1)[0] + 1
    return [_checked(part[:, :2].copy()) for part in np.split(pts, ends) if len(part)]


def load_strokes_file(path: str | Path) -> list[CheckedStroke]:
    """Read and parse a JSON sketch file; unreadable files and bad JSON name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StrokeError(f"cannot read strokes file: {reason}", path=path) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StrokeError(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", path=path
        ) from None
    return parse_strokes(doc, source=path)
