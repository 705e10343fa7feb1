"""Errors the server answers with: always JSON, always naming the field at fault.

Two shapes, because clients parse them: OpenAI routes (/v1/...) answer OpenAI's
``{"error": {"message", "type", "param", "code"}}``; the others answer A1111's (FastAPI's)
``{"error", "detail", ...}`` with an added ``"field"``.
"""
from __future__ import annotations

from typing import Optional


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: Optional[str] = None, *, kind: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.kind = kind or _KINDS.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}


_KINDS = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
          501: "not_implemented_error", 503: "service_unavailable"}


def bad_request(field: Optional[str], message: str) -> ApiError:
    return ApiError(400, message, field)


def error_body(path: str, err: ApiError) -> dict:
    if path.startswith("/v1/"):
        return {"error": {"message": err.message, "type": err.kind, "param": err.field, "code": None}}
    return {"error": err.kind, "detail": err.message, "field": err.field}


def install_handlers(app) -> None:
    """Every failure becomes JSON; nothing a client sends can take the process down."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def respond(request, err: ApiError):
        return JSONResponse(error_body(request.url.path, err), status_code=err.status, headers=err.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form")]
        field = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        err = ApiError(422, f"{field}: {msg}" if field else msg, field)
        return respond(request, err)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return respond(request, ApiError(exc.status_code, str(exc.detail), None, headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        return respond(request, ApiError(500, f"internal error: {type(exc).__name__}: {exc}", None))
