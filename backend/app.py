"""The FastAPI application: routes, error shapes, access middleware, the dashboard's static files.

`create_app(settings)` builds an app; its lifespan connects and migrates the database, reconciles runs
left by a previous server and starts the launcher. Never imports torch.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.resources
import importlib.util
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from backend.api_errors import document_errors
from backend.errors import Conflict, Invalid, NotFound
from backend.responses import SafeJSONResponse
from backend.routes import attach, configs, datasets, ingest, notifications, runs, stream, sweeps, system
from backend.security import AccessMiddleware, BodyLimitMiddleware, SecurityHeadersMiddleware
from backend.services.container import build_services
from backend.settings import LOOPBACK_NAMES, Settings, resolve_access_token

log = logging.getLogger("cliplab.server")


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path", "header") else list(map(str, loc))
    return ".".join(parts) or "(body)"


def _request_error(error: dict, body: object, content_type: str | None) -> dict[str, str]:
    """One {"field", "message"} of a request that failed validation; a body that is not JSON is named as such."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":  # loc holds a character offset into the body, not a field
        where = ""
        if isinstance(body, str) and loc and isinstance(loc[-1], int):
            bad = json.JSONDecodeError("", body, loc[-1])
            where = f" (line {bad.lineno} column {bad.colno})"
        return {"field": "(body)", "message": f"the body is not valid JSON{where}: "
                                              f"{error.get('ctx', {}).get('error', 'decode error')}"}
    if loc == ("body",) and isinstance(body, (bytes, bytearray)):  # sent, but not as JSON, so never parsed
        sent = f"Content-Type {content_type}" if content_type else "no Content-Type"
        return {"field": "(body)", "message": f"this API takes JSON: send the body as application/json (got {sent})"}
    if loc == ("body",) and error.get("type") == "missing":
        return {"field": "(body)", "message": "a JSON object body is required"}
    if loc == ("body",) and error.get("type") in ("model_attributes_type", "dict_type"):
        return {"field": "(body)", "message": f"the body must be a JSON object, not {type(body).__name__}"}
    return {"field": _field(loc), "message": error.get("msg", "invalid")}


PARSE_FAILURE = "There was an error parsing the body"  # FastAPI's 400 for a body json.loads cannot read


def _unparseable_body(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not UTF-8 JSON: byte {cause.start} is invalid ({cause.reason})"
    if isinstance(cause, RecursionError):
        return "the body is not usable JSON: it is nested too deeply"
    return "the body is not valid JSON"


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error; SQLite says SQLITE_FULL
    return getattr(orig, "sqlite_errorname", None) == "SQLITE_FULL" or "disk is full" in str(orig)


def _disk_full_answer(app: FastAPI, exc: Exception) -> Response:
    """507 when the disk under the data dir (or the database) is full; anything else stays a 500."""
    if not _is_disk_full(exc):
        raise exc
    where = app.state.settings.data_dir
    log.error("disk full under %s: %s", where, exc)
    return SafeJSONResponse({"detail": f"the disk holding {where} is full (or over quota), so nothing was stored; "
                                       "free some space and try again"}, status_code=507)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return SafeJSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return SafeJSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(Invalid)
    async def invalid(_: Request, exc: Invalid) -> JSONResponse:
        return SafeJSONResponse({"detail": exc.errors}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type")
        errors = [_request_error(e, exc.body, content_type) for e in exc.errors()]
        return SafeJSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError) -> Response:
        return _disk_full_answer(app, exc)

    @app.exception_handler(OperationalError)
    async def database_error(request: Request, exc: OperationalError) -> Response:
        return _disk_full_answer(app, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == PARSE_FAILURE:  # documented as a 422 like any bad body
            message = _unparseable_body(exc.__cause__)
            return SafeJSONResponse({"detail": [{"field": "(body)", "message": message}]}, status_code=422)
        return await http_exception_handler(request, exc)


class FrontendFiles(StaticFiles):
    """The dashboard folder, minus the Python package files that live beside it."""

    async def get_response(self, path: str, scope):  # type: ignore[override]
        if path.endswith((".py", ".pyc")) or "__pycache__" in path:
            raise StarletteHTTPException(404)
        return await super().get_response(path, scope)


def frontend_dir() -> Path | None:
    try:
        root = Path(str(importlib.resources.files("frontend")))
    except ModuleNotFoundError:
        return None
    return root if root.is_dir() else None


def plotly_js() -> Path | None:
    """plotly.min.js inside the installed plotly package, found without importing plotly (~10 MB)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    token, generated = resolve_access_token(settings)
    if generated:
        log.warning("generated an access token (kept in %s)", settings.data_dir / "token")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = build_services(settings, token)
        svc.broadcaster.bind(asyncio.get_running_loop())
        svc.launcher.start()
        app.state.services = svc
        try:
            yield
        finally:
            await run_in_threadpool(svc.close)

    app = FastAPI(title="cliplab", summary="Train and fine-tune CLIP; runs, metrics and live events.",
                  lifespan=lifespan, default_response_class=SafeJSONResponse)
    app.state.settings = settings
    app.state.access_token = token
    _install_error_handlers(app)
    for module in (system, attach, runs, sweeps, ingest, stream, datasets, configs, notifications):
        app.include_router(module.router)
    document_errors(app)

    plotly = plotly_js()

    @app.api_route("/vendor/plotly.min.js", methods=["GET", "HEAD"], include_in_schema=False)
    def vendor_plotly() -> FileResponse:
        if plotly is None:
            raise NotFound("plotly.min.js is not installed (pip install plotly)")
        return FileResponse(plotly, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    front = frontend_dir()
    if front is not None:
        app.mount("/", FrontendFiles(directory=front, html=True), name="frontend")

    # Outermost last: host check, CORS (answers preflights), token, body size.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessMiddleware, token=token, allowed_origins=settings.cors_origins)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=True,
                           allow_methods=["*"], allow_headers=["Authorization", "Content-Type", "Last-Event-ID"])
    # On loopback only local names (DNS-rebinding defence) plus any the user lists explicitly.
    extra = [h for h in settings.allowed_hosts if h != "*"]
    hosts = [*LOOPBACK_NAMES, *extra] if settings.is_loopback else settings.allowed_hosts
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=[h.strip("[]") for h in hosts] + hosts)
    # Around Starlette's own error middleware too, so even a 500 carries the CSP and nosniff.
    build_stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: SecurityHeadersMiddleware(build_stack())  # type: ignore[method-assign]
    return app
