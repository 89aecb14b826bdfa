"""The quart-trio app with every route of the API, module by module.

The daemon's app (``http/app.py``, which adds the error handlers) and the OpenAPI document's
command line (``http/openapi.py``) are both made by :func:`new_app`, each adding
``/openapi.json`` (``openapi.register``) last, so the document printed describes the routes
the daemon serves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from quart_trio import QuartTrio

from yoi_registryd.http import operation_routes, operator_routes, read_routes
from yoi_registryd.http.state import ApiState

Registrar = Callable[[QuartTrio, ApiState], None]
REGISTRARS: Final[tuple[Registrar, ...]] = (
    read_routes.register,
    operation_routes.register,
    operator_routes.register,
)


def new_app(state: ApiState, *more: Registrar) -> QuartTrio:
    """The app with the routes of :data:`REGISTRARS`, then ``more``."""
    app = QuartTrio("yoi_registryd", static_folder=None)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    # ``/api//runtimes`` must not be answered with an HTML redirect to a merged path (which
    # would also echo the base URL): it matches no route and gets the JSON 404.
    app.url_map.merge_slashes = False
    for add_routes in (*REGISTRARS, *more):
        add_routes(app, state)
    return app
