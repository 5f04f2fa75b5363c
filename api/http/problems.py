"""RFC 9457 problem responses: the one place errors become HTTP answers.

Every :class:`~shared.errors.CaptionizerError` becomes an ``application/problem+json``
body with ``type, title, status, detail, code`` (plus ``job_id`` and other extras when
known). Request validation failures, unknown routes and unexpected exceptions get the
same shape, so clients branch on ``code`` alone.

Under :data:`OPENAI_PREFIX` the same errors are written as OpenAI's error object
(``{"error": {"message", "type", "param", "code"}}``), which the ``openai`` SDK and
LiteLLM parse: one mapping, two spellings, chosen by the request's path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.error_codes import CLASSES_BY_CODE
from shared.error_families import CaptionizerError
from shared.errors import InternalError, InvalidRequest

logger = logging.getLogger(__name__)

#: RFC 9457 §3: the media type of a problem details object in JSON.
PROBLEM_MEDIA_TYPE = "application/problem+json"

#: Where the OpenAI-compatible facade is mounted (``api.openai``): errors there take OpenAI's shape.
OPENAI_PREFIX = "/openai/"
# OpenAI's error ``type`` per status; the SDK picks its exception class by status alone.
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}

# Routing errors Starlette raises itself (unknown path, wrong method) keep their
# status but still carry a stable code.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


def problem_type(code: str) -> str:
    """The problem's ``type`` URI (RFC 9457 §3.1.1): a stable URN per code, never dereferenced."""
    return f"urn:captionizer:problem:{code}"


def problem_body(exc: CaptionizerError) -> dict[str, Any]:
    """The problem details object of ``exc`` (extras such as ``job_id`` become members)."""
    return _body(exc.code, exc.title, exc.status, exc.message, exc.extra)


def openai_status(status: int) -> int:
    """The status the facade answers for ``status``: OpenAI's contract gives invalid requests 400, never 422."""
    return 400 if status == 422 else status


def openai_error_body(code: str, status: int, detail: str, extra: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's error object for one of our errors; ``code`` stays the project's stable code."""
    kind = "server_error" if status >= 500 else _OPENAI_TYPES.get(status, "invalid_request_error")
    param = extra.get("param")
    errors = extra.get("errors")
    if param is None and isinstance(errors, list) and errors:
        param = ".".join(str(part) for part in errors[0].get("loc", ()) if part != "body") or None
    # The rest of the problem's members ride along (job_id of a wait_timeout, retry_after_s...): the SDK
    # keeps unknown members of the error object, and they say what the message refers to.
    carried = {name: value for name, value in extra.items() if name not in ("param", "errors")}
    return {"error": {"message": detail, "type": kind, "param": param, "code": code, **carried}}


def problem_response(exc: CaptionizerError, headers: dict[str, str] | None = None, *, path: str = "") -> JSONResponse:
    """The error response for ``exc`` (also used by ASGI middlewares): a problem, or OpenAI's error under /openai/."""
    all_headers = dict(headers or {})
    retry_after_s = exc.extra.get("retry_after_s")
    if isinstance(retry_after_s, int | float):
        # RFC 9110 §10.2.3: Retry-After in whole seconds.
        all_headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    if exc.status == 401:
        # RFC 6750 §3 (and RFC 9110 §11.6.1): a 401 names the scheme the client should use.
        all_headers.setdefault("WWW-Authenticate", 'Bearer realm="captionizer"')
    if path.startswith(OPENAI_PREFIX):
        body = openai_error_body(exc.code, exc.status, exc.message, exc.extra)
        return JSONResponse(body, status_code=openai_status(exc.status), headers=all_headers)
    return JSONResponse(problem_body(exc), status_code=exc.status, headers=all_headers, media_type=PROBLEM_MEDIA_TYPE)


def _body(code: str, title: str, status: int, detail: str, extra: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    body.update(extra)
    return body


def invalid_request(errors: Sequence[Any]) -> InvalidRequest:
    """An InvalidRequest listing pydantic's errors without echoing their input (it may be a whole image)."""
    details = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")} for err in errors
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"] if part != "body")
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return InvalidRequest(message, errors=details)


#: Every ``code`` a problem body may carry: shared/errors.py's codes, then the routing ones.
PROBLEM_CODES: tuple[str, ...] = (*sorted(CLASSES_BY_CODE), *sorted({*_HTTP_CODES.values(), "http_error"}))


async def _on_captionizer_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CaptionizerError)
    if exc.status >= 500:
        logger.warning("request failed", extra={"code": exc.code, "path": request.url.path, "detail": exc.message})
    return problem_response(exc, path=request.url.path)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem_response(invalid_request(exc.errors()), path=request.url.path)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    if request.url.path.startswith(OPENAI_PREFIX):
        openai_body = openai_error_body(code, exc.status_code, str(exc.detail), {})
        return JSONResponse(openai_body, status_code=exc.status_code, headers=exc.headers)
    body = _body(code, str(exc.detail), exc.status_code, str(exc.detail), {})
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers, media_type=PROBLEM_MEDIA_TYPE)


async def _on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", extra={"path": request.url.path})
    return problem_response(InternalError("an unexpected error occurred; it has been logged"), path=request.url.path)


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers; Starlette picks one by the exception's MRO."""
    app.add_exception_handler(CaptionizerError, _on_captionizer_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected_error)


class Problem(BaseModel):
    """An RFC 9457 problem details object, as every error answer carries it."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:captionizer:problem:job_not_found"])
    title: str = Field(examples=["Job not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["no job job_Vq3kZ0m1cS8m2b7rX4yN2A"])
    code: str = Field(
        description="Stable machine-readable error code.",
        examples=["job_not_found"],
        json_schema_extra={"enum": list(PROBLEM_CODES)},
    )
    job_id: str | None = Field(None, description="The job concerned, when there is one.")


def problem_responses(*errors: type[CaptionizerError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting the problems a route may answer, one example per code."""
    responses: dict[int | str, dict[str, Any]] = {}
    for cls in errors:
        # The schema sits under application/problem+json, the type these answers really carry;
        # FastAPI's "model" key would file it under application/json, which no error uses.
        content = {PROBLEM_MEDIA_TYPE: {"schema": Problem.model_json_schema(), "examples": {}}}
        entry = responses.setdefault(cls.status, {"description": cls.title, "content": content})
        examples = entry["content"][PROBLEM_MEDIA_TYPE]["examples"]
        example = _body(cls.code, cls.title, cls.status, cls.__doc__ or cls.title, {})
        examples[cls.code] = {"summary": cls.title, "value": example}
        if entry["description"] != cls.title:
            entry["description"] = f"{entry['description']}; {cls.title}"
    return responses


# OpenAI's error envelope, as the facade answers it; members beyond the four ride along (job_id...).
_OPENAI_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "string"},
            },
        }
    },
}


def openai_error_responses(*errors: type[CaptionizerError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the facade's routes: the same errors, in OpenAI's shape and status, as JSON."""
    responses: dict[int | str, dict[str, Any]] = {}
    for cls in errors:
        status = openai_status(cls.status)
        content = {"application/json": {"schema": _OPENAI_ERROR_SCHEMA, "examples": {}}}
        entry = responses.setdefault(status, {"description": cls.title, "content": content})
        example = openai_error_body(cls.code, cls.status, cls.__doc__ or cls.title, {})
        entry["content"]["application/json"]["examples"][cls.code] = {"summary": cls.title, "value": example}
        if cls.title not in entry["description"]:
            entry["description"] = f"{entry['description']}; {cls.title}"
    return responses
