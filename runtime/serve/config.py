"""Every setting of ``dcssa-rt serve``, each with its one default and help: the CLI options are made from them.

:class:`ServeConfig` is what a running app needs (limits, batching, the session store);
:class:`ServeOptions` adds what starting one needs (address, photos, the retriever's top-K and stroke
bound). Only click and the options machinery are imported, so the command registers without FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from ..options import setting
from ..session import DEFAULT_TOPK

KB = 1024
#: --host values only this machine reaches (any other gets a no-authentication warning at start)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class ServeConfig:
    """Server limits and batching; each field is a ``dcssa-rt serve`` flag."""

    max_sessions: int = setting(
        256, "Sessions kept in memory; the least recently used is dropped beyond this "
             "(with --session-store redis://: the size of this replica's local cache).", type=click.IntRange(1))
    session_ttl: float = setting(1800.0, "Seconds a session may stay idle before it is dropped.",
                                 type=click.FloatRange(1))
    session_store: str = setting(
        "memory", "Where sessions live: this process's memory, or a Redis/Valkey server shared by every "
                  "replica (any replica then serves any stroke).", metavar="memory|redis://HOST:PORT/DB")
    store_timeout: float = setting(
        2.0, "Seconds before a session-store command gives up (the request then gets 503).",
        type=click.FloatRange(0.05))
    max_batch: int = setting(8, "Most strokes (of different sessions) per sketch-encoder call; 1 disables batching.",
                             type=click.IntRange(1))
    batch_window_ms: float = setting(5.0, "How long the first waiting stroke waits for others to join its batch.",
                                     type=click.FloatRange(0))
    max_queue: int = setting(256, "Strokes waiting for the encoder before requests get 503.", type=click.IntRange(1))
    max_points: int = setting(4096, "Points per stroke.", type=click.IntRange(1))
    max_body_bytes: int = setting(1 << 20, "Request body / message size.", flag="--max-body-kb",
                                  type=click.IntRange(1), to_cli=lambda n: n // KB, from_cli=lambda kb: kb * KB)
    confidence_threshold: float = setting(
        0.9, "Calibrated P(top-1 is the photo being drawn) at which responses say found=true and the page shows "
             "'found it?' (needs GALLERY/confidence.json from `dcssa-rt calibrate-confidence`).",
        type=click.FloatRange(0, 1, min_open=True))
    admin: str | None = setting(
        None, "The principal (an --api-keys name) allowed to POST /v1/admin/reload [default: nobody; SIGHUP "
              "reloads the catalogue either way].", metavar="NAME")
    grace_period: float = setting(
        10.0, "Seconds SIGTERM waits for in-flight requests before the process exits (WebSockets are closed "
              "at once with 1012, service restart: clients reconnect).", type=click.FloatRange(0))
    drain_delay: float = setting(
        0.0, "Seconds between SIGTERM and closing the listening socket, while /healthz answers 503 draining and "
             "requests are still served: your balancer's health-check interval (nginx retries a closed port at "
             "once, so 0 suffices behind deploy/nginx.conf).", type=click.FloatRange(0))

    def __post_init__(self) -> None:
        small = [k for k in ("max_sessions", "max_batch", "max_queue", "max_body_bytes", "max_points")
                 if getattr(self, k) < 1]
        if not 0 < self.confidence_threshold <= 1:
            raise ValueError("ServeConfig: confidence_threshold must lie in (0, 1]")
        if small or self.session_ttl <= 0 or self.batch_window_ms < 0 or self.store_timeout <= 0:
            raise ValueError(f"ServeConfig: {', '.join(small) or 'session_ttl / batch_window_ms / store_timeout'} "
                             "out of range")


@dataclass(frozen=True)
class ServeOptions:
    """What ``dcssa-rt serve`` starts: where it listens, the photos, the retriever's settings, the app's config."""

    photos: Path | None = setting(None, "Folder of the catalogue photos [default: the folder recorded at indexing].",
                                  type=click.Path(path_type=Path, file_okay=False))
    host: str = setting("127.0.0.1", "Address to listen on (loopback: this machine only).")
    port: int = setting(8000, "Port (0: any free port).", type=click.IntRange(0, 65535))
    topk: int = setting(DEFAULT_TOPK, type=click.IntRange(1))
    max_strokes: int | None = setting(None, "Strokes per session [default: the bundle's].", type=click.IntRange(1))
    config: ServeConfig = field(default_factory=ServeConfig)
