"""The backend-facing HTTP API: a quart-trio app over the registry's current Snapshot.

Handlers take one snapshot at the start of a request and answer from it alone: no I/O, no
locks, and an encoded body shared by every request at the same revision and view. They live
in one module per concern, gathered by ``http/routes.py``; ``/openapi.json`` is
``http/openapi.py``'s. This module adds the error handlers: errors are typed
(``yoi_registryd.errors``) and rendered by ``errors.render_error``; nothing answers with
HTML or a traceback.
"""

from __future__ import annotations

import logging

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from yoi_registryd.errors import (
    HttpRefusal,
    InternalError,
    NotVisible,
    RegistryError,
    RouteNotFound,
)
from yoi_registryd.errors import MethodNotAllowed as MethodNotAllowedError
from yoi_registryd.http import openapi
from yoi_registryd.http.handling import access, error_response, scope
from yoi_registryd.http.routes import new_app
from yoi_registryd.http.state import ApiState
from yoi_registryd.metrics import ROUTE_SCOPE_KEY

log = logging.getLogger(__name__)


def create_app(state: ApiState) -> QuartTrio:
    """Build the ASGI app. The daemon serves it with hypercorn in its own nursery."""
    app = new_app(state, openapi.register)

    @app.before_request
    async def note_route() -> None:
        # The route template (never the raw path) labels this request's metrics.
        rule = request.url_rule
        if rule is not None:
            scope()[ROUTE_SCOPE_KEY] = rule.rule

    @app.errorhandler(RegistryError)
    async def registry_error(error: RegistryError) -> Response:
        if isinstance(error, NotVisible):
            access().note_denied()
        return error_response(error, state)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return error_response(typed_http_error(error), state)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        request_id = access().request_id
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


__all__ = ["ApiState", "create_app"]
