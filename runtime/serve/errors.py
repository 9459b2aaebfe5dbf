"""Server-side failures and the HTTP status each user-facing error maps to.

Every error a client can cause becomes a 4xx JSON body ``{"error": kind, "message": ..., "hint": ...}``;
the kinds are also the ``kind`` label of the ``dcssa_errors_total`` metric.
"""

from __future__ import annotations

from ..errors import DcssaError, SessionError, StrokeError


class SessionNotFound(DcssaError):
    """An id that was never issued, was deleted, expired (TTL) or was evicted (LRU cap)."""


class PhotoNotFound(DcssaError):
    """A photo id that is not in the gallery, or whose file is gone."""


class LimitExceeded(DcssaError):
    """A request over one of the server's size limits (body bytes, points per stroke, strokes)."""


class BadRequest(DcssaError):
    """A request the schema allows but the server cannot act on (several strokes where one is due)."""


class ServerBusy(DcssaError):
    """The encoder queue is full: the client should retry shortly."""


# (exception class, HTTP status, error kind); the first matching class wins.
STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (SessionNotFound, 404, "session_not_found"),
    (PhotoNotFound, 404, "photo_not_found"),
    (LimitExceeded, 413, "limit_exceeded"),
    (BadRequest, 422, "bad_request"),
    (ServerBusy, 503, "busy"),
    (StrokeError, 422, "bad_stroke"),
    (SessionError, 409, "session_state"),
    (DcssaError, 400, "bad_request"),
)


def classify(exc: BaseException) -> tuple[int, str]:
    """HTTP status and error kind of an exception (500 / "internal" for a server bug)."""
    for cls, status, kind in STATUS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "internal"


def error_body(exc: BaseException) -> dict:
    """The JSON a client sees: never a traceback."""
    status, kind = classify(exc)
    if isinstance(exc, DcssaError):
        return {"error": kind, "message": exc.message, "hint": exc.hint}
    return {"error": kind, "message": "internal server error", "hint": "see the server log"}
