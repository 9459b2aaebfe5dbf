"""Request and response bodies of the API (pydantic), which also make the OpenAPI spec.

Numbers are strict and finite (no strings, booleans, NaN or infinities) so malformed input is a
422 before it reaches the runtime; the runtime's own stroke parser then maps frames and names the
offending stroke and point for anything the schema cannot say.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict

Num = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Positive = Annotated[float, Strict(), Field(allow_inf_nan=False, gt=0)]
Point = tuple[Num, Num]
Frame = tuple[Positive, Positive]
Stroke = Annotated[list[Point], Field(min_length=1)]
Row = tuple[Num, Num, Num]
Coords = Annotated[list[Num], Field(min_length=1)]

_STROKE_EXAMPLE = {"stroke": [[10, 20], [120, 40], [200, 210]], "frame": [400, 300]}


class StrokeIn(BaseModel):
    """ONE stroke, in any of the runtime's forms (exactly one of stroke, strokes, points, drawing).

    ``frame`` [w, h]: the coordinates' frame (e.g. the canvas size in CSS pixels); they are scaled
    uniformly into the model's 256 frame and centred. Without it they are taken as 256-frame.
    Beyond this schema (422 otherwise): exactly one form key; a drawing's x and y lists of equal
    length; at most the server's --max-points points.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_STROKE_EXAMPLE]})

    stroke: Stroke | None = Field(None, description="[[x, y], ...]")
    strokes: Annotated[list[Stroke], Field(min_length=1, max_length=1)] | None = Field(
        None, description="[[[x, y], ...]] holding one stroke")
    points: Annotated[list[Row], Field(min_length=1)] | None = Field(
        None, description="QMUL [[x, y, pen_up], ...] of one stroke (pen_up 0 or 1)")
    drawing: Annotated[list[tuple[Coords, Coords]], Field(min_length=1, max_length=1)] | None = Field(
        None, description="QuickDraw [[[x, ...], [y, ...]]]")
    frame: Frame | None = None
    after: Annotated[int, Strict(), Field(ge=0)] | None = Field(
        None, description="strokes the client had sent before this one; makes a retried stroke safe: if the "
                          "server already applied it (the reply was lost), it is not applied twice, and a "
                          "session out of step with the client is a 409 session_out_of_step")


class SketchIn(BaseModel):
    """The strokes drawn so far (any whole-sketch form), to rebuild a session; empty for a new one.

    Beyond this schema (422 otherwise): one form key; equal x and y lengths in a drawing; pen_up 0
    or 1; at most the server's --max-points per stroke and its stroke bound per session.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}, {"strokes": [[[10, 20], [90, 90]]], "frame": [400, 300]}]})

    strokes: list[Stroke] | None = None
    points: list[Row] | None = None
    drawing: list[tuple[Coords, Coords]] | None = None
    frame: Frame | None = None


class Match(BaseModel):
    id: str
    score: float
    url: str = Field(description="GET it for a thumbnail (add ?size=full for the original file)")


class Confidence(BaseModel):
    """Calibrated probabilities of the latest stroke; present only when the gallery has a calibrator."""

    top1: float = Field(description="P(the first result is the photo being drawn)")
    top10: float = Field(description="P(the photo being drawn is among the first 10 results)")
    threshold: float = Field(description="the server's --confidence-threshold on top1")
    found: bool = Field(description="top1 >= threshold: the page shows its 'found it?' indicator")


class SessionState(BaseModel):
    """A session after an operation: its stroke count and the top-K of its latest stroke."""

    id: str
    stroke: int = Field(description="strokes in the session now")
    results: list[Match]
    timings_ms: dict[str, float] = Field(
        default_factory=dict, description="per phase of this stroke: rasterise, preprocess, queue, encode, head, search, total"
    )
    batch_size: int | None = Field(None, description="strokes (of all sessions) in this stroke's encoder call")
    confidence: Confidence | None = Field(
        None, description="absent without a fitted calibrator (`dcssa-rt calibrate-confidence`) or without strokes")
    catalogue: str | None = Field(
        None, description="fingerprint of the catalogue that ranked these results (changes when the operator "
                          "reloads the gallery; during a rolling update replicas may differ)")


class ErrorOut(BaseModel):
    error: str = Field(description="kind, e.g. session_not_found, bad_stroke, invalid_request, limit_exceeded "
                                   "(4xx: the request); busy, backend_unavailable, store_unavailable, server_error, "
                                   "internal (5xx: the server)")
    message: str
    hint: str | None = None


class Health(BaseModel):
    status: Literal["ok", "draining"] = Field(description="draining (HTTP 503): stopping after SIGTERM, send elsewhere")
    catalogue: str | None = Field(None, description="fingerprint of the catalogue this replica searches now")
    family: str = Field(description="model family of the bundle: dcssa or arnet")
    sessions: int = Field(description="sessions held by this process (with a shared store: its local cache)")
    session_store: str = Field(description="memory, or redis (sessions shared by every replica)")
    max_sessions: int
    gallery: int
    backend: str
    max_batch: int
    batch_window_ms: float
    session_memory_bound_bytes: int
    photos: bool
    confidence: bool = Field(description="the gallery has a confidence calibrator (results carry probabilities)")
    confidence_threshold: float


ERRORS = {
    400: {"model": ErrorOut, "description": "body is not UTF-8 JSON text"},
    404: {"model": ErrorOut, "description": "unknown or expired session"},
    409: {"model": ErrorOut, "description": "session bound reached, nothing to undo (session_state), or the "
                                            "session holds another stroke count than `after` said (session_out_of_step)"},
    413: {"model": ErrorOut, "description": "request body over the limit"},
    422: {"model": ErrorOut, "description": "malformed strokes or JSON"},
    500: {"model": ErrorOut, "description": "server fault: server_error (a corrupted bundle or gallery file: the "
                                            "operator's to fix, see hint) or internal (a bug; see the server log)"},
    503: {"model": ErrorOut, "description": "retry shortly (Retry-After): busy (encoder queue full), "
                                            "backend_unavailable (the encoder backend failed, e.g. a GPU fault) or "
                                            "store_unavailable (the shared session store, Redis, is unreachable)"},
}
