"""ASGI middleware that runs before routing.

``PathGuard`` rejects API paths whose raw form the router would misread: an encoded ``/``
or ``\\`` inside a segment (``a%2Fb`` must never become two segments), NUL bytes, and paths
that are not valid UTF-8. Ids can never contain these, so the answer is
``400 invalid_identifier`` rather than a confusing 404.

It also enforces ``server.max_header_bytes`` on the whole request head: the HTTP parser
only bounds a head that is still incomplete, and one that arrives complete in a single read
(up to 64 KiB) would otherwise pass. The answer is ``431 request_head_too_large``.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import unquote_to_bytes

from yoi_registryd.errors import InvalidIdentifier, InvalidQuery, RegistryError
from yoi_registryd.http.app import error_body

Scope = dict[str, Any]
ASGIApp = Any

_FORBIDDEN_ENCODED: Final = (b"%2f", b"%5c", b"%00")


class RequestHeadTooLarge(RegistryError):
    """The request line and headers are larger than ``server.max_header_bytes``."""

    code = "request_head_too_large"
    status = 431

    def __init__(self) -> None:
        super().__init__("the request line and headers are too large")


def head_bytes(scope: Scope) -> int:
    """The size of the request head as sent: target, and each header as ``name: value``."""
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) + 1
    return target + sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))


class PathGuard:
    def __init__(self, app: ASGIApp, max_head_bytes: int | None = None) -> None:
        self.app = app
        self.max_head_bytes = max_head_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            error: RegistryError | None = None
            if self.max_head_bytes is not None and head_bytes(scope) > self.max_head_bytes:
                error = RequestHeadTooLarge()
            error = error or self._check(scope)
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
