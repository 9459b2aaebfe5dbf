"""Request bodies -> strokes in the model frame, within the server's limits.

This is the server's boundary: the schema (pydantic) has refused what JSON Schema can say (types,
shapes); the runtime's stroke parser checks the rest, maps frames and returns
:class:`~dcssa.runtime.stroke.parse.CheckedStroke` s, which the session draws without a second look.
Here only what is the server's own is added: one stroke form per body, one stroke per stroke
request, and the limits it was started with.
"""

from __future__ import annotations

import numpy as np

from ..errors import StrokeError
from ..stroke.parse import CheckedStroke, parse_stroke, parse_strokes
from .errors import BadRequest
from .schemas import SketchIn, StrokeIn

FORMS = ("stroke", "strokes", "points", "drawing")

# The rasteriser scales in float32 like the reference; beyond this a coordinate would overflow.
MAX_COORD = 1e30


def check_limits(strokes: list[CheckedStroke], limit: int) -> None:
    """Refuse a stroke over ``limit`` points, or with a coordinate outside the float32-safe range
    (the strokes are parsed, hence finite)."""
    for i, s in enumerate(strokes):
        where = "the stroke" if len(strokes) == 1 else f"stroke {i}"
        if len(s) > limit:
            raise StrokeError(f"{where} has {len(s)} points, over the server's limit of {limit}",
                              hint="simplify the stroke on the client (drop points closer than a pixel)")
        big = np.abs(s) > MAX_COORD
        if big.any():
            j = int(np.nonzero(big.any(axis=1))[0][0])
            raise StrokeError(f"{where}, point {j}: out of range once mapped into the 256 model frame "
                              f"(|coordinate| must stay below {MAX_COORD:g})",
                              hint='send canvas coordinates with "frame": [canvas width, canvas height]')


def stroke_from(body: StrokeIn, max_points: int) -> CheckedStroke:
    """The single stroke of a request body, as (n, 2) in the 256 frame."""
    doc = body.model_dump(exclude_none=True, exclude={"after"})
    forms = [k for k in FORMS if k in doc]
    if len(forms) != 1:
        what = "no stroke" if not forms else f"both {forms[0]!r} and {forms[1]!r}"
        raise BadRequest(f"the body has {what}", hint='send exactly one of "stroke", "strokes", "points", "drawing" '
                         '(e.g. {"stroke": [[x, y], ...], "frame": [w, h]})')
    if forms[0] == "stroke":
        strokes = [parse_stroke(doc["stroke"], frame=doc.get("frame"))]
    else:
        strokes = parse_strokes(doc)
    if len(strokes) != 1:
        raise BadRequest(f"the body holds {len(strokes)} strokes; this endpoint takes one",
                         hint="send strokes one request at a time, or rebuild a session with POST /v1/sessions")
    check_limits(strokes, max_points)
    return strokes[0]


def sketch_from(body: SketchIn | None, max_points: int) -> list[CheckedStroke]:
    """All strokes of a session-creation body (none for an empty body)."""
    doc = {} if body is None else body.model_dump(exclude_none=True)
    forms = [k for k in FORMS if k in doc]
    if not forms or (len(forms) == 1 and len(doc[forms[0]]) == 0):
        return []
    strokes = parse_strokes(doc)
    check_limits(strokes, max_points)
    return strokes
