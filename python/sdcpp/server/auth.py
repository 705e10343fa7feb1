"""The gate in front of every route: --api-key and the request-size limit.

A plain ASGI middleware, not Starlette's BaseHTTPMiddleware: that one wraps `receive`, and a
handler behind it could no longer see its client disconnect (which cancels the client's job).
"""
from __future__ import annotations

import hmac
import json
from typing import Optional

from .errors import ApiError, error_body

OPEN_PATHS = frozenset({"/health"})


class Guard:
    """With api_key: every route but /health needs ``Authorization: Bearer KEY`` (401 otherwise).
    Bodies announced (Content-Length) over max_body_bytes get 413 before they are read."""

    def __init__(self, app, api_key: Optional[str], max_body_bytes: int):
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        path = scope.get("path", "")
        if self.expected is not None and path not in OPEN_PATHS:
            # Constant-time compare: the answer's timing must not reveal how much of a guess matched.
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                err = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", "Authorization",
                               headers={"WWW-Authenticate": "Bearer"})
                return await _reply(send, path, err)
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            err = ApiError(413, f"request body of {int(length)} bytes is over the server's limit of "
                                f"{self.max_body_bytes}", None)
            return await _reply(send, path, err)
        return await self.app(scope, receive, send)


async def _reply(send, path: str, err: ApiError) -> None:
    body = json.dumps(error_body(path, err)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
