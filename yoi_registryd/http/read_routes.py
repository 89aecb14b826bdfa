"""The read routes on quart: the seven cached reads, their workspace-scoped twins and
``/api/sources``.

A plain GET of a cached read is usually answered by the fast path before quart
(``http/fastpath.py``); what reaches these handlers is everything else: blocking queries,
conditional requests, errors. Both resolve and render a read through ``http/reads.py``, so
they answer the same bytes.
"""

from __future__ import annotations

from functools import partial
from typing import Final

import trio
from quart import Response, request
from quart_trio import QuartTrio

from yoi_registryd.http import reads, views
from yoi_registryd.http.handling import access, respond, scope
from yoi_registryd.http.security import FILTERED_HEADER
from yoi_registryd.http.source_status import sources_page
from yoi_registryd.http.state import ApiState
from yoi_registryd.http.watch import ViewIndex, WatchQuery, etag_for, split_watch_query
from yoi_registryd.metrics import HELD_SCOPE_KEY
from yoi_registryd.policy import RequestAccess
from yoi_registryd.registry import Snapshot

READ_ENDPOINTS: Final = {
    "list_runtimes": reads.RUNTIMES,
    "get_runtime": reads.RUNTIME,
    "list_runtime_workers": reads.RUNTIME_WORKERS,
    "get_worker": reads.WORKER,
    "list_hosts": reads.HOSTS,
    "list_host_workers": reads.HOST_WORKERS,
    "list_workers": reads.WORKERS,
}
"""The read routes' endpoints (OpenAPI operationIds); their scoped twins add ``scoped_``."""


def register(app: QuartTrio, state: ApiState) -> None:
    """Each read route, then each one's workspace-scoped twin, then ``/api/sources``."""
    for endpoint, template in READ_ENDPOINTS.items():
        app.add_url_rule(template, endpoint, partial(read, state, template), methods=["GET"])
    # yoi's /api/w/{workspace_id}/...: the security middleware made the path's workspace
    # the acting one, so each twin answers as its unscoped route.
    for endpoint, template in READ_ENDPOINTS.items():
        app.add_url_rule(
            reads.scoped(template),
            f"scoped_{endpoint}",
            partial(read, state, template),
            methods=["GET"],
        )
    app.add_url_rule(reads.SOURCES, "list_sources", partial(list_sources, state), methods=["GET"])


async def read(
    state: ApiState, template: str, workspace_id: str | None = None, **params: str
) -> Response:
    """A cached read route, resolved and rendered by ``reads`` (which the fast path shares)."""
    caller = access()
    args = request.args.items(multi=True)
    found, watch = reads.resolve(template, params, args, state.cursor_key, caller.principal)
    snapshot = await current(state, watch, reads.view_index(state, found, caller))
    answer = reads.render(state, found, snapshot, caller)
    return conditional(template, answer.rendered, answer.etag, snapshot, caller)


async def list_sources(state: ApiState) -> Response:
    """Not cached per revision: ``ready`` moves with the clock, and the list is short."""
    caller = access()
    watch, rest = split_watch_query(request.args.items(multi=True))
    cursors = state.cursor_key.for_list(("sources",), caller.principal)
    q = views.parse_list_query(rest).bound(cursors)
    snapshot = await current(state, watch, reads.whole_registry)
    rendered = sources_page(
        snapshot,
        q,
        trio.current_time(),
        caller.view,
        caller.principal.workspace,
        discovery=state.discoveries(),
    )
    return conditional(reads.SOURCES, rendered, etag_for(rendered.body), snapshot, caller)


async def current(state: ApiState, watch: WatchQuery | None, view_index: ViewIndex) -> Snapshot:
    """The snapshot to answer from; a blocking query waits here for its view to change."""
    if watch is not None:
        scope()[HELD_SCOPE_KEY] = True
    return await state.watches.snapshot_for(watch, view_index)


def conditional(
    template: str,
    rendered: views.Rendered,
    etag: str,
    snapshot: Snapshot,
    caller: RequestAccess,
) -> Response:
    """The body, or ``304`` when the client already holds it (``If-None-Match``)."""
    if request.if_none_match.contains_weak(etag):
        response = respond(b"", snapshot.revision, status=304)
        # A 304 has no body, so no Content-Type.
        del response.headers["Content-Type"]
    else:
        response = respond(rendered.body, snapshot.revision)
    response.set_etag(etag)
    if rendered.filtered:
        caller.note_filtered()  # the audit says whether something was hidden
    if reads.says_filtered(template, caller.view):
        response.headers[FILTERED_HEADER] = "true"
    return response
