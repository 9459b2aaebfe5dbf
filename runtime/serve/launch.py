"""Starting a server: the retriever, a warm encoder, the listening socket, the session store's first
answer, then uvicorn. ``dcssa-rt serve`` runs these in order and prints what they found.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..contract.bundle import Bundle
from ..errors import DcssaError
from ..search.gallery import Gallery
from ..session import Retriever
from .config import ServeConfig, ServeOptions
from .lifecycle import make_server
from .sessions import SessionStore, redis_url

if TYPE_CHECKING:
    from fastapi import FastAPI


def check_store_url(config: ServeConfig) -> None:
    """A bad ``--session-store`` URL fails here, before the bundle loads."""
    if config.session_store != "memory":
        redis_url(config.session_store)


def load_retriever(bundle: Path, gallery: Path, options: ServeOptions, **runtime) -> Retriever:
    """The bundle on its backend (``runtime``: backend, precision, threads) with the gallery to search."""
    b = Bundle.load(bundle)
    g = Gallery.load(gallery, b)
    photos = options.photos
    if photos is not None and not photos.is_dir():
        raise DcssaError("not a folder", path=photos, hint="pass the folder that was indexed")
    return Retriever(b, g, topk=options.topk, max_strokes=options.max_strokes, **runtime)


def warm_up(retriever: Retriever) -> None:
    """One encoder pass and one head step before listening: the first user does not pay for them."""
    session = retriever.session()
    session.add_stroke(np.array([[64.0, 64.0], [192.0, 192.0]]))


def store_answers(store: SessionStore) -> bool:
    """Whether the session store answers now (the in-memory one always does). A shared store that is
    down at start is not fatal: requests get 503 until it is back."""
    if store.kind != "redis":
        return True

    async def ping() -> bool:
        try:
            return await store.ping()
        finally:
            await store.redis.aclose()  # the server's event loop opens its own connections

    return asyncio.run(ping())


def bind(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn, so a busy port is one clear error (and --port 0 picks a free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DcssaError(f"cannot resolve --host {host!r} ({exc.strerror})",
                         hint="use an IP address such as 127.0.0.1") from None
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


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(app: FastAPI, sock: socket.socket, *, quiet: bool) -> None:
    """uvicorn on ``sock`` until it is stopped (SIGTERM drains it, :mod:`.lifecycle`); ``quiet``: warnings
    only, no access log."""
    server = make_server(app, quiet=quiet)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
