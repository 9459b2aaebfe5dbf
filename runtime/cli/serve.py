"""``dcssa-rt serve``: the drawing page and the JSON/WebSocket API on one port (loopback by default).

The options are made from :class:`~dcssa.runtime.serve.config.ServeOptions` and
:class:`~dcssa.runtime.serve.config.ServeConfig` (each default written there, once). Only click and
those settings are imported at module level, so ``dcssa-rt --help`` works without the ``[serve]``
extra; FastAPI and uvicorn are imported when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..contract.bundle import DEMO_WARNING
from ..extras import require
from ..options import click_options, from_cli
from ..serve.config import LOOPBACK, ServeConfig, ServeOptions
from .console import fail_cleanly, warn
from .options import bundle_option, gallery_option, output_options, runtime_options


def _server_modules():
    """The start-up steps and create_app: imported when serving, so the command loads without [serve]."""
    for module in ("fastapi", "uvicorn", "prometheus_client"):
        require(module, "dcssa-rt serve")
    from ..serve import launch
    from ..serve.app import create_app

    return launch, create_app


def _announce(r, options: ServeOptions, *, url: str, photos_available: bool, as_json: bool) -> None:
    """Warnings on stderr, then the startup facts on stdout (one JSON line under --json)."""
    from ..serve.config import redact
    from ..serve.sessions import session_memory_bound

    config = options.config
    mem = session_memory_bound(r)["total"]
    if r.bundle.demo:
        click.echo(DEMO_WARNING, err=True)
    if options.host not in LOOPBACK and config.api_keys is None and config.principal_header is None:
        warn(f"listening on {options.host} without --api-keys: anyone who reaches it can use it")
    if options.host not in LOOPBACK and config.rate_limit is None:
        warn("no --rate-limit: one client can keep every core busy")
    if r.confidence is None:
        warn("the gallery has no confidence calibrator: responses carry no confidence "
             "(fit one with `dcssa-rt calibrate-confidence`)")
    if not photos_available:
        warn("the photos folder is not available; thumbnails will 404 (pass --photos DIR)")
    facts = {"url": url, "backend": r.backend.name, "gallery": len(r.gallery), "max_sessions": config.max_sessions,
             "max_strokes": r.max_strokes, "session_memory_bound_bytes": mem,
             "max_batch": config.max_batch, "batch_window_ms": config.batch_window_ms,
             "confidence": r.confidence is not None, "confidence_threshold": config.confidence_threshold,
             "session_store": "memory" if config.session_store == "memory" else "redis",
             "api_keys": config.api_keys is not None, "rate_limit": config.rate_limit, "rate_burst": config.rate_burst,
             "max_sessions_per_client": config.max_sessions_per_client, "cors_origins": list(config.cors_origins),
             "catalogue": r.catalogue.fingerprint}
    if as_json:
        click.echo(json.dumps(facts))
    else:
        click.echo(f"serving {len(r.gallery)} photos with {r.backend.name} at {url}  "
                   f"(API spec {url}openapi.json, docs {url}docs)")
        if config.session_store != "memory":
            click.echo(f"sessions in {redact(config.session_store)} (shared by replicas); local cache of "
                       f"{config.max_sessions}, idle TTL {config.session_ttl:g} s")
        else:
            click.echo(f"sessions: at most {config.max_sessions}, idle TTL {config.session_ttl:g} s, "
                       f"{r.max_strokes} strokes each; memory bound {mem / 2**20:.1f} MiB per session, "
                       f"{mem * config.max_sessions / 2**30:.2f} GiB for all")
    click.echo("", nl=False)  # flush before uvicorn takes over stdout/stderr


@click.command("serve")
@bundle_option(demo_fallback=True)
@gallery_option
@click_options(ServeOptions)
@click_options(ServeConfig)
@runtime_options()
@output_options(json="the startup facts (url, limits)")
def serve(bundle: Path, gallery: Path, as_json: bool, quiet: bool, **settings: Any) -> None:
    """Serve the drawing page (GET /) and the session API (/v1/..., spec at /openapi.json).

    Draw on the page: after every stroke the top-K catalogue photos appear. Sessions live in
    memory, or in Redis with --session-store redis://HOST:6379/0 (then run several replicas behind
    a load balancer, see deploy/); clients hold their strokes and rebuild a lost session with
    POST /v1/sessions.
    """
    with fail_cleanly():
        launch, create_app = _server_modules()
        config, rest = from_cli(ServeConfig, settings)
        options, runtime = from_cli(ServeOptions, rest, config=config)  # runtime: backend, precision, threads
        launch.check_store_url(config)  # a bad URL or keys file fails before the bundle loads
        if config.api_keys is not None:
            from ..serve.keys import read_keys

            read_keys(config.api_keys)
        r = launch.load_retriever(bundle, gallery, options, **runtime)
        launch.warm_up(r)
        app = create_app(r, photos_root=options.photos, config=config)
        if not launch.store_answers(app.state.service.store):
            from ..serve.config import redact

            warn(f"the session store {redact(config.session_store)} does not answer; "
                 "requests get 503 store_unavailable until it does")
        sock = launch.bind(options.host, options.port)
        _announce(r, options, url=launch.url_of(sock), photos_available=app.state.service.photos.available,
                  as_json=as_json)
        launch.run(app, sock, quiet=quiet or as_json)
