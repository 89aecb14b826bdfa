"""The cacheable read routes, described once: what a request asks for, how its body is built.

A read route's answer depends only on the snapshot, the caller's visibility and the request's
validated parameters, so it is named by a cache key and built by a pure function. Both the
quart handlers (``yoi_registryd.http.read_routes``) and the fast path in front of them
(``yoi_registryd.http.fastpath``) resolve a request through :func:`resolve` and answer
through :func:`render`: one definition of every read route's parameters, cache key, body
and headers, whichever of the two serves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, NamedTuple

from yoi_registryd.http import views
from yoi_registryd.http.cursors import CursorKey
from yoi_registryd.http.state import ApiState
from yoi_registryd.http.watch import ViewIndex, WatchQuery, etag_for, split_watch_query
from yoi_registryd.ids import validate_identifier
from yoi_registryd.policy import Principal, RequestAccess, Visibility
from yoi_registryd.registry import Snapshot

RUNTIMES: Final = "/api/runtimes"
RUNTIME: Final = "/api/runtimes/<runtime_id>"
RUNTIME_WORKERS: Final = "/api/runtimes/<runtime_id>/workers"
WORKER: Final = "/api/runtimes/<runtime_id>/workers/<worker_id>"
HOSTS: Final = "/api/hosts"
HOST_WORKERS: Final = "/api/hosts/<host_id>/workers"
WORKERS: Final = "/api/workers"
SOURCES: Final = "/api/sources"
"""Not one of these cached reads (``ready`` moves with the clock), but a list like them."""
TEMPLATES: Final = (RUNTIMES, RUNTIME, RUNTIME_WORKERS, WORKER, HOSTS, HOST_WORKERS, WORKERS)
SCOPE: Final = "/api/w/<workspace_id>"
"""Prefix of the workspace-scoped routes (yoi's ``/api/w/{workspace_id}/...``): each is the
twin of the route without it. The security middleware makes the path's workspace the acting
one (as ``X-Yoi-Workspace`` would), so a twin answers exactly as its unscoped route does for
that workspace."""


def scoped(template: str) -> str:
    """The workspace-scoped twin of an ``/api/...`` route template."""
    return f"{SCOPE}{template.removeprefix('/api')}"


SCOPED: Final = {scoped(t): t for t in TEMPLATES}
"""Scoped read route template -> its unscoped twin."""

Build = Callable[[Snapshot, RequestAccess], views.Rendered]


class Read(NamedTuple):
    """One read request, resolved: its cache key (less the caller's view), body and index."""

    key: tuple[object, ...]
    build: Build
    view_index: ViewIndex


class Answer(NamedTuple):
    rendered: views.Rendered
    etag: str
    since: int
    """The revision since which this caller's body has been this one (``ViewHistory``)."""


def whole_registry(snapshot: Snapshot) -> int:
    """View index of views that any change may affect."""
    return snapshot.revision


def _runtime_index(runtime_id: str) -> ViewIndex:
    return lambda s: s.runtime(runtime_id).revision


def _ask(query: views.ListQuery, access: RequestAccess) -> views.PageRequest:
    """A page of a list as ``access``'s caller asks for it."""
    return views.PageRequest(query, access.view, access.principal.workspace)


ListPage = Callable[[Snapshot, views.PageRequest], views.Rendered]
_REGISTRY_LISTS: Final[dict[str, tuple[str, ListPage]]] = {
    RUNTIMES: ("runtimes", views.runtimes_page),
    HOSTS: ("hosts", views.hosts_page),
    WORKERS: ("workers", views.workers_page),
}
"""The registry-wide lists: cache-key name and page builder, by route template."""


def resolve(
    template: str,
    params: dict[str, str],
    args: Iterable[tuple[str, str]],
    cursors: CursorKey,
    principal: Principal,
) -> tuple[Read, WatchQuery | None]:
    """The read behind a matched route template; raises the route's typed errors
    (``invalid_identifier``, ``invalid_query``) in the order the API has always checked.
    A workspace-scoped template resolves as its twin (the middleware took the workspace).
    A list's cursors are bound to the list and to ``principal`` (``http/cursors.py``)."""
    template = SCOPED.get(template, template)

    def list_query(rest: list[tuple[str, str]], *list_id: str) -> views.ListQuery:
        return views.parse_list_query(rest).bound(cursors.for_list(list_id, principal))

    if template in _REGISTRY_LISTS:
        name, page = _REGISTRY_LISTS[template]
        watch, rest = split_watch_query(args)
        q = list_query(rest, name)
        return Read((name, q), lambda s, a: page(s, _ask(q, a)), whole_registry), watch
    if template == HOST_WORKERS:
        host_id = validate_identifier(params["host_id"], "host_id")
        watch, rest = split_watch_query(args)
        q = list_query(rest, "host_workers", host_id)

        def host_workers(s: Snapshot, a: RequestAccess) -> views.Rendered:
            entry, host = views.visible_host(s, host_id, a.view)
            return views.runtime_workers_page(entry, _ask(q, a), host)

        return Read(
            ("host_workers", host_id, q), host_workers, lambda s: s.host(host_id)[0].revision
        ), watch
    runtime_id = validate_identifier(params["runtime_id"], "runtime_id")
    if template == RUNTIME_WORKERS:
        watch, rest = split_watch_query(args)
        q = list_query(rest, "runtime_workers", runtime_id)
        return Read(
            ("runtime_workers", runtime_id, q),
            lambda s, a: views.runtime_workers_page(
                views.visible_entry(s, runtime_id, a.view), _ask(q, a)
            ),
            _runtime_index(runtime_id),
        ), watch
    if template == RUNTIME:
        watch, rest = split_watch_query(args)
        views.reject_query(rest)
        return Read(
            ("runtime", runtime_id),
            lambda s, a: views.runtime_detail(s, runtime_id, a.view),
            _runtime_index(runtime_id),
        ), watch
    if template == WORKER:
        worker_id = validate_identifier(params["worker_id"], "worker_id")
        watch, rest = split_watch_query(args)
        views.reject_query(rest)
        return Read(
            ("worker", runtime_id, worker_id),
            lambda s, a: views.worker_detail(s, runtime_id, worker_id, a.view),
            _runtime_index(runtime_id),
        ), watch
    raise ValueError(f"not a read route: {template!r}")


FILTERABLE: Final = frozenset(
    {RUNTIMES, RUNTIME, RUNTIME_WORKERS, HOSTS, HOST_WORKERS, WORKERS, SOURCES}
)
"""Routes whose answer the policy can trim (a worker's detail is whole, or not visible)."""


def says_filtered(template: str, view: Visibility) -> bool:
    """``X-Results-Filtered-By-Policy: true``: whether the policy *may* hide something from
    this route for this caller, never whether it did. An answer that depended on the data
    (some item hidden in this page's range or not) was an oracle: with chosen positions it
    located hidden items by bisection (issue 13)."""
    return view.restricted and SCOPED.get(template, template) in FILTERABLE


def render(state: ApiState, read: Read, snapshot: Snapshot, access: RequestAccess) -> Answer:
    """The body and its ETag for ``access``'s view at ``snapshot``: built and hashed once per
    revision and view, then shared by every request that asks the same."""
    # Bodies depend on who asks: the visibility and the principal (client and acting
    # workspace, which cursors are bound to) join the key.
    key = (access.view.key, access.principal, *read.key)
    rendered = state.cache.get(snapshot.revision, key, lambda: read.build(snapshot, access))
    body = rendered.body
    tag = state.etags.get(snapshot.revision, key, lambda: etag_for(body).encode("ascii"))
    etag = tag.decode("ascii")
    return Answer(rendered, etag, state.history.note(key, snapshot.revision, etag))


def view_index(state: ApiState, read: Read, access: RequestAccess) -> ViewIndex:
    """What a blocking query on ``read`` waits on: the revision since which the caller's
    own body has been what it is. It renders the view, so it raises (and the query ends at
    once) exactly when the answer would be an error: a target missing or not visible."""
    coarse: list[int] = []
    since: list[int] = []

    def index(snapshot: Snapshot) -> int:
        # Unchanged data (the runtime's own revision) cannot change the body: no render.
        at = read.view_index(snapshot)
        if coarse != [at]:
            coarse[:] = [at]
            since[:] = [render(state, read, snapshot, access).since]
        return since[0]

    return index
