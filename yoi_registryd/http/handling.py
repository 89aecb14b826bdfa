"""The request in hand, as the quart handlers see it, and the answers they all build.

Each handler module (``http/read_routes.py``, ``http/operation_routes.py``,
``http/operator_routes.py``) reads the request through these and answers with
:func:`respond`, so every answer of the app carries the revision it was made from
(``X-Registry-Index``) in the same way, and errors go through ``errors.render_error``.
"""

from __future__ import annotations

from typing import Any, cast

from quart import Response, request
from werkzeug.datastructures import Headers

from yoi_registryd.errors import JSON, REVISION_HEADER, RegistryError, render_error
from yoi_registryd.http.security import unprotected_access
from yoi_registryd.http.state import ApiState
from yoi_registryd.http.views import reject_query
from yoi_registryd.policy import ACCESS_SCOPE_KEY, RequestAccess, access_of


def scope() -> dict[str, Any]:
    """The request's ASGI scope, shared with the middleware around the app."""
    return cast("dict[str, Any]", request.scope)


def access() -> RequestAccess:
    """The request's principal and visibility, as the security middleware admitted it.

    The daemon always serves the app behind that middleware; an app served without it (a
    bare ``create_app``) answers as to an anonymous caller that may see everything.
    """
    found = access_of(request.scope)
    if found is None:
        found = unprotected_access()
        scope()[ACCESS_SCOPE_KEY] = found
    return found


def no_query() -> None:
    """Refuse any query parameter: the route takes none."""
    reject_query(request.args.items(multi=True))


def respond(
    body: bytes | str, revision: int, content_type: str = JSON, status: int = 200
) -> Response:
    """An answer made at ``revision``, which it names in ``X-Registry-Index``."""
    response = Response(body, status=status, content_type=content_type)
    response.headers[REVISION_HEADER] = str(revision)
    return response


def error_response(error: RegistryError, state: ApiState) -> Response:
    """The app's answer with ``error``, rendered by :func:`errors.render_error`."""
    status, headers, body = render_error(
        error,
        state.actor.snapshot.revision,
        conceal_invisible=state.conceal_invisible_workers,
    )
    fields = Headers([(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers])
    return Response(body, status, fields)
