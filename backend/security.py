"""Access control as plain ASGI middleware (so streaming responses pass through untouched).

- `AccessMiddleware`: when the server has an access token (always off loopback), every request must carry
  it as `Authorization: Bearer <token>` or the `cliplab_token` cookie that `/?token=<token>` sets. Trainer
  ingestion and an attached trainer's stop poll are exempt: they carry their run's own token, checked by the route. Cross-origin state changes
  (a page on another site POSTing to a local server) are refused even on loopback.
- `BodyLimitMiddleware`: bodies over the limit get 413, JSON text with lone surrogates 422, before the app
  parses them.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.text import lone_surrogate_path

COOKIE = "cliplab_token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_INGEST_RE = re.compile(r"^/api/runs/[^/]+/events/?$")
_CONTROL_RE = re.compile(r"^/api/runs/[^/]+/control/?$")  # an attached trainer's stop poll, with its run token
_OPEN_PATHS = ("/api/health",)


async def send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


def _equal(given: str, secret: str) -> bool:
    # compare_digest on str raises for non-ASCII input, which a client controls: compare bytes.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode())


def _same_origin(origin: str, host: str | None, scheme: str) -> bool:
    parts = urlsplit(origin)
    return bool(host) and parts.netloc == host and parts.scheme in (scheme, "http", "https")


class AccessMiddleware:
    def __init__(self, app: ASGIApp, token: str | None, allowed_origins: list[str]):
        self.app = app
        self.token = token
        self.allowed_origins = set(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method, path = scope["method"], scope["path"]
        origin = headers.get("origin")
        if (method not in SAFE_METHODS and origin and origin not in self.allowed_origins
                and not _same_origin(origin, headers.get("host"), scope.get("scheme", "http"))):
            await send_json(send, 403, {"detail": f"cross-origin {method} from {origin} refused; "
                                                  "add the origin to CLIPLAB_CORS_ORIGINS to allow it"})
            return
        if (self.token is None or path in _OPEN_PATHS or (method == "POST" and _INGEST_RE.match(path))
                or (method == "GET" and _CONTROL_RE.match(path))):
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode())
        offered = query.get("token", [None])[0]
        if path == "/" and offered is not None and _equal(offered, self.token):
            # Log the browser in: remember the token in a cookie and drop it from the address bar.
            cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000"
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if self._authorized(headers):
            await self.app(scope, receive, send)
            return
        await send_json(send, 401, {"detail": "this server requires its access token: send "
                                              "'Authorization: Bearer <token>' or open /?token=<token> once"},
                        [(b"www-authenticate", b"Bearer")])

    def _authorized(self, headers: Headers) -> bool:
        assert self.token is not None
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and _equal(auth[7:].strip(), self.token):
            return True
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and _equal(value, self.token):
                return True
        return False


class BodyLimitMiddleware:
    """Reads the request body before the app does: 413 past `max_bytes` (CLIPLAB_MAX_BODY_BYTES), and 422
    for JSON text the server could never store or answer with (a lone UTF-16 surrogate such as "\\udfff").
    This is the one check of request and event strings, so every route, present or future, gets it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self, size: str, path: str) -> dict:
        advice = ("send smaller batches" if _INGEST_RE.match(path)
                  else "a run's config, name and tags fit in a few kilobytes")
        return {"detail": f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes "
                          f"(CLIPLAB_MAX_BODY_BYTES); {advice}"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\0" in scope["path"]:  # no run, dataset, checkpoint or file is named with a NUL
            await send_json(send, 404, {"detail": "Not Found: the path holds a NUL character (%00)"})
            return
        field = nul_query_field(scope.get("query_string", b""))
        if field is not None:
            await send_json(send, 422, {"detail": [{"field": field, "message": NUL_MESSAGE}]})
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await send_json(send, 413, self._detail(length, scope["path"]))
            return
        chunks, received, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            more = message.get("more_body", False)
            if received > self.max_bytes:
                await send_json(send, 413, self._detail(f"more than {self.max_bytes}", scope["path"]))
                return
        body = b"".join(chunks)
        field = lone_surrogate_field(body)
        if field is not None:
            await send_json(send, 422, {"detail": [{"field": field, "message": SURROGATE_MESSAGE}]})
            return
        field = None if _INGEST_RE.match(scope["path"]) else nul_field(body)
        if field is not None:
            await send_json(send, 422, {"detail": [{"field": field, "message": NUL_MESSAGE}]})
            return
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


SURROGATE_MESSAGE = ("contains a lone UTF-16 surrogate (an escape like \\udfff that is half a character); "
                     "send valid Unicode text")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def lone_surrogate_field(body: bytes) -> str | None:
    """The field of a JSON body whose text holds a lone surrogate."""
    return _json_field(body, _SURROGATE_ESCAPE, lone_surrogate_path)


def _json_field(body: bytes, escape: re.Pattern[bytes], find: Callable[[Any], str | None]) -> str | None:
    """The field `find` names in a JSON body, which is parsed only when `escape` occurs in it (cheap otherwise)."""
    if not escape.search(body):
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: the route answers its own 422
    return find(parsed)


NUL_MESSAGE = ("contains a NUL character (\\u0000), which names, notes, tags and paths cannot hold "
               "(PostgreSQL cannot store it, and no file name has one)")
_NUL_ESCAPE = re.compile(rb"\\u0000")


def nul_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or object key) holding a NUL, in the API's field style."""
    if isinstance(value, str):
        return (path or "(body)") if "\0" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\0" in key:
                return where.replace("\0", "\\u0000")
            found = nul_path(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = nul_path(item, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None


def nul_field(body: bytes) -> str | None:
    """The field of a JSON body whose text holds a NUL (escaped as \\u0000: JSON has no raw NUL in strings).
    Trainer events are exempt: their texts are kept inside JSON, which holds a NUL on every database."""
    return _json_field(body, _NUL_ESCAPE, nul_path)


def nul_query_field(query_string: bytes) -> str | None:
    """The name of the first query parameter whose name or value holds a NUL (`?q=%00`)."""
    if b"%00" not in query_string and b"\0" not in query_string:
        return None
    for key, values in parse_qs(query_string.decode("latin-1"), keep_blank_values=True).items():
        if "\0" in key or any("\0" in v for v in values):
            return key.replace("\0", "\\u0000")
    return None


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A `receive` that hands out `messages` first, then waits on the real one (for a disconnect)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


# Plotly writes <style> rules and style attributes into the page as it draws, so style-src needs
# 'unsafe-inline' (styles cannot run code); scripts stay 'self' only: no inline script, no eval.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self' 'unsafe-inline'", "img-src 'self' data: blob:",
    "connect-src 'self'", "font-src 'self' data:", "object-src 'none'", "base-uri 'none'", "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),  # frame-ancestors for browsers that predate it
    (b"referrer-policy", b"same-origin"),  # /?token=... must not leak to other sites
]


class SecurityHeadersMiddleware:
    """Adds the CSP (no framing, no inline script) and nosniff to every response, errors and files included."""

    def __init__(self, app: ASGIApp, headers: list[tuple[bytes, bytes]] | None = None):
        self.app = app
        self.headers = headers or SECURITY_HEADERS
        self.names = {name for name, _ in self.headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in self.names]
                message = {**message, "headers": [*kept, *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
