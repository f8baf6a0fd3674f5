"""Who may use the service: an optional API key, the WebSocket Origin check, CORS and trusted hosts.

All of it is off by default except the Origin check: a page from another site may not open ``/ws`` in its visitors'
browsers (cross-site WebSocket hijacking; browsers apply no same-origin rule to WebSockets). HTTP needs no such check:
without CORS headers a browser does not let another site's page read the answers.

- ``EMOTION_API_KEY``: ``/predict``, ``/predict/video``, ``/ws`` and ``/metrics`` need the key. HTTP clients send
  ``X-API-Key: <key>`` or ``Authorization: Bearer <key>`` (else 401). Browsers cannot set headers on a WebSocket, so
  ``/ws`` also takes it as a subprotocol: ``new WebSocket(url, ["emotion", "key.<key>"])``; the server answers with
  the ``emotion`` subprotocol (never echoing the key). The page, its files, ``/healthz``, ``/readyz``, ``/model`` and
  the OpenAPI page stay open: the page must load to ask for the key, probes carry none.
- ``EMOTION_ALLOWED_ORIGINS``: other origins (``https://app.example``, or ``*``) whose pages may call the API
  (CORS, Starlette's middleware) and open ``/ws``. A WebSocket from anywhere else is accepted, told why in an error
  message and closed with 1008 (policy violation), as is one without the key. Clients that send no Origin (curl,
  scripts) are not browsers and pass the Origin check.
- ``EMOTION_TRUSTED_HOSTS``: Host headers accepted (Starlette's middleware; 400 otherwise), against DNS rebinding.
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from fastapi import FastAPI

    from server.config import Settings

PROTECTED_PREFIXES = ("/predict", "/ws", "/metrics")
WS_SUBPROTOCOL = "emotion"
WS_KEY_PREFIX = "key."
CLOSE_POLICY_VIOLATION = 1008


def route_path(scope: dict) -> str:
    """The path the app routes on: ``scope["path"]`` without the ``root_path`` that uvicorn (``--root-path``, a
    proxy's prefix) puts in front of it, as Starlette's router strips it; so a prefix cannot slip past a check."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


def is_protected(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PROTECTED_PREFIXES)


def chosen_subprotocol(scope: dict) -> str | None:
    """The subprotocol a WebSocket is accepted with: ``emotion`` when offered (a browser that offered subprotocols
    fails a handshake that picks none), else none."""
    return WS_SUBPROTOCOL if WS_SUBPROTOCOL in scope.get("subprotocols", ()) else None


def presented_key(scope: dict, headers: Headers) -> str | None:
    """The key a client sent: ``X-API-Key``, ``Authorization: Bearer``, or (WebSocket) a ``key.<key>`` subprotocol."""
    if key := headers.get("x-api-key"):
        return key
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    for protocol in scope.get("subprotocols", ()):
        if protocol.startswith(WS_KEY_PREFIX):
            return protocol[len(WS_KEY_PREFIX) :]
    return None


class AccessMiddleware:
    """The API key on protected paths and the Origin check on WebSockets (pure ASGI, streaming untouched)."""

    def __init__(self, app: Any, *, api_key: str | None, allowed_origins: list[str]) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.allowed_origins = {origin.rstrip("/").lower() for origin in allowed_origins}

    def key_ok(self, scope: dict, headers: Headers) -> bool:
        if self.api_key is None or not is_protected(route_path(scope)):
            return True
        key = presented_key(scope, headers)
        return key is not None and hmac.compare_digest(key.encode(), self.api_key)

    def origin_ok(self, headers: Headers) -> bool:
        origin = headers.get("origin")
        if origin is None or "*" in self.allowed_origins or origin.rstrip("/").lower() in self.allowed_origins:
            return True
        # Same origin: the page's scheme://host:port against the Host it connected to (ws vs http does not matter).
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:  # unbalanced brackets ("http://[::1"): no page's origin, so not this one
            return False
        return netloc.lower() == headers.get("host", "").lower() != ""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["type"] == "websocket":
            if not self.origin_ok(headers):
                problem = f"origin {headers.get('origin', '')[:100]!r} may not open the live stream"
                await refuse_websocket(scope, receive, send, problem)
            elif not self.key_ok(scope, headers):
                await refuse_websocket(scope, receive, send, "API key missing or wrong")
            else:
                await self.app(scope, receive, send)
            return
        if self.key_ok(scope, headers):
            await self.app(scope, receive, send)
            return
        detail = "API key missing or wrong: send it as X-API-Key or Authorization: Bearer"
        response = JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


async def refuse_websocket(scope: dict, receive: Any, send: Any, problem: str) -> None:
    """Accept, say why in the live stream's error format, close with 1008: a browser gets a reason to show, where a
    refused handshake would only be a failed connection."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept", "subprotocol": chosen_subprotocol(scope)})
    await send({"type": "websocket.send", "text": json.dumps({"type": "error", "error": problem})})
    reason = problem.encode()[:120].decode(errors="ignore")  # a close reason is at most 123 bytes
    await send({"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION, "reason": reason})


def add_access_middleware(app: FastAPI, settings: Settings) -> None:
    """Access checks, then CORS around them (so preflights and 401s carry CORS headers), then trusted hosts."""
    from starlette.middleware.cors import CORSMiddleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(AccessMiddleware, api_key=key, allowed_origins=settings.allowed_origins)
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization"],
            max_age=600,
        )
    if settings.trusted_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.trusted_hosts)
