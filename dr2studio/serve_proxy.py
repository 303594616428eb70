"""The body limit at Ray Serve's HTTP proxy, before a single body byte is buffered.

Serve's proxy reads a request body into an unbounded in-memory queue as fast as the client sends it,
whatever the replica does, so a limit checked only in the replica comes after the proxy has buffered
the body. :class:`BodyLimitMiddleware` runs in the proxy (Ray loads it from
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=dr2studio.serve_proxy.proxy_middlewares``, which
``dr2studio serve`` sets for the Ray instance it starts): a ``POST .../v1/jobs`` must declare its
``Content-Length`` (411 otherwise; the HTTP server then holds the body to exactly that length) and
it must be at most the limit (413, ``too_large``). The limit is
:data:`~dr2studio.requests.MAX_BODY_BYTES`, or ``DR2STUDIO_MAX_BODY_BYTES`` in the proxy's environment.

This module imports nothing heavy: it runs inside Serve's proxy actor.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Awaitable, Callable

from dr2studio.requests import MAX_BODY_BYTES

log = logging.getLogger(__name__)

__all__ = ["BodyLimitMiddleware", "proxy_middlewares", "proxy_body_limit", "PROXY_CALLBACK", "LIMITED_SUFFIX"]

#: The value of ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` that installs the middleware.
PROXY_CALLBACK = "dr2studio.serve_proxy.proxy_middlewares"
#: Requests whose path ends so are the job submissions (the only bodies the deployment takes).
LIMITED_SUFFIX = "/v1/jobs"

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
                   Awaitable[None]]


def proxy_body_limit() -> int:
    """The proxy's body limit: ``DR2STUDIO_MAX_BODY_BYTES`` when set (a positive integer), else the default."""
    raw = os.environ.get("DR2STUDIO_MAX_BODY_BYTES", "")
    try:
        value = int(raw) if raw else MAX_BODY_BYTES
    except ValueError:
        log.warning("DR2STUDIO_MAX_BODY_BYTES=%r is not an integer; using %d", raw, MAX_BODY_BYTES)
        return MAX_BODY_BYTES
    return value if value > 0 else MAX_BODY_BYTES


class BodyLimitMiddleware:
    """Pure ASGI middleware: refuse a job body that is undeclared (411) or declared too large (413)
    from its headers alone, so nothing of it is read into the proxy's memory."""

    def __init__(self, app: ASGIApp, max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes or proxy_body_limit()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or \
                not str(scope.get("path", "")).rstrip("/").endswith(LIMITED_SUFFIX):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        declared = headers.get("content-length")
        if declared is None:
            await _reply(send, 411, f"a job body must declare its Content-Length (at most {self.max_bytes} bytes)",
                         "bad_request")
            return
        try:
            size = int(declared)
        except ValueError:
            await _reply(send, 400, f"Content-Length {declared[:40]!r} is not a number", "bad_request")
            return
        if size > self.max_bytes:
            await _reply(send, 413, f"request body of {size} bytes exceeds the limit of {self.max_bytes}", "too_large")
            return
        await self.app(scope, receive, send)


async def _reply(send: Any, status: int, message: str, code: str) -> None:
    body = json.dumps({"detail": message, "code": code}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list[Any]:
    """Ray Serve's HTTP proxy callback: the middlewares the proxy applies to every request."""
    from starlette.middleware import Middleware

    return [Middleware(BodyLimitMiddleware)]
