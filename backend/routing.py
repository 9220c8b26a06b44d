"""The route class of every API router: FastAPI's APIRoute, answering HEAD wherever it answers GET.

RFC 9110 (9.3.2) asks a server that answers GET to answer HEAD with the same status and headers. Starlette's
routes do; FastAPI's do not (fastapi#1773), so `curl -I`, link checkers and uptime monitors were told 404 for
/api/health and every resource. HEAD is matched here rather than added to `methods`, so the OpenAPI schema
keeps one operation per route.
"""

from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiRoute(APIRoute):
    def _head_as_get(self, scope: Scope) -> bool:
        return scope["type"] == "http" and scope["method"] == "HEAD" and "GET" in self.methods

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if self._head_as_get(scope):
            return super().matches({**scope, "method": "GET"})
        return super().matches(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._head_as_get(scope):
            # As a GET, which the method check lets through, to the app FastAPI picks for this route (one with
            # the app's default response class): the headers are those of the GET, length included.
            await answer_head(super().handle, {**scope, "method": "GET"}, receive, send)
            return
        await super().handle(scope, receive, send)


class _BodyNotSent(OSError):
    """Raised into a file or streaming response once a HEAD's answer is complete: it ends the response
    (Starlette takes an OSError from send for a client gone), so a checkpoint is not read for nothing."""


async def answer_head(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run `app` (a GET's handler) for a HEAD request, passing on its status and headers but no body. A file or
    a stream ends at its first chunk; an event stream as soon as its headers are out (its first event may be
    minutes away)."""
    done = False

    async def headers_only(message: Message) -> None:
        nonlocal done
        if done:
            raise _BodyNotSent("a HEAD answer has no body")
        if message["type"] == "http.response.start":
            await send(message)
            if not _is_event_stream(message):
                return
        done = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    try:
        await app(scope, receive, headers_only)
    except (ClientDisconnect, OSError):
        if not done:
            raise


def _is_event_stream(start: Message) -> bool:
    return any(name.lower() == b"content-type" and value.startswith(b"text/event-stream")
               for name, value in start.get("headers", []))
