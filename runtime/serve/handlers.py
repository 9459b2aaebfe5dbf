"""Exceptions -> JSON error responses, for HTTP and WebSocket alike; server faults are logged.

Which status and kind an exception gets is decided in :mod:`.errors`; here every error is counted
in the metrics and every server fault (5xx other than a full queue) reaches the log with its
traceback, so the operator sees what the client only gets a one-line message about.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import DcssaError
from .errors import RETRY_AFTER_S, RETRYABLE, body_too_large, classify, error_body, retry_after
from .metrics import Metrics

log = logging.getLogger("dcssa.serve")

_QUIET = frozenset({"busy"})  # expected under load: counted, not logged per request


def validation_message(errors: list[dict[str, Any]]) -> str:
    """pydantic's errors as one line: the first three, located, and how many more."""
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ()))
        msg = e.get("msg", "invalid")
        if e.get("type") == "json_invalid":
            msg = f"invalid JSON ({e.get('ctx', {}).get('error', 'decode error')})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def invalid_request(errors: list[dict[str, Any]]) -> dict:
    return {"error": "invalid_request", "message": validation_message(errors),
            "hint": "see the request schemas at /docs or /openapi.json"}


def report(exc: BaseException, metrics: Metrics, where: str = "a request") -> tuple[int, dict]:
    """Status and body of an exception raised while serving; counts it, logs it if it is a server fault."""
    status, kind = classify(exc)
    if status >= 500 and kind not in _QUIET:
        log.error("%s on %s: %s", kind, where, exc, exc_info=exc)
    metrics.errors.labels(kind).inc()
    return status, error_body(exc)


def respond(status: int, body: dict, metrics: Metrics | None = None, wait: int | None = None) -> JSONResponse:
    """The JSON response; counted when ``metrics`` is given (not yet counted by :func:`report`);
    ``wait``: the Retry-After seconds [default: the fixed one of a retry-able status]."""
    if metrics is not None:
        metrics.errors.labels(body["error"]).inc()
    if wait is None and status in RETRYABLE:
        wait = RETRY_AFTER_S
    headers = {"Retry-After": str(wait)} if wait is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


def http_error_body(exc: StarletteHTTPException, max_body_bytes: int) -> dict:
    if exc.status_code == 413:
        return body_too_large(max_body_bytes)
    if exc.status_code == 400:  # FastAPI: a body it cannot decode (not UTF-8, say)
        return {"error": "invalid_request", "message": f"unreadable request body ({exc.detail})",
                "hint": "send UTF-8 JSON with Content-Type: application/json"}
    return {"error": f"http_{exc.status_code}", "message": str(exc.detail), "hint": "see /docs for the API"}


def install_handlers(app: FastAPI, metrics: Metrics, max_body_bytes: int) -> None:
    """Every error the app answers becomes ``{error, message, hint}`` with its status."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(422, invalid_request(exc.errors()), metrics)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return respond(exc.status_code, http_error_body(exc, max_body_bytes), metrics)

    async def _raised(req: Request, exc: Exception) -> JSONResponse:
        route = getattr(req.scope.get("route"), "path", req.url.path)  # the template: no session ids in logs
        status, body = report(exc, metrics, f"{req.method} {route}")
        return respond(status, body, wait=retry_after(exc, status))

    # DcssaError gets its own registration: a handler for Exception alone runs in Starlette's
    # outermost middleware, which re-raises after answering (a second traceback in the server log).
    app.add_exception_handler(DcssaError, _raised)
    app.add_exception_handler(Exception, _raised)
