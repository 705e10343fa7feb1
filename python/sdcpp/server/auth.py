"""--api-key: every route but /health needs ``Authorization: Bearer KEY``."""
from __future__ import annotations

import hmac

OPEN_PATHS = frozenset({"/health"})


def install(app, api_key: str) -> None:
    from fastapi.responses import JSONResponse

    from .errors import ApiError, error_body

    expected = f"Bearer {api_key}".encode()

    @app.middleware("http")
    async def _require_key(request, call_next):
        if request.url.path in OPEN_PATHS or request.method == "OPTIONS":
            return await call_next(request)
        got = request.headers.get("authorization", "").encode()
        # Constant-time compare: the answer's timing must not reveal how much of a guess matched.
        if not hmac.compare_digest(got, expected):
            err = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", "Authorization",
                           headers={"WWW-Authenticate": "Bearer"})
            return JSONResponse(error_body(request.url.path, err), status_code=401, headers=err.headers)
        return await call_next(request)
