"""Every error the API answers with, in one shape (``models.ErrorBody``).

The status comes from the exception class (``orchestrator.errors``); what FastAPI,
Starlette, Redis and kombu raise is turned into treadle's errors here, at the boundary,
so a client sees one vocabulary whichever layer failed.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import kombu.exceptions
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.api.models import ErrorBody, ProblemOut
from orchestrator.errors import (
    InvalidInput,
    NotFound,
    Problem,
    Refused,
    TreadleError,
    Unauthorized,
    Unreachable,
)

log = logging.getLogger("treadle.api")


def error_body(exc: TreadleError) -> ErrorBody:
    problems = None
    if isinstance(exc, InvalidInput):
        problems = [ProblemOut(where=p.where, what=p.what) for p in exc.problems]
    return ErrorBody(
        error=exc.code,
        message=str(exc),
        problems=problems,
        retry_after_s=exc.retry_after_s if isinstance(exc, Refused) else None,
    )


def error_response(exc: TreadleError) -> JSONResponse:
    headers = {}
    if isinstance(exc, Refused):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="treadle"'
    return JSONResponse(
        error_body(exc).model_dump(exclude_none=True), exc.http_status, headers=headers
    )


def problems_of(exc: RequestValidationError) -> list[Problem]:
    """FastAPI's validation errors, each located as ``query.limit``, ``path.workflow_id``."""
    return [
        Problem(".".join(str(part) for part in error.get("loc", ())), str(error.get("msg", "")))
        for error in exc.errors()
    ]


def _treadle(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TreadleError)
    if exc.http_status >= 500:
        log.warning("%s answered %s: %s", type(exc).__name__, exc.http_status, exc)
    return error_response(exc)


def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(InvalidInput(problems_of(exc)))


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(f"no such path: {request.url.path}"))
    body = ErrorBody(error="error", message=str(exc.detail))
    return JSONResponse(
        body.model_dump(exclude_none=True), exc.status_code, headers=dict(exc.headers or {})
    )


def _unreachable(_: Request, exc: Exception) -> JSONResponse:
    return _treadle(_, Unreachable(f"Redis cannot be reached: {exc}"))


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Logged with its traceback; the client gets no internals, only where it happened.
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    body = ErrorBody(
        error="error", message=f"internal error in {request.method} {request.url.path}"
    )
    return JSONResponse(body.model_dump(exclude_none=True), 500)


def install(app: FastAPI) -> None:
    handlers: list[tuple[type[Exception], Any]] = [
        (TreadleError, _treadle),
        (RequestValidationError, _validation),
        (StarletteHTTPException, _http),
        (redis.ConnectionError, _unreachable),
        (redis.TimeoutError, _unreachable),
        (kombu.exceptions.OperationalError, _unreachable),
        (Exception, _unexpected),
    ]
    for klass, handler in handlers:
        app.add_exception_handler(klass, handler)


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route may give."""
    return {status: {"model": ErrorBody, "description": _MEANING[status]} for status in statuses}


_MEANING = {
    400: "Invalid input: every problem, located",
    401: "Missing or wrong bearer token",
    404: "No such workflow or dead letter",
    409: "The workflow's state does not allow this",
    413: "Body over TREADLE_API_MAX_BODY_BYTES",
    415: "Body is not JSON",
    429: "Refused by backpressure; retry after Retry-After seconds",
    503: "Redis cannot be reached",
}
