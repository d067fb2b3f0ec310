"""The OpenAPI schema as the server answers: errors are OpenAI's {"error": {...}} with a 4xx status
(never FastAPI's 422 validation shape), and every operation needs the bearer token."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error or server_error")
    param: str | None = Field(description="the field or parameter at fault")
    code: str | None = Field(description="a machine-readable reason, e.g. file_not_found, too_large")


class ErrorBody(BaseModel):
    error: ErrorDetail


ERRORS = {"400": "bad request: a field is missing, malformed or refused", "401": "no valid API token",
          "404": "no such object", "409": "the object is still in use", "413": "the request body is too large",
          "507": "no space left on device on the server"}


def install(app: FastAPI, token_required: bool) -> None:
    def schema() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = doc.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schemas["ErrorBody"].pop("$defs", {}))
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        if token_required:
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for operations in doc.get("paths", {}).values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
                for status, description in ERRORS.items():
                    operation["responses"].setdefault(status, {"description": description, **error})
                if token_required:
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = doc
        return doc

    app.openapi = schema
