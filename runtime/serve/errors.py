"""Server-side failures and the HTTP status each error maps to.

Errors a client can cause are 4xx; the server's own faults are 5xx, so a GPU failure never looks
like bad input. Every error is a JSON body ``{"error": kind, "message": ..., "hint": ...}``; the
kinds are also the ``kind`` label of the ``dcssa_errors_total`` metric.

- 4xx: the request (bad stroke, unknown session or photo, over a limit, wrong session state);
  429 ``rate_limited`` / ``too_many_sessions``: over a per-client limit, with Retry-After;
- 503 ``busy`` / ``backend_unavailable`` / ``store_unavailable``: the encoder queue is full, the
  backend failed to run (device lost, broken runtime), or the shared session store (Redis) is
  unreachable; all are worth a retry;
- 500 ``server_error``: any other :class:`DcssaError` while serving (a corrupted bundle or gallery
  file): the operator's problem, reported with its message and hint;
- 500 ``internal``: a bug; the client gets no details, the log gets the traceback.
"""

from __future__ import annotations

from ..errors import BackendError, DcssaError, SessionError, StrokeError


class SessionNotFound(DcssaError):
    """An id that was never issued, was deleted, expired (TTL) or was evicted (LRU cap)."""


class PhotoNotFound(DcssaError):
    """A photo id that is not in the gallery, or whose file is gone."""


class LimitExceeded(DcssaError):
    """A request over one of the server's size limits (body bytes, points per stroke, strokes)."""


class BadRequest(DcssaError):
    """A request the schema allows but the server cannot act on (several strokes where one is due)."""


class OutOfStep(SessionError):
    """The session holds another number of strokes than the client counted (``after``)."""


class RateLimited(DcssaError):
    """Over a per-client limit (strokes per second); ``retry_after``: whole seconds until it would pass."""

    def __init__(self, message: str, *, retry_after: float, hint: str | None = None) -> None:
        self.retry_after = max(1, int(retry_after))
        super().__init__(message, hint=hint)


class TooManySessions(RateLimited):
    """The client already holds ``--max-sessions-per-client`` live sessions."""


class ServerBusy(DcssaError):
    """The encoder queue is full: the client should retry shortly."""


class StoreUnavailable(DcssaError):
    """The shared session store (Redis) cannot be reached or failed: a server fault, worth a retry."""


# (exception class, HTTP status, error kind); the first matching class wins, so the catch-all
# DcssaError (a server fault) comes last.
STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (SessionNotFound, 404, "session_not_found"),
    (PhotoNotFound, 404, "photo_not_found"),
    (LimitExceeded, 413, "limit_exceeded"),
    (BadRequest, 422, "bad_request"),
    (StrokeError, 422, "bad_stroke"),
    (OutOfStep, 409, "session_out_of_step"),
    (TooManySessions, 429, "too_many_sessions"),
    (RateLimited, 429, "rate_limited"),
    (SessionError, 409, "session_state"),
    (ServerBusy, 503, "busy"),
    (StoreUnavailable, 503, "store_unavailable"),
    (BackendError, 503, "backend_unavailable"),
    (DcssaError, 500, "server_error"),
)

#: statuses a client may retry after a moment (sent with a Retry-After header)
RETRYABLE = frozenset({503})
RETRY_AFTER_S = 1


def retry_after(exc: BaseException, status: int) -> int | None:
    """Seconds for the Retry-After header: the limiter's own wait, or the fixed one of a 503."""
    if isinstance(exc, RateLimited):
        return exc.retry_after
    return RETRY_AFTER_S if status in RETRYABLE else None


def classify(exc: BaseException) -> tuple[int, str]:
    """HTTP status and error kind of an exception (500 / "internal" for a server bug)."""
    for cls, status, kind in STATUS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "internal"


def error_body(exc: BaseException) -> dict:
    """The JSON a client sees: never a traceback, and nothing of an unexpected exception."""
    _status, kind = classify(exc)
    if isinstance(exc, DcssaError):
        return {"error": kind, "message": exc.message, "hint": exc.hint}
    return {"error": kind, "message": "internal server error", "hint": "see the server log"}


def body_too_large(max_bytes: int, what: str = "request body") -> dict:
    """The 413 body, whether the limit is hit by a declared length, a streamed body or a ws message."""
    return {"error": "limit_exceeded", "message": f"{what} over {max_bytes} bytes",
            "hint": "send one stroke per request, or simplify strokes"}
