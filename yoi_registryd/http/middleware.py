"""ASGI middleware that runs before routing.

``PathGuard`` rejects API paths whose raw form the router would misread: an encoded ``/``
or ``\\`` inside a segment (``a%2Fb`` must never become two segments), NUL bytes, and paths
that are not valid UTF-8. Ids can never contain these, so the answer is
``400 invalid_identifier`` rather than a confusing 404.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import unquote_to_bytes

from yoi_registryd.errors import InvalidIdentifier, InvalidQuery, RegistryError
from yoi_registryd.http.app import error_body

Scope = dict[str, Any]
ASGIApp = Any

_FORBIDDEN_ENCODED: Final = (b"%2f", b"%5c", b"%00")


class PathGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            error = self._check(scope)
            if error is not None:
                await _send_error(send, error, self.app)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _check(scope: Scope) -> RegistryError | None:
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        lowered = raw.lower()
        if any(token in lowered for token in _FORBIDDEN_ENCODED):
            return InvalidIdentifier("path segment")
        try:
            unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return InvalidIdentifier("path segment")
        try:
            unquote_to_bytes(scope.get("query_string", b"")).decode("utf-8")
        except UnicodeDecodeError:
            return InvalidQuery("the query string is not valid UTF-8")
        return None


async def _send_error(send: Any, error: RegistryError, app: ASGIApp) -> None:
    status, body, headers = error_body(error, app)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(
                    (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in headers.items()
                ),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
