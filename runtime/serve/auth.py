"""Who is calling: API keys (``serve --api-keys``) and the Origin policy, as ASGI middleware.

:class:`Access` sets ``request.state.principal`` (the key's principal, or None when keys are off)
and ``request.state.client`` (what the per-client limits count: the principal, else the address).
With keys on, every request but ``/healthz``, ``/metrics`` and the drawing page itself (``GET /``,
static, no data: a browser cannot add a header to a navigation) needs ``Authorization: Bearer KEY``.
Browsers cannot set headers on a WebSocket, so there the key may come as a
``Sec-WebSocket-Protocol`` entry ``dcssa.key.KEY`` next to ``dcssa.v1``, which the server echoes;
never in the URL, which lands in access logs. Missing or wrong keys get 401 JSON; the key itself
never reaches a log line or a message.

:class:`OriginGuard` refuses (403 JSON) a request whose ``Origin`` header is neither this server's
own nor one of ``--cors-origin``: CORS alone does not protect WebSockets, and a refused preflight
then answers in the server's JSON shape instead of plain text.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import RateLimited
from .keys import KeyRing

PROTOCOL = "dcssa.v1"
KEY_PROTOCOL = "dcssa.key."
PUBLIC = frozenset({"/healthz", "/metrics", "/"})
STROKE_PATH = re.compile(r"/v1/sessions/[^/]+/strokes")
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403

NO_KEY = {"error": "unauthorized", "message": "this server needs an API key",
          "hint": "send it as 'Authorization: Bearer KEY' (on a WebSocket: a Sec-WebSocket-Protocol entry "
                  "'dcssa.key.KEY' beside 'dcssa.v1'); operators issue keys with `dcssa-rt api-key add NAME`"}
BAD_KEY = {"error": "unauthorized", "message": "the API key is not valid (unknown, revoked or mistyped)",
           "hint": "check the key you were given, or ask the operator for a new one (`dcssa-rt api-key add NAME`)"}


def header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


def offered_key(scope: Scope) -> str | None:
    """The key the request carries (Bearer header, or a WebSocket subprotocol entry), or None."""
    auth = header(scope, b"authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    if scope["type"] == "websocket":
        for proto in scope.get("subprotocols", ()):
            if proto.startswith(KEY_PROTOCOL):
                return proto[len(KEY_PROTOCOL):]
    return None


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, body: dict,
                 headers: dict[str, str] | None = None) -> None:
    """An HTTP JSON error, or on a WebSocket: accept, send the error as a message, close (4401/4403)."""
    if scope["type"] == "websocket":
        if (await receive())["type"] != "websocket.connect":
            return
        offered = scope.get("subprotocols", ())
        await send({"type": "websocket.accept", "subprotocol": PROTOCOL if PROTOCOL in offered else None})
        await send({"type": "websocket.send", "text": json.dumps({"op": None, "status": status, **body})})
        await send({"type": "websocket.close", "code": CLOSE_UNAUTHORIZED if status == 401 else CLOSE_FORBIDDEN})
        return
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


NO_PRINCIPAL = {"error": "unauthorized", "message": "the request did not come through the authenticating proxy",
                "hint": "call the public address (the proxy in front of this server), not a replica directly"}


class Access:
    """API-key authentication (``keys``: None = off) and the per-client identity (see the module doc).

    ``principal_header``: keys are checked by a proxy in front, which names the principal in this
    header (deploy/nginx-edge-auth.conf); a request without it is refused like one without a key.
    """

    def __init__(self, app: ASGIApp, keys: KeyRing | None, on_refuse=lambda: None,
                 principal_header: str | None = None, limiter=None, on_limit=lambda: None) -> None:
        self.app, self.keys, self.on_refuse = app, keys, on_refuse
        self.header = None if principal_header is None else principal_header.lower().encode("latin-1")
        self.limiter, self.on_limit = limiter, on_limit

    async def admitted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, or a 429 for an HTTP stroke over the caller's rate: refused before its body is read
        or parsed, so a client ignoring Retry-After costs the server as little as a request can."""
        state = scope["state"]
        if (self.limiter is not None and scope["type"] == "http" and scope["method"] == "POST"
                and STROKE_PATH.fullmatch(scope["path"])):
            try:
                self.limiter.take(state["client"])
            except RateLimited as exc:
                self.on_limit()
                body = {"error": "rate_limited", "message": exc.message, "hint": exc.hint}
                return await refuse(scope, receive, send, 429, body, {"Retry-After": str(exc.retry_after)})
            state["admitted"] = True  # the service does not count it again
        return await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        state["principal"] = None
        state["client"] = client_address(scope)
        if (self.keys is None and self.header is None) or (scope["type"] == "http" and scope["path"] in PUBLIC):
            return await self.admitted(scope, receive, send)
        if self.header is not None:
            named = (header(scope, self.header) or "").strip()
            if not named:
                self.on_refuse()
                return await refuse(scope, receive, send, 401, NO_PRINCIPAL)
            state["principal"] = state["client"] = named
            return await self.admitted(scope, receive, send)
        key = offered_key(scope)
        principal = self.keys.principal(key) if key else None
        if principal is None:
            self.on_refuse()
            return await refuse(scope, receive, send, 401, NO_KEY if key is None else BAD_KEY,
                                {"WWW-Authenticate": 'Bearer realm="dcssa-rt"'})
        state["principal"] = state["client"] = principal
        return await self.admitted(scope, receive, send)


def _netloc(scheme: str, netloc: str) -> str:
    """host[:port] with the scheme's default port dropped, lower-cased."""
    netloc = netloc.lower()
    for default in ((":80",) if scheme in ("http", "ws") else (":443",)):
        if netloc.endswith(default):
            netloc = netloc[: -len(default)]
    return netloc


def same_origin(origin: str, host: str | None) -> bool:
    """Whether ``origin`` names the host the request was sent to (scheme aside: a TLS proxy may end it)."""
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc or host is None:
        return False
    host = host.lower()
    return _netloc(parts.scheme, parts.netloc) in (host, _netloc("http", host), _netloc("https", host))


class OriginGuard:
    """Refuse requests from a browser page of another origin than this server or ``allowed``."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...], on_refuse=lambda: None) -> None:
        self.app, self.on_refuse = app, on_refuse
        self.any = "*" in allowed
        self.allowed = frozenset(o.rstrip("/").lower() for o in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.any:
            origin = header(scope, b"origin")
            if (origin is not None and origin.rstrip("/").lower() not in self.allowed
                    and not same_origin(origin, header(scope, b"host"))):
                self.on_refuse()
                return await refuse(scope, receive, send, 403, {
                    "error": "origin_not_allowed",
                    "message": f"requests from pages at {origin[:200]} are not allowed by this server",
                    "hint": "serve the page from this server, or have the operator add it with "
                            "`dcssa-rt serve --cors-origin ORIGIN`"})
        return await self.app(scope, receive, send)
