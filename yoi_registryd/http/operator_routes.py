"""The routes for operators and orchestrators rather than the backend: the probes
(``/livez``, ``/readyz``, ``/healthz``), ``/metrics`` and the status page at ``/`` (the
OpenAPI document is served by ``http/openapi.py``).

Who may call them is the security middleware's business (``http/security.py``): it leaves
the probes open, and hands ``/readyz?verbose`` the reason the caller is not an operator.
"""

from __future__ import annotations

from functools import partial
from typing import Final

import trio
from quart import Response, request
from quart_trio import QuartTrio

from yoi_registryd.errors import RegistryError
from yoi_registryd.http import probes, views
from yoi_registryd.http.handling import access, no_query, respond, scope
from yoi_registryd.http.security import OPERATOR_REFUSAL_KEY, STATIC_PAGE_KEY
from yoi_registryd.http.source_status import sources_page
from yoi_registryd.http.state import ApiState
from yoi_registryd.http.status_page import HEADERS as STATUS_PAGE_HEADERS
from yoi_registryd.http.status_page import render_status_page, render_token_page

PLAIN_TEXT: Final = "text/plain; charset=utf-8"


PROBES: Final[dict[str, tuple[probes.ProbeKind, bool]]] = {
    "livez": ("livez", False),
    "readyz": ("readyz", False),
    "healthz": ("livez", True),
}
"""Each probe route's endpoint: the probe it runs, and whether it answers in JSON."""


def register(app: QuartTrio, state: ApiState) -> None:
    for endpoint, (kind, as_json) in PROBES.items():
        handler = partial(probe, state, kind, as_json=as_json)
        app.add_url_rule(f"/{endpoint}", endpoint, handler, methods=["GET"])
    app.add_url_rule("/metrics", "metrics", partial(metrics, state), methods=["GET"])
    app.add_url_rule("/", "status_page", partial(status_page, state), methods=["GET"])


async def probe(state: ApiState, kind: probes.ProbeKind, *, as_json: bool) -> Response:
    """A probe's checks; ``as_json``: ``/healthz``, the liveness probe for clients that want
    JSON (``{"status": "ok"}``, or ``"failed"`` and the names of the checks that failed)."""
    query = probes.parse_probe_query(request.args.items(multi=True))
    refusal = scope().get(OPERATOR_REFUSAL_KEY)
    if query.verbose and isinstance(refusal, RegistryError):
        raise refusal  # each check's detail is for operators (security middleware)
    result = await probes.evaluate(kind, state.actor, state.lifecycle, query.exclude)
    revision = state.actor.snapshot.revision
    if as_json:
        failed = [c.name for c in result.checks if not c.ok]
        body = {"status": "ok"} if result.ok else {"status": "failed", "failed": failed}
        return respond(views.encode(body), revision, status=result.status)
    response = respond(result.render(query.verbose), revision, PLAIN_TEXT, result.status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def metrics(state: ApiState) -> Response:
    no_query()
    body, content_type = state.metrics.render(request.headers.get("Accept"))
    response = respond(body, state.actor.snapshot.revision, content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


async def status_page(state: ApiState) -> Response:
    no_query()
    snapshot = state.actor.snapshot
    if scope().get(STATIC_PAGE_KEY):
        # Clients are configured and this request went unauthenticated: the page alone.
        return status_page_response(render_token_page(), snapshot.revision)
    caller = access()
    everything = views.ListQuery(views.MAX_LIMIT)
    view, workspace = caller.view, caller.principal.workspace
    page = render_status_page(
        snapshot.revision,
        sources_page(snapshot, everything, trio.current_time(), view, workspace).body,
        views.runtimes_page(snapshot, views.PageRequest(everything, view, workspace)).body,
        views.workers_page(snapshot, views.PageRequest(views.ListQuery(50), view, workspace)).body,
    )
    return status_page_response(page, snapshot.revision)


def status_page_response(page: bytes, revision: int) -> Response:
    response = respond(page, revision, "text/html; charset=utf-8")
    for name, value in STATUS_PAGE_HEADERS.items():
        response.headers[name] = value
    return response
