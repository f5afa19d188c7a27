"""The OpenAPI document and its browsable docs, behind the same token as the rest.

The submit route reads its body itself (so that every problem is reported by treadle's
validator, located, instead of pydantic's first), so the spec's schema is added to the
document here; FastAPI's 422 answers are dropped from it, since they are answered 400.
Error answers are documented as JSON whatever the route's own media type.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse

from orchestrator.model import WorkflowSpec

OPENAPI_PATH = "/openapi.json"

router = APIRouter(include_in_schema=False)


def build_openapi(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    spec = WorkflowSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(spec.pop("$defs", {}))
    schemas["WorkflowSpec"] = spec
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            for status, response in responses.items():
                # FastAPI gives error answers the route's media type (ndjson for the
                # audit log); errors are always JSON.
                content = response.get("content")
                if status[0] in "45" and content:
                    response["content"] = {"application/json": next(iter(content.values()))}
    return document


@router.get(OPENAPI_PATH)
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=OPENAPI_PATH, title=f"{request.app.title} API")
