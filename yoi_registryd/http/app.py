"""The backend-facing HTTP API: a quart-trio app over the registry's current Snapshot.

Handlers take one snapshot at the start of a request and answer from it alone: no I/O, no
locks, and an encoded body shared by every request at the same revision and view. Errors
are typed (``yoi_registryd.errors``) and rendered in one place; nothing answers with HTML or
a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from yoi_registryd.discovery.runner import DiscoveryStatus
from yoi_registryd.errors import (
    REVISION_HEADER,
    HttpRefusal,
    InternalError,
    InvalidQuery,
    NotVisible,
    RegistryError,
    RouteNotFound,
    render_error,
)
from yoi_registryd.errors import MethodNotAllowed as MethodNotAllowedError
from yoi_registryd.http import probes, reads, views
from yoi_registryd.http.cursors import CursorKey
from yoi_registryd.http.security import (
    FILTERED_HEADER,
    OPERATOR_REFUSAL_KEY,
    STATIC_PAGE_KEY,
    new_request_id,
    request_id_var,
)
from yoi_registryd.http.source_status import sources_page
from yoi_registryd.http.status_page import HEADERS as STATUS_PAGE_HEADERS
from yoi_registryd.http.status_page import render_status_page, render_token_page
from yoi_registryd.http.watch import (
    DEFAULT_MAX_HELD,
    ViewHistory,
    ViewIndex,
    WatchGate,
    WatchQuery,
    etag_for,
    split_watch_query,
)
from yoi_registryd.ids import validate_identifier
from yoi_registryd.metrics import HELD_SCOPE_KEY, ROUTE_SCOPE_KEY, Metrics
from yoi_registryd.operations import Operation, OperationRouter, decode_request
from yoi_registryd.policy import (
    ACCESS_SCOPE_KEY,
    ANONYMOUS,
    SEES_ALL,
    RequestAccess,
    access_of,
)
from yoi_registryd.registry import RegistryActor, Snapshot

log = logging.getLogger(__name__)

JSON: Final = "application/json"


class ApiState:
    """What the handlers share: the actor (for its snapshot), settings and the body cache."""

    def __init__(
        self,
        actor: RegistryActor,
        router: OperationRouter | None = None,
        *,
        conceal_invisible_workers: bool = True,
        metrics: Metrics | None = None,
        lifecycle: probes.Lifecycle | None = None,
        max_held_requests: int = DEFAULT_MAX_HELD,
        cursor_key: CursorKey | None = None,
        discoveries: Callable[[], list[DiscoveryStatus]] | None = None,
    ) -> None:
        self.actor = actor
        self.cursor_key = cursor_key or CursorKey.random()
        """Seals list cursors; random per process unless ``server.cursor_key_file``."""
        self.discoveries = discoveries or list
        """The ``[[discovery]]`` entries' status, for ``/api/sources``."""
        self.router = router or OperationRouter()
        self.conceal_invisible_workers = conceal_invisible_workers
        self.cache = views.BodyCache()
        self.etags = views.BodyCache()
        """ETags of the cached bodies, same keys: a body is hashed once per revision."""
        self.history = ViewHistory()
        """Since when each view's body is what it is: blocking queries wait on that."""
        self.metrics = metrics or Metrics(actor, process=False)
        self.lifecycle = lifecycle or probes.Lifecycle(listening=True)
        self.watches = WatchGate(actor, max_held=max_held_requests, metrics=self.metrics)


def _scope() -> dict[str, Any]:
    """The request's ASGI scope, shared with the middleware around the app."""
    return cast("dict[str, Any]", request.scope)


def _access() -> RequestAccess:
    """The request's principal and visibility, as the security middleware admitted it.

    The daemon always serves the app behind that middleware; an app served without it (a
    bare ``create_app``) answers as to an anonymous caller that may see everything.
    """
    access = access_of(request.scope)
    if access is None:
        access = RequestAccess(request_id_var.get() or new_request_id(), ANONYMOUS, SEES_ALL)
        _scope()[ACCESS_SCOPE_KEY] = access
    return access


def _json(body: bytes, snapshot: Snapshot, status: int = 200) -> Response:
    response = Response(body, status=status, content_type=JSON)
    response.headers[REVISION_HEADER] = str(snapshot.revision)
    return response


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
OPERATIONS: Final[tuple[Operation, ...]] = ("stop", "cancel", "input")


def operation_template(operation: Operation) -> str:
    return f"{reads.WORKER}/{operation}"


def create_app(state: ApiState) -> QuartTrio:
    """Build the ASGI app. The daemon serves it with hypercorn in its own nursery."""
    app = QuartTrio("yoi_registryd", static_folder=None)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    # ``/api//runtimes`` must not be answered with an HTML redirect to a merged path (which
    # would also echo the base URL): it matches no route and gets the JSON 404.
    app.url_map.merge_slashes = False

    @app.before_request
    async def note_route() -> None:
        # The route template (never the raw path) labels this request's metrics.
        rule = request.url_rule
        if rule is not None:
            _scope()[ROUTE_SCOPE_KEY] = rule.rule

    async def current(watch: WatchQuery | None, view_index: ViewIndex) -> Snapshot:
        """The snapshot to answer from; a blocking query waits here for its view to change."""
        if watch is not None:
            _scope()[HELD_SCOPE_KEY] = True
        return await state.watches.snapshot_for(watch, view_index)

    def conditional(
        template: str,
        rendered: views.Rendered,
        etag: str,
        snapshot: Snapshot,
        access: RequestAccess,
    ) -> Response:
        """The body, or ``304`` when the client already holds it (``If-None-Match``)."""
        if request.if_none_match.contains_weak(etag):
            response = Response(b"", status=304)
            # A 304 has no body, so no Content-Type (quart would add text/html).
            del response.headers["Content-Type"]
            response.headers[REVISION_HEADER] = str(snapshot.revision)
        else:
            response = _json(rendered.body, snapshot)
        response.set_etag(etag)
        if rendered.filtered:
            access.note_filtered()  # the audit says whether something was hidden
        if reads.says_filtered(template, access.view):
            response.headers[FILTERED_HEADER] = "true"
        return response

    async def cached(template: str, **params: str) -> Response:
        """A read route, resolved and rendered by ``reads`` (which the fast path shares)."""
        access = _access()
        args = request.args.items(multi=True)
        read, watch = reads.resolve(template, params, args, state.cursor_key, access.principal)
        snapshot = await current(watch, reads.view_index(state, read, access))
        answer = reads.render(state, read, snapshot, access)
        return conditional(template, answer.rendered, answer.etag, snapshot, access)

    def list_query(*list_id: str) -> tuple[views.ListQuery, WatchQuery | None]:
        watch, rest = split_watch_query(request.args.items(multi=True))
        cursors = state.cursor_key.for_list(list_id, _access().principal)
        return views.parse_list_query(rest).bound(cursors), watch

    def no_query() -> None:
        views.reject_query(request.args.items(multi=True))

    @app.get(reads.RUNTIMES)
    async def list_runtimes() -> Response:
        return await cached(reads.RUNTIMES)

    @app.get(reads.RUNTIME)
    async def get_runtime(runtime_id: str) -> Response:
        return await cached(reads.RUNTIME, runtime_id=runtime_id)

    @app.get(reads.RUNTIME_WORKERS)
    async def list_runtime_workers(runtime_id: str) -> Response:
        return await cached(reads.RUNTIME_WORKERS, runtime_id=runtime_id)

    @app.get(reads.WORKER)
    async def get_worker(runtime_id: str, worker_id: str) -> Response:
        return await cached(reads.WORKER, runtime_id=runtime_id, worker_id=worker_id)

    @app.get(reads.HOSTS)
    async def list_hosts() -> Response:
        return await cached(reads.HOSTS)

    @app.get(reads.HOST_WORKERS)
    async def list_host_workers(host_id: str) -> Response:
        return await cached(reads.HOST_WORKERS, host_id=host_id)

    @app.get(reads.WORKERS)
    async def list_workers() -> Response:
        return await cached(reads.WORKERS)

    # The workspace-scoped twins (yoi's /api/w/{workspace_id}/...): the security middleware
    # made the path's workspace the acting one, so each answers as its unscoped route.
    def scoped_read(template: str) -> Callable[..., Awaitable[Response]]:
        async def read(workspace_id: str, **params: str) -> Response:
            return await cached(template, **params)

        return read

    for endpoint, template in READ_ENDPOINTS.items():
        app.add_url_rule(
            reads.scoped(template), f"scoped_{endpoint}", scoped_read(template), methods=["GET"]
        )

    @app.get(reads.SOURCES)
    async def list_sources() -> Response:
        # Not cached per revision: ``ready`` moves with the clock, and the list is short.
        q, watch = list_query("sources")
        access = _access()
        snapshot = await current(watch, reads.whole_registry)
        rendered = sources_page(
            snapshot,
            q,
            trio.current_time(),
            access.view,
            access.principal.workspace,
            discovery=state.discoveries(),
        )
        return conditional(reads.SOURCES, rendered, etag_for(rendered.body), snapshot, access)

    async def operate(runtime_id: str, worker_id: str, operation: Operation) -> Response:
        validate_identifier(runtime_id, "runtime_id")
        validate_identifier(worker_id, "worker_id")
        no_query()
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        op_request = decode_request(operation, body)
        snapshot = state.actor.snapshot
        view = _access().view
        views.visible_entry(snapshot, runtime_id, view)
        worker = snapshot.runtime(runtime_id).workers.get(worker_id)
        visible = worker is None or view.worker_visible(worker)
        result = await state.router.dispatch(
            snapshot, runtime_id, worker_id, operation, op_request, visible=visible
        )
        return _json(views.encode(result), state.actor.snapshot)

    @app.post(operation_template("stop"))
    async def stop_worker(runtime_id: str, worker_id: str) -> Response:
        return await operate(runtime_id, worker_id, "stop")

    @app.post(operation_template("cancel"))
    async def cancel_worker(runtime_id: str, worker_id: str) -> Response:
        return await operate(runtime_id, worker_id, "cancel")

    @app.post(operation_template("input"))
    async def input_worker(runtime_id: str, worker_id: str) -> Response:
        return await operate(runtime_id, worker_id, "input")

    def scoped_operation(operation: Operation) -> Callable[..., Awaitable[Response]]:
        async def scoped(workspace_id: str, runtime_id: str, worker_id: str) -> Response:
            return await operate(runtime_id, worker_id, operation)

        return scoped

    for operation in OPERATIONS:
        app.add_url_rule(
            reads.scoped(operation_template(operation)),
            f"scoped_{operation}_worker",
            scoped_operation(operation),
            methods=["POST"],
        )

    async def probe(kind: probes.ProbeKind) -> Response:
        query = probes.parse_probe_query(request.args.items(multi=True))
        refusal = _scope().get(OPERATOR_REFUSAL_KEY)
        if query.verbose and isinstance(refusal, RegistryError):
            raise refusal  # each check's detail is for operators (security middleware)
        result = await probes.evaluate(kind, state.actor, state.lifecycle, query.exclude)
        response = Response(
            result.render(query.verbose),
            status=result.status,
            content_type="text/plain; charset=utf-8",
        )
        response.headers[REVISION_HEADER] = str(state.actor.snapshot.revision)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/livez")
    async def livez() -> Response:
        return await probe("livez")

    @app.get("/readyz")
    async def readyz() -> Response:
        return await probe("readyz")

    @app.get("/healthz")
    async def healthz() -> Response:
        """The liveness probe under its older name, keeping its JSON body."""
        query = probes.parse_probe_query(request.args.items(multi=True))
        result = await probes.evaluate("livez", state.actor, state.lifecycle, query.exclude)
        failed = [c.name for c in result.checks if not c.ok]
        body = {"status": "ok"} if result.ok else {"status": "failed", "failed": failed}
        return _json(views.encode(body), state.actor.snapshot, result.status)

    @app.get("/metrics")
    async def metrics() -> Response:
        no_query()
        body, content_type = state.metrics.render(request.headers.get("Accept"))
        response = Response(body, content_type=content_type)
        response.headers[REVISION_HEADER] = str(state.actor.snapshot.revision)
        response.headers["Cache-Control"] = "no-store"
        return response

    document: list[bytes] = []

    @app.get("/openapi.json")
    async def openapi_document() -> Response:
        """This API's OpenAPI 3.1 document, built once from the routes the app really has."""
        from yoi_registryd.http import openapi  # it describes the middleware's errors too

        no_query()
        if not document:
            document.append(openapi.encode_document(openapi.build_document(app.url_map)))
        return _json(document[0], state.actor.snapshot)

    @app.get("/")
    async def status_page() -> Response:
        no_query()
        snapshot = state.actor.snapshot
        if _scope().get(STATIC_PAGE_KEY):
            # Clients are configured and this request went unauthenticated: the page alone.
            return status_page_response(render_token_page(), snapshot)
        access = _access()
        everything = views.ListQuery(views.MAX_LIMIT)
        view, workspace = access.view, access.principal.workspace
        page = render_status_page(
            snapshot.revision,
            sources_page(snapshot, everything, trio.current_time(), view, workspace).body,
            views.runtimes_page(snapshot, everything, view, workspace).body,
            views.workers_page(snapshot, views.ListQuery(50), view, workspace).body,
        )
        return status_page_response(page, snapshot)

    def status_page_response(page: bytes, snapshot: Snapshot) -> Response:
        response = Response(page, content_type="text/html; charset=utf-8")
        response.headers[REVISION_HEADER] = str(snapshot.revision)
        for name, value in STATUS_PAGE_HEADERS.items():
            response.headers[name] = value
        return response

    @app.errorhandler(RegistryError)
    async def registry_error(error: RegistryError) -> Response:
        if isinstance(error, NotVisible):
            _access().note_denied()
        return error_response(error, state)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return error_response(typed_http_error(error), state)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        request_id = _access().request_id
        log.error("request %s failed", request_id, exc_info=error)
        return error_response(InternalError(request_id), state)

    return app


def typed_http_error(error: HTTPException) -> RegistryError:
    """werkzeug's own refusal (no route, wrong method, body too large or too slow) as a
    typed error."""
    if isinstance(error, NotFound):
        return RouteNotFound()
    if isinstance(error, MethodNotAllowed):
        return MethodNotAllowedError(error.valid_methods or ())
    name = (error.name or "http_error").lower().replace(" ", "_")
    code = "".join(ch for ch in name if ch.isalnum() or ch == "_") or "http_error"
    return HttpRefusal(error.code or 400, code, error.description or "bad request")


def error_response(error: RegistryError, state: ApiState) -> Response:
    """The app's answer with ``error``, rendered by :func:`errors.render_error`."""
    status, headers, body = render_error(
        error,
        state.actor.snapshot.revision,
        conceal_invisible=state.conceal_invisible_workers,
    )
    fields = Headers([(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers])
    return Response(body, status, fields)


__all__ = ["ApiState", "InvalidQuery", "create_app"]
