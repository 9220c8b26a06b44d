"""The API's one error model and how routes declare the errors they answer, in /openapi.json too.

Every error body is `{"detail": ...}`: a sentence for 401/403/404/409/413/503/507, a list of
`{"field", "message"}` for 422. A route declares only its own domain errors with `responses=declare(409)`;
`document_errors` adds what every route may answer, decided by its shape:
- a path parameter: 404 (the run, dataset, checkpoint or step it names does not exist);
- any parameter or a body: 422 (validation); a body: 413 (over CLIPLAB_MAX_BODY_BYTES);
- a state-changing method: 403 (cross-origin refusal) and 507 (the data dir's disk is full);
- everything but /api/health: 401 (a server with an access token).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

ERROR_SCHEMA = "ApiError"
UNSAFE_METHODS = ("post", "put", "patch", "delete")
OPEN_OPERATIONS = ("/api/health",)
DESCRIPTIONS = {
    401: "This server requires its access token (or, on the ingest route, the run's own token).",
    403: "Refused: a cross-origin state change, or a run token of another run.",
    404: "The run, dataset, checkpoint or file named in the path does not exist (or may not be served).",
    409: "Valid, but not in the current state (e.g. stopping a finished run, a seq beyond the accepted range).",
    413: "The request body is larger than CLIPLAB_MAX_BODY_BYTES.",
    422: "Invalid input: `detail` lists each bad field with a message.",
    503: "A part of the server this needs is unavailable.",
    507: "The data directory's disk is full (or over quota); nothing was stored.",
}


class FieldError(BaseModel):
    field: str
    message: str


class ApiError(BaseModel):
    """Every error answer: a sentence, or (422) the list of bad fields."""

    detail: str | list[FieldError]


def declare(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route decorator: the domain errors this route answers besides the automatic ones."""
    return {code: {"model": ApiError, "description": DESCRIPTIONS[code]} for code in codes}


def _automatic_codes(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    params = operation.get("parameters", [])
    codes = set()
    if any(p.get("in") == "path" for p in params):
        codes.add(404)
    if params or "requestBody" in operation:
        codes.add(422)
    if "requestBody" in operation:
        codes.add(413)
    if method in UNSAFE_METHODS:
        codes |= {403, 507}
    if path not in OPEN_OPERATIONS:
        codes.add(401)
    return codes


def _with_error_responses(schema: dict[str, Any]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            declared = {int(c) for c in responses if c.isdigit() and int(c) >= 400}
            for code in sorted(declared | _automatic_codes(path, method, operation)):
                responses[str(code)] = {"description": DESCRIPTIONS.get(code, "Error"),
                                        "content": {"application/json": {"schema": ref}}}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shape, which this API never sends
        components.pop(unused, None)
    components[ERROR_SCHEMA] = ApiError.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(components[ERROR_SCHEMA].pop("$defs", {}))
    return schema


def document_errors(app: FastAPI) -> None:
    """Make /openapi.json declare the ApiError body for every status code each operation really answers."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_error_responses(get_openapi(
                title=app.title, version=app.version, summary=app.summary, description=app.description,
                routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
