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

from collections.abc import Callable
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from yoi_registryd.errors import (
    InvalidIdentifier,
    InvalidQuery,
    RegistryError,
    RequestHeadTooLarge,
    send_error,
)

Scope = dict[str, Any]
ASGIApp = Any

_FORBIDDEN_ENCODED: Final = (b"%2f", b"%5c", b"%00")


def head_bytes(scope: Scope) -> int:
    """The size of the request head as sent: target, and each header as ``name: value``."""
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) + 1
    return target + sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))


class PathGuard:
    def __init__(
        self, app: ASGIApp, revision: Callable[[], int], max_head_bytes: int | None = None
    ) -> None:
        self.app = app
        self.revision = revision
        """The registry's current revision, for the ``X-Registry-Index`` of a refusal."""
        self.max_head_bytes = max_head_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            error: RegistryError | None = None
            if self.max_head_bytes is not None and head_bytes(scope) > self.max_head_bytes:
                error = RequestHeadTooLarge()
            error = error or self._check(scope)
            if error is not None:
                await send_error(send, error, self.revision())
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
