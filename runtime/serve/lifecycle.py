"""Stopping a replica for a deploy without dropping a stroke.

SIGTERM: ``/healthz`` turns 503 ``draining`` at once (balancers with health checks stop sending),
requests keep being served for ``--drain-delay`` seconds, then the listening socket closes (nginx
gets "connection refused" and passes the request to another replica: nothing was sent, so even a
POST is safe to pass on), idle keep-alive connections are closed, WebSockets are closed with 1012
(service restart: the client reconnects through the balancer and re-sends with ``after``), and
requests in flight finish within ``--grace-period`` seconds. Then the encoder queue is drained and
the process exits 0. A second SIGTERM (or Ctrl-C) skips the delay; a third stops at once.

uvicorn's own handler re-raises the signal after shutting down (the process would die by SIGTERM,
exit status 143); the handler here does not, so a clean drain exits 0 for the orchestrator.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

from ..extras import require

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("dcssa.serve")


def on_exit_signal(server: Any, service: Any, sig: int, _frame: Any = None) -> None:
    """uvicorn's ``handle_exit`` for a graceful drain (see the module docstring)."""
    if server.should_exit:
        server.force_exit = True  # the third signal: do not wait for anything
        return
    if service.draining or sig != signal.SIGTERM or service.config.drain_delay <= 0:
        service.draining = True
        server.should_exit = True
        log.warning("stopping: no new connections; in-flight requests get %g s", service.config.grace_period)
        return
    service.draining = True
    log.warning("draining: /healthz answers 503 for %g s, then stopping", service.config.drain_delay)
    timer = threading.Timer(service.config.drain_delay, lambda: setattr(server, "should_exit", True))
    timer.daemon = True
    timer.start()


def make_server(app: FastAPI, *, quiet: bool) -> Any:
    """A uvicorn server for ``app`` whose SIGTERM/SIGINT drain it (see the module docstring)."""
    uvicorn = require("uvicorn", "dcssa-rt serve")
    service = app.state.service
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning" if quiet else "info", access_log=not quiet,
        ws_max_size=service.config.max_body_bytes, timeout_graceful_shutdown=service.config.grace_period,
    ))
    server.handle_exit = lambda sig, frame: on_exit_signal(server, service, sig, frame)
    return server
