"""The backend-facing HTTP API: a quart-trio app over the registry's current Snapshot.

Handlers take one snapshot at the start of a request and answer from it alone: no I/O, no
locks, and an encoded body shared by every request at the same revision and view. Errors
are typed (``yoi_registryd.errors``) and rendered in one place; nothing answers with HTML or
a traceback.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, Final

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from yoi_registryd.errors import (
    InternalError,
    InvalidQuery,
    RegistryError,
    RouteNotFound,
)
from yoi_registryd.errors import MethodNotAllowed as MethodNotAllowedError
from yoi_registryd.http import views
from yoi_registryd.ids import validate_identifier
from yoi_registryd.operations import Operation, OperationRouter, decode_request
from yoi_registryd.registry import RegistryActor, Snapshot

log = logging.getLogger(__name__)

JSON: Final = "application/json"
REVISION_HEADER: Final = "X-Registry-Index"
STATE_EXTENSION: Final = "yoi_registryd"


class ApiState:
    """What the handlers share: the actor (for its snapshot), settings and the body cache."""

    def __init__(
        self,
        actor: RegistryActor,
        router: OperationRouter | None = None,
        *,
        conceal_invisible_workers: bool = True,
    ) -> None:
        self.actor = actor
        self.router = router or OperationRouter()
        self.conceal_invisible_workers = conceal_invisible_workers
        self.cache = views.BodyCache()


def _json(body: bytes, snapshot: Snapshot, status: int = 200) -> Response:
    response = Response(body, status=status, content_type=JSON)
    response.headers[REVISION_HEADER] = str(snapshot.revision)
    return response


def create_app(state: ApiState) -> QuartTrio:
    """Build the ASGI app. The daemon serves it with hypercorn in its own nursery."""
    app = QuartTrio("yoi_registryd", static_folder=None)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    # ``/api//runtimes`` must not be answered with an HTML redirect to a merged path (which
    # would also echo the base URL): it matches no route and gets the JSON 404.
    app.url_map.merge_slashes = False
    app.extensions[STATE_EXTENSION] = state

    def cached(key: tuple[object, ...], build: Callable[[Snapshot], bytes]) -> Response:
        snapshot = state.actor.snapshot
        body = state.cache.get(snapshot.revision, key, lambda: build(snapshot))
        return _json(body, snapshot)

    def list_query() -> views.ListQuery:
        return views.parse_list_query(request.args.items(multi=True))

    def no_query() -> None:
        views.reject_query(request.args.items(multi=True))

    @app.get("/api/runtimes")
    async def list_runtimes() -> Response:
        q = list_query()
        return cached(("runtimes", q), lambda s: views.runtimes_page(s, q))

    @app.get("/api/runtimes/<runtime_id>")
    async def get_runtime(runtime_id: str) -> Response:
        validate_identifier(runtime_id, "runtime_id")
        no_query()
        return cached(("runtime", runtime_id), lambda s: views.encode(s.runtime(runtime_id).record))

    @app.get("/api/runtimes/<runtime_id>/workers")
    async def list_runtime_workers(runtime_id: str) -> Response:
        validate_identifier(runtime_id, "runtime_id")
        q = list_query()
        return cached(
            ("runtime_workers", runtime_id, q),
            lambda s: views.runtime_workers_page(s.runtime(runtime_id), q),
        )

    @app.get("/api/runtimes/<runtime_id>/workers/<worker_id>")
    async def get_worker(runtime_id: str, worker_id: str) -> Response:
        validate_identifier(runtime_id, "runtime_id")
        validate_identifier(worker_id, "worker_id")
        no_query()
        return cached(
            ("worker", runtime_id, worker_id),
            lambda s: views.encode(s.worker(runtime_id, worker_id)),
        )

    @app.get("/api/hosts")
    async def list_hosts() -> Response:
        q = list_query()
        return cached(("hosts", q), lambda s: views.hosts_page(s, q))

    @app.get("/api/hosts/<host_id>/workers")
    async def list_host_workers(host_id: str) -> Response:
        validate_identifier(host_id, "host_id")
        q = list_query()

        def build(s: Snapshot) -> bytes:
            entry, host = s.host(host_id)
            return views.host_workers_page(entry, host, q)

        return cached(("host_workers", host_id, q), build)

    @app.get("/api/workers")
    async def list_workers() -> Response:
        q = list_query()
        return cached(("workers", q), lambda s: views.workers_page(s, q))

    async def operate(runtime_id: str, worker_id: str, operation: Operation) -> Response:
        validate_identifier(runtime_id, "runtime_id")
        validate_identifier(worker_id, "worker_id")
        no_query()
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        op_request = decode_request(operation, body)
        snapshot = state.actor.snapshot
        ack = await state.router.dispatch(snapshot, runtime_id, worker_id, operation, op_request)
        return _json(views.encode({"ack": ack}), state.actor.snapshot)

    @app.post("/api/runtimes/<runtime_id>/workers/<worker_id>/stop")
    async def stop_worker(runtime_id: str, worker_id: str) -> Response:
        return await operate(runtime_id, worker_id, "stop")

    @app.post("/api/runtimes/<runtime_id>/workers/<worker_id>/cancel")
    async def cancel_worker(runtime_id: str, worker_id: str) -> Response:
        return await operate(runtime_id, worker_id, "cancel")

    @app.post("/api/runtimes/<runtime_id>/workers/<worker_id>/input")
    async def input_worker(runtime_id: str, worker_id: str) -> Response:
        return await operate(runtime_id, worker_id, "input")

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json(b'{"status":"ok"}', state.actor.snapshot)

    @app.errorhandler(RegistryError)
    async def registry_error(error: RegistryError) -> Response:
        return render_error(error, state)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        if isinstance(error, NotFound):
            return render_error(RouteNotFound(), state)
        if isinstance(error, MethodNotAllowed):
            return render_error(MethodNotAllowedError(), state)
        generic = RegistryError(error.description or "bad request")
        return _render(
            error.code or 400,
            {"error": {"code": _http_code(error), "message": (generic.message)}},
            revision_headers(state),
        )

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        request_id = uuid.uuid4().hex
        log.error("request %s failed", request_id, exc_info=error)
        return render_error(InternalError(request_id), state)

    return app


def _http_code(error: HTTPException) -> str:
    name = (error.name or "http_error").lower().replace(" ", "_")
    return "".join(ch for ch in name if ch.isalnum() or ch == "_") or "http_error"


def revision_headers(state: ApiState | None) -> dict[str, str]:
    """The revision header for a response built outside :func:`_json` (errors)."""
    return {} if state is None else {REVISION_HEADER: str(state.actor.snapshot.revision)}


def render_error(error: RegistryError, state: ApiState | None) -> Response:
    conceal = state.conceal_invisible_workers if state is not None else True
    status, body = error.wire(conceal_invisible=conceal)
    return _render(status, body, {**revision_headers(state), **error.headers})


def _render(status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
    response = Response(views.encode(body), status=status, content_type=JSON)
    for name, value in headers.items():
        response.headers[name] = value
    return response


def error_body(error: RegistryError, app: object = None) -> tuple[int, bytes, dict[str, str]]:
    """Status, encoded body and headers, for middleware that answers before ``app`` does."""
    extensions = getattr(app, "extensions", None)
    state = extensions.get(STATE_EXTENSION) if isinstance(extensions, dict) else None
    status, body = error.wire()
    headers = revision_headers(state if isinstance(state, ApiState) else None)
    return status, views.encode(body), {**headers, **error.headers}


__all__ = ["ApiState", "InvalidQuery", "create_app", "error_body", "render_error"]
