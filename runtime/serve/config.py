"""Every setting of ``dcssa-rt serve``, each with its one default and help: the CLI options are made from them.

:class:`ServeConfig` is what a running app needs (limits, batching, the session store);
:class:`ServeOptions` adds what starting one needs (address, photos, the retriever's top-K and stroke
bound). Only click and the options machinery are imported, so the command registers without FastAPI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

import click

from ..options import OptionsError, setting
from ..session import DEFAULT_TOPK

KB = 1024
#: --host values only this machine reaches (any other gets a no-authentication warning at start)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


_RATE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*s)?\s*")


def parse_rate(text: str | float | None) -> float | None:
    """``"20/s"``, ``"20"`` or ``2.5`` -> strokes per second; ``"off"``/``0``/None -> None (no limit)."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("off", "none", "")):
        return None
    if isinstance(text, (int, float)):
        rate = float(text)
    else:
        m = _RATE.fullmatch(text)
        if not m:
            raise ValueError(f"--rate-limit {text!r}: expected N/s (strokes per second per client), or off")
        rate = float(m.group(1))
    return rate if rate > 0 else None


class Rate(click.ParamType):
    """``N/s`` (or ``off``) on the command line, strokes per second (or None) in the config."""

    name = "N/s"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 - click's signature
        try:
            return parse_rate(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def redact(url: str) -> str:
    """``url`` with any password (and query, which may carry one) replaced by ``***``: safe to print."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:***@{hostport}" if colon else netloc  # no colon: a user name alone
        base = url.split("?", 1)[0].replace(parts.netloc, netloc, 1) if parts.netloc else url.split("?", 1)[0]
        return base + ("?***" if parts.query else "")
    except ValueError:
        return "<unparseable URL>"


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
    # -- who may call, how fast (README "Running it in public") --------------------------------------
    api_keys: Path | None = setting(
        None, "File of API keys (`dcssa-rt api-key add`): every request but /healthz, /metrics and the page itself "
              "then needs 'Authorization: Bearer KEY', and a session is reachable only by the principal that opened "
              "it. Re-read when it changes. [default: no keys: anyone who reaches the port may call]",
        type=click.Path(path_type=Path, dir_okay=False), metavar="KEYS", show_default=False)
    principal_header: str | None = setting(
        None, "Trust this request header as the caller's principal (set by an authenticating proxy such as "
              "deploy/nginx-edge-auth.conf, which must overwrite it); requests without it get 401. Only behind "
              "such a proxy: a client reaching the replica directly could name any principal.",
        metavar="HEADER", show_default=False)
    rate_limit: float | None = setting(
        None, "Strokes per second per client (its API key's principal, else its address), checked before the "
              "encoder queue; over it: 429 with Retry-After. [default: off]", type=Rate(), metavar="N/s",
        show_default=False)
    rate_burst: int = setting(8, "Strokes a client may send at once above --rate-limit (the token bucket's size).",
                              type=click.IntRange(1))
    max_sessions_per_client: int | None = setting(
        None, "Live sessions one client may hold (429 beyond it); with Redis, counted across replicas. "
              "[default: no limit]", type=click.IntRange(1), metavar="N", show_default=False)
    cors_origins: tuple[str, ...] = setting(
        (), "A browser origin (scheme://host[:port]) whose pages may call this server; repeatable; '*' for any. "
            "[default: none: same-origin only]", flag="--cors-origin", metavar="ORIGIN", multiple=True,
        show_default=False)

    def __repr__(self) -> str:  # the store URL may hold a password: never print it
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["session_store"] = redact(self.session_store)
        return f"ServeConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"
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
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ValueError("ServeConfig: rate_limit must be > 0 (None: no limit)")
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        if self.principal_header is not None and self.api_keys is not None:
            raise OptionsError("--principal-header and --api-keys both name the caller", flag="--principal-header",
                               hint="use --api-keys when the replicas check keys, --principal-header when the proxy does")
        for origin in self.cors_origins:
            check_origin(origin)


def check_origin(origin: str) -> str:
    """An origin as browsers send it (scheme://host[:port], no path), or '*'."""
    parts = urlsplit(origin)
    if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/")
                          or parts.query or parts.fragment):
        raise OptionsError(f"--cors-origin {origin!r} is not an origin", flag="--cors-origin",
                           hint="give scheme://host[:port] as the browser shows it, e.g. https://shop.example.com")
    return origin


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
