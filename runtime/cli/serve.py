"""``dcssa-rt serve``: the drawing page and the JSON/WebSocket API on one port (loopback by default).

Only click is imported at module level, so ``dcssa-rt --help`` works without the ``[serve]`` extra;
FastAPI and uvicorn are imported when the command runs.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import click

from ..contract.bundle import DEMO_WARNING
from ..errors import DcssaError
from ..extras import require
from .console import fail_cleanly, warn
from .options import bundle_option, gallery_option, output_options, runtime_options

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _bind(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn, so a busy port is one clear error (and --port 0 picks a free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DcssaError(f"cannot resolve --host {host!r} ({exc.strerror})", hint="use an IP address such as 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise DcssaError(f"cannot listen on {host}:{port} ({exc.strerror})",
                         hint="pick another --port (or --port 0 for any free one)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _warm_up(retriever) -> None:
    """One encoder pass and one head step before listening: the first user does not pay for them."""
    import numpy as np

    session = retriever.session()
    session.add_stroke(np.array([[64.0, 64.0], [192.0, 192.0]]))


def _check_store(store) -> None:
    """Warn (do not fail) when the shared store is down at start: requests get 503 until it is back."""
    if store.kind != "redis":
        return
    import asyncio

    async def ping() -> bool:
        try:
            return await store.ping()
        finally:
            await store.redis.aclose()  # the server's event loop opens its own connections

    if not asyncio.run(ping()):
        warn(f"the session store {store.url} does not answer; requests get 503 store_unavailable until it does")


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _server_modules():
    """uvicorn, ServeConfig and create_app: imported when serving, so the command loads without [serve]."""
    for module in ("fastapi", "uvicorn", "prometheus_client"):
        require(module, "dcssa-rt serve")
    import uvicorn

    from ..serve.app import ServeConfig, create_app

    return uvicorn, ServeConfig, create_app


def _retriever(bundle: Path, gallery: Path, photos: Path | None, **options):
    from ..contract.bundle import Bundle
    from ..search.gallery import Gallery
    from ..session import Retriever

    b = Bundle.load(bundle)
    g = Gallery.load(gallery, b)
    if photos is not None and not photos.is_dir():
        raise DcssaError("not a folder", path=photos, hint="pass the folder that was indexed")
    return Retriever(b, g, **options)


def _announce(r, config, *, url: str, host: str, photos_available: bool, as_json: bool) -> None:
    """Warnings on stderr, then the startup facts on stdout (one JSON line under --json)."""
    from ..serve.sessions import session_memory_bound

    mem = session_memory_bound(r)["total"]
    if r.bundle.demo:
        click.echo(DEMO_WARNING, err=True)
    if host not in LOOPBACK:
        warn(f"listening on {host}: there is no authentication; anyone who reaches it can use it")
    if r.confidence is None:
        warn("the gallery has no confidence calibrator: responses carry no confidence "
             "(fit one with `dcssa-rt calibrate-confidence`)")
    if not photos_available:
        warn("the photos folder is not available; thumbnails will 404 (pass --photos DIR)")
    facts = {"url": url, "backend": r.backend.name, "gallery": len(r.gallery), "max_sessions": config.max_sessions,
             "max_strokes": r.max_strokes, "session_memory_bound_bytes": mem,
             "max_batch": config.max_batch, "batch_window_ms": config.batch_window_ms,
             "confidence": r.confidence is not None, "confidence_threshold": config.confidence_threshold,
             "session_store": "memory" if config.session_store == "memory" else "redis"}
    if as_json:
        click.echo(json.dumps(facts))
    else:
        click.echo(f"serving {len(r.gallery)} photos with {r.backend.name} at {url}  "
                   f"(API spec {url}openapi.json, docs {url}docs)")
        if config.session_store != "memory":
            click.echo(f"sessions in {config.session_store} (shared by replicas); local cache of "
                       f"{config.max_sessions}, idle TTL {config.session_ttl:g} s")
        else:
            click.echo(f"sessions: at most {config.max_sessions}, idle TTL {config.session_ttl:g} s, "
                       f"{r.max_strokes} strokes each; memory bound {mem / 2**20:.1f} MiB per session, "
                       f"{mem * config.max_sessions / 2**30:.2f} GiB for all")
    click.echo("", nl=False)  # flush before uvicorn takes over stdout/stderr


@click.command("serve")
@bundle_option(demo_fallback=True)
@gallery_option
@click.option("--photos", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder of the catalogue photos [default: the folder recorded at indexing].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback: this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free port).")
@click.option("--max-sessions", type=click.IntRange(1), default=256, show_default=True,
              help="Sessions kept in memory; the least recently used is dropped beyond this "
                   "(with --session-store redis://: the size of this replica's local cache).")
@click.option("--session-ttl", type=click.FloatRange(1), default=1800.0, show_default=True,
              help="Seconds a session may stay idle before it is dropped.")
@click.option("--session-store", default="memory", show_default=True, metavar="memory|redis://HOST:PORT/DB",
              help="Where sessions live: this process's memory, or a Redis/Valkey server shared by every "
                   "replica (any replica then serves any stroke).")
@click.option("--store-timeout", type=click.FloatRange(0.05), default=2.0, show_default=True,
              help="Seconds before a session-store command gives up (the request then gets 503).")
@click.option("--max-batch", type=click.IntRange(1), default=8, show_default=True,
              help="Most strokes (of different sessions) per sketch-encoder call; 1 disables batching.")
@click.option("--batch-window-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How long the first waiting stroke waits for others to join its batch.")
@click.option("--max-queue", type=click.IntRange(1), default=256, show_default=True,
              help="Strokes waiting for the encoder before requests get 503.")
@click.option("--max-strokes", type=click.IntRange(1), default=None, help="Strokes per session [default: the bundle's].")
@click.option("--max-points", type=click.IntRange(1), default=4096, show_default=True, help="Points per stroke.")
@click.option("--max-body-kb", type=click.IntRange(1), default=1024, show_default=True, help="Request body / message size.")
@click.option("--topk", type=click.IntRange(1), default=10, show_default=True)
@click.option("--confidence-threshold", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True,
              help="Calibrated P(top-1 is the photo being drawn) at which responses say found=true and the page shows "
                   "'found it?' (needs GALLERY/confidence.json from `dcssa-rt calibrate-confidence`).")
@runtime_options()
@output_options(json="the startup facts (url, limits)")
def serve(bundle: Path, gallery: Path, photos: Path | None, host: str, port: int, max_sessions: int,
          session_ttl: float, session_store: str, store_timeout: float, max_batch: int, batch_window_ms: float,
          max_queue: int, max_strokes: int | None, max_points: int, max_body_kb: int, topk: int,
          confidence_threshold: float, backend: str, precision: str, threads: int | None,
          as_json: bool, quiet: bool) -> None:
    """Serve the drawing page (GET /) and the session API (/v1/..., spec at /openapi.json).

    Draw on the page: after every stroke the top-K catalogue photos appear. Sessions live in
    memory, or in Redis with --session-store redis://HOST:6379/0 (then run several replicas behind
    a load balancer, see deploy/); clients hold their strokes and rebuild a lost session with
    POST /v1/sessions.
    """
    with fail_cleanly():
        uvicorn, serve_config, create_app = _server_modules()
        if session_store != "memory":
            from ..serve.sessions import redis_url

            redis_url(session_store)  # a bad URL fails before the bundle loads
        r = _retriever(bundle, gallery, photos, backend=backend, precision=precision, topk=topk, threads=threads,
                       max_strokes=max_strokes)
        config = serve_config(max_sessions=max_sessions, session_ttl=session_ttl, session_store=session_store,
                              store_timeout=store_timeout, max_batch=max_batch,
                              batch_window_ms=batch_window_ms, max_queue=max_queue,
                              max_body_bytes=max_body_kb * 1024, max_points=max_points,
                              confidence_threshold=confidence_threshold)
        _warm_up(r)
        app = create_app(r, photos_root=photos, config=config)
        _check_store(app.state.service.store)
        sock = _bind(host, port)
        _announce(r, config, url=_url(sock), host=host, photos_available=app.state.service.photos.available,
                  as_json=as_json)
        server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning" if quiet or as_json else "info", access_log=not (quiet or as_json),
            ws_max_size=config.max_body_bytes, timeout_graceful_shutdown=5,
        ))
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
