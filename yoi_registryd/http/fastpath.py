"""The read fast path: plain GETs of the read routes answered without quart's machinery.

Measured (``benchmarks/README.md``): for a body already encoded for the current revision,
quart's request context, routing and ``Response`` objects cost more per request than the
HTTP server itself, and the backend polls these routes constantly. This ASGI app sits where
quart sits (inside the security middleware and ``PathGuard``, so request ids,
authentication, policy, audit and metrics apply unchanged) and answers only the plain case:
a ``GET`` of a read route with a simple query string, no blocking query, no conditional
request, and a body that renders without error. Everything else, every error included, goes
to quart's handlers. The parameters, cache key, body and
ETag come from :mod:`yoi_registryd.http.reads`, shared with quart's handlers, so both paths
answer the same bytes with the same headers.
"""

from __future__ import annotations

import re
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qsl

from werkzeug.routing import Map

from yoi_registryd.errors import JSON_HEADER, REVISION_HEADER
from yoi_registryd.http import reads
from yoi_registryd.http.security import FILTERED_HEADER, RouteTable
from yoi_registryd.http.state import ApiState
from yoi_registryd.metrics import ROUTE_SCOPE_KEY
from yoi_registryd.policy import RequestAccess, access_of

Scope = dict[str, Any]

_SIMPLE_QUERY: Final = re.compile(rb"[A-Za-z0-9_.=&-]*")
"""Query strings whose decoding cannot differ from werkzeug's: no escapes, ``+`` or ``;``."""
_REVISION: Final = REVISION_HEADER.lower().encode("ascii")
_FILTERED: Final = (FILTERED_HEADER.lower().encode("ascii"), b"true")
_CONDITIONAL: Final = b"if-none-match"


def match(path: str) -> tuple[str, dict[str, str]] | None:
    """The read route template and path parameters of ``path``; None for anything else
    (including empty segments, which the router answers itself)."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] or parts[1] != "api":
        return None
    if parts[2] != "w":
        return _match(parts)
    # /api/w/<workspace_id>/...: the twin of /api/... (the middleware took the workspace).
    if len(parts) < 5 or not parts[3]:
        return None
    found = _match(["", "api", *parts[4:]])
    if found is None:
        return None
    template, params = found
    return reads.scoped(template), {**params, "workspace_id": parts[3]}


def _match(parts: list[str]) -> tuple[str, dict[str, str]] | None:
    """:func:`match` of an unscoped path, split at ``/``."""
    n = len(parts)
    collection = parts[2]
    if collection == "workers":
        return (reads.WORKERS, {}) if n == 3 else None
    if collection == "runtimes":
        if n == 3:
            return reads.RUNTIMES, {}
        runtime_id = parts[3]
        if not runtime_id:
            return None
        if n == 4:
            return reads.RUNTIME, {"runtime_id": runtime_id}
        if parts[4] != "workers":
            return None
        if n == 5:
            return reads.RUNTIME_WORKERS, {"runtime_id": runtime_id}
        if n == 6 and parts[5]:
            return reads.WORKER, {"runtime_id": runtime_id, "worker_id": parts[5]}
        return None
    if collection == "hosts":
        if n == 3:
            return reads.HOSTS, {}
        if n == 5 and parts[3] and parts[4] == "workers":
            return reads.HOST_WORKERS, {"host_id": parts[3]}
    return None


class _Answer(NamedTuple):
    headers: list[tuple[bytes, bytes]]
    body: bytes
    filtered: bool
    route: str


class ReadFastPath:
    """ASGI app: the plain read requests itself, everything else by ``app`` (quart).

    A finished answer (headers and body) is kept for the rest of its revision, keyed by the
    request target and the caller's view, so a repeated request costs a dictionary lookup.
    """

    def __init__(self, app: Any, state: ApiState, max_answers: int = 4096) -> None:
        self.app = app
        self.state = state
        self._answers: dict[tuple[object, ...], _Answer] = {}
        self._answers_revision = -1
        self._max_answers = max_answers
        self.served = 0
        """Requests answered here rather than by quart (for tests and benchmarks)."""

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            answer = self._answer(scope)
            if answer is not None:
                self.served += 1
                # A copy: the kept list must survive middleware that edits what it sends.
                headers = list(answer.headers)
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": answer.body})
                return
        await self.app(scope, receive, send)

    def _answer(self, scope: Scope) -> _Answer | None:
        access = access_of(scope)
        if access is None:
            return None
        for name, _ in scope["headers"]:
            if name.lower() == _CONDITIONAL:
                return None  # quart answers 304s (rare on a hot path: the body is the same)
        path: str = scope["path"]
        query: bytes = scope["query_string"]
        revision = self.state.actor.snapshot.revision
        if revision != self._answers_revision:
            self._answers.clear()
            self._answers_revision = revision
        key = (access.view.key, access.principal, path, query)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._render(path, query, access)
            if answer is None:
                return None
            if len(self._answers) >= self._max_answers:
                self._answers.clear()
            self._answers[key] = answer
        if answer.filtered:
            access.note_filtered()
        scope[ROUTE_SCOPE_KEY] = answer.route
        return answer

    def _render(self, path: str, query: bytes, access: RequestAccess) -> _Answer | None:
        matched = match(path)
        if matched is None or not _SIMPLE_QUERY.fullmatch(query):
            return None
        template, params = matched
        state = self.state
        try:
            args = parse_qsl(query.decode("ascii"), keep_blank_values=True) if query else []
            read, watch = reads.resolve(template, params, args, state.cursor_key, access.principal)
            if watch is not None:
                return None  # held requests are not hot: quart holds them
            snapshot = state.actor.snapshot
            answer = reads.render(state, read, snapshot, access)
        except Exception:
            return None  # quart raises the same error and renders it in the one place
        body = answer.rendered.body
        headers = [
            JSON_HEADER,
            (b"content-length", b"%d" % len(body)),
            (_REVISION, b"%d" % snapshot.revision),
            (b"etag", b'"%s"' % answer.etag.encode("ascii")),
        ]
        if reads.says_filtered(template, access.view):
            headers.append(_FILTERED)
        return _Answer(headers, body, answer.rendered.filtered, template)


class MemoizedRouteTable(RouteTable):
    """The security middleware's route matching, remembered per ``(method, path)``.

    werkzeug binds the URL map and matches anew for every request, the largest cost of the
    middleware on a plain read (``benchmarks/README.md``); the answer depends on the method
    and the path only, and the backend asks for the same few paths over and over. Bounded:
    a scan of many distinct paths empties the memo rather than growing it.
    """

    def __init__(self, url_map: Map, max_entries: int = 8192) -> None:
        super().__init__(url_map)
        self._memo: dict[tuple[str, str], tuple[str | None, dict[str, str]]] = {}
        self._max_entries = max_entries

    def match(self, method: str, path: str) -> tuple[str | None, dict[str, str]]:
        key = (method, path)
        found = self._memo.get(key)
        if found is None:
            found = super().match(method, path)
            if len(self._memo) >= self._max_entries:
                self._memo.clear()
            self._memo[key] = found
        return found[0], dict(found[1])
