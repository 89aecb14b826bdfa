"""The OpenAPI 3.1 document of the HTTP API, generated from the code's own types.

Bodies are described by the msgspec Structs the handlers really encode and decode
(``msgspec.json.schema_components``), so a field added to a record is documented without
touching this module. What a type cannot say (which route answers with which type, its
parameters, which typed errors it may raise) is declared once per route in :data:`ROUTES`.
The document is built from the app's URL map, so it describes exactly the routes the app
has, and is served at ``/openapi.json`` (:func:`register`); the tests fail when a route has
no entry here, when a typed error class is not described, and when ``docs/openapi.json``
differs from what ``GET /openapi.json`` serves.

Regenerate the committed copy with::

    python -m yoi_registryd.http.openapi > docs/openapi.json
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Annotated, Any, Final, Literal

import msgspec
from quart import Response
from quart_trio import QuartTrio
from werkzeug.routing import Map

from yoi_registryd import __version__, errors
from yoi_registryd.auth import WORKSPACE_HEADER
from yoi_registryd.config import DURATION_NUMBER, DURATION_PATTERN
from yoi_registryd.errors import JSON
from yoi_registryd.http import reads, views
from yoi_registryd.http.cursors import MAX_CURSOR_CHARS
from yoi_registryd.http.handling import no_query, respond
from yoi_registryd.http.operation_routes import OPERATIONS, operation_template
from yoi_registryd.http.routes import new_app
from yoi_registryd.http.source_status import SourceList
from yoi_registryd.http.state import ApiState
from yoi_registryd.http.watch import MAX_INDEX, MAX_WAIT
from yoi_registryd.ids import ID_PATTERN, MAX_ID_BYTES
from yoi_registryd.model import RuntimeRecord, WorkerDetail
from yoi_registryd.operations import REQUEST_TYPES, RESULT_TYPES, Operation
from yoi_registryd.registry import RegistryActor

log = logging.getLogger(__name__)

OPENAPI_VERSION: Final = "3.1.0"
REF: Final = "#/components/schemas/{name}"

# -- the wire types that only exist on the wire --------------------------------------------


class ErrorDiagnostic(msgspec.Struct, forbid_unknown_fields=True):
    """The one diagnostic of an error: its typed code, for yoi's web client to show."""

    code: str
    severity: Literal["error"]
    message: str


class ErrorResponse(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every typed error (``RegistryError.wire``): yoi's error shape, then our typed code.

    Details name only ids the caller sent, never a path, URL or token.
    """

    error: str
    """The HTTP reason phrase of the status (``Not Found``), as yoi answers."""
    message: str
    diagnostics: list[ErrorDiagnostic]
    code: str
    """The typed error code (see ErrorCode)."""
    runtime_id: str | msgspec.UnsetType = msgspec.UNSET
    worker_id: str | msgspec.UnsetType = msgspec.UNSET
    host_id: str | msgspec.UnsetType = msgspec.UNSET
    parameter: str | msgspec.UnsetType = msgspec.UNSET
    """The query parameter, path parameter or header that was refused."""
    request_id: str | msgspec.UnsetType = msgspec.UNSET
    """For ``internal_error``: the id the operator log names the failure by."""


class HealthAnswer(msgspec.Struct, omit_defaults=True):
    """``/healthz``: the liveness probe under its older name."""

    status: Literal["ok", "failed"]
    failed: list[str] = []
    """Names of the checks that failed."""


Identifier = Annotated[
    str,
    msgspec.Meta(
        pattern=f"^{ID_PATTERN.pattern}$",
        min_length=1,
        max_length=MAX_ID_BYTES,
        description="1 to 120 bytes of [A-Za-z0-9_:-]",
    ),
]
Limit = Annotated[int, msgspec.Meta(ge=1, le=views.MAX_LIMIT)]
Cursor = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CURSOR_CHARS)]
Index = Annotated[int, msgspec.Meta(ge=0, le=MAX_INDEX)]
Wait = Annotated[
    str,
    msgspec.Meta(
        # A bare number of seconds, or a number with a unit (``http.watch``).
        pattern=f"^(?:{DURATION_NUMBER}|{DURATION_PATTERN})$",
        max_length=32,
    ),
]
RevisionValue = Annotated[str, msgspec.Meta(pattern="^[0-9]+$")]


# -- what each route says about itself -----------------------------------------------------


@dataclass(frozen=True)
class TypedError:
    """One typed error a route may answer with."""

    code: str
    status: int
    description: str

    @classmethod
    def of(cls, error: type[errors.RegistryError]) -> TypedError:
        doc = (error.__doc__ or "").strip().split("\n\n")[0]
        return cls(error.code, error.status, " ".join(doc.split()) or error.code)


def typed(*classes: type[errors.RegistryError]) -> tuple[TypedError, ...]:
    return tuple(TypedError.of(c) for c in classes)


# Errors the HTTP layer (werkzeug) raises itself, rendered by ``app.http_error``.
BODY_TOO_LARGE: Final = TypedError(
    "request_entity_too_large", 413, "The request body is larger than server.max_body_bytes."
)
BODY_TOO_SLOW: Final = TypedError(
    "request_timeout", 408, "The request body did not arrive within server.body_timeout."
)


@dataclass(frozen=True)
class Param:
    name: str
    location: Literal["query", "header", "path"]
    schema: Any
    """A type msgspec can describe."""
    description: str
    required: bool = False
    array: bool = False
    """Repeatable: ``?exclude=a&exclude=b``."""
    allow_empty: bool = False


@dataclass(frozen=True)
class Json:
    """A JSON body of this msgspec type."""

    type: Any
    description: str


@dataclass(frozen=True)
class Text:
    """A non-JSON body (probes, metrics, the status page)."""

    media_types: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Link:
    """A follow-up request whose parameters come from an answer (an OpenAPI link)."""

    operation: str
    """The target's operationId: the endpoint name of its handler in the app."""
    parameters: Mapping[str, str]
    """Target parameter -> runtime expression (``$response.body#/items/0/runtime_id``)."""
    description: str


FIRST_ITEM: Final = "$response.body#/items/0/"
BODY: Final = "$response.body#/"


def next_page(endpoint: str) -> dict[str, Link]:
    cursor = {"cursor": "$response.body#/next_cursor"}
    return {"next_page": Link(endpoint, cursor, "The next page of the same list.")}


def runtime_links(at: str = FIRST_ITEM) -> dict[str, Link]:
    runtime_id = {"runtime_id": f"{at}runtime_id"}
    return {
        "runtime": Link("get_runtime", runtime_id, "The runtime."),
        "runtime_workers": Link("list_runtime_workers", runtime_id, "The runtime's workers."),
    }


def host_workers_link(host_id: str, description: str) -> dict[str, Link]:
    """The workers on the host whose id is at ``host_id`` (a runtime expression)."""
    return {"host_workers": Link("list_host_workers", {"host_id": host_id}, description)}


def but(links: dict[str, Link], name: str) -> dict[str, Link]:
    """``links`` without the one to the answer itself (a detail's link to its own route)."""
    return {k: v for k, v in links.items() if k != name}


def worker_links(at: str = FIRST_ITEM) -> dict[str, Link]:
    ids = {"runtime_id": f"{at}runtime_id", "worker_id": f"{at}worker_id"}
    return {
        "worker": Link("get_worker", ids, "The worker."),
        "stop": Link("stop_worker", ids, "Stop the worker."),
        "cancel": Link("cancel_worker", ids, "Cancel the worker."),
        "input": Link("input_worker", ids, "Send the worker input."),
    }


@dataclass(frozen=True)
class Route:
    summary: str
    ok: Json | Text
    query: tuple[Param, ...] = ()
    errors: tuple[TypedError, ...] = ()
    body: Any = None
    """The msgspec type of the request body, if any."""
    body_required: bool = False
    guarded: bool = True
    """Token, policy and audit apply (every route but the probes, ``/metrics`` and ``/``)."""
    operator: bool = False
    """Needs an operator's token once clients are configured, without policy or audit."""
    conditional: bool = False
    """Carries an ``ETag``; ``If-None-Match`` may be answered with 304."""
    also: Mapping[int, str] = field(default_factory=dict)
    """Other statuses answered with the same kind of body as 200 (a failing probe: 503)."""
    links: Mapping[str, Link] = field(default_factory=dict)
    """Follow-up requests built from the answer (OpenAPI links)."""
    description: str = ""
    workspace_in_path: bool = False
    """A workspace-scoped route: the path names the acting workspace, so X-Yoi-Workspace is
    not described (it may still be sent, and must then name the same workspace)."""


LIMIT = Param("limit", "query", Limit, f"Page size, 1 to {views.MAX_LIMIT} (default 200).")
CURSOR = Param(
    "cursor", "query", Cursor, "The previous page's next_cursor; opaque, valid for its list."
)
INDEX = Param(
    "index",
    "query",
    Index,
    "Blocking query: the X-Registry-Index the client already holds. The answer waits until "
    "the view changes after it (or wait runs out).",
)
WAIT = Param(
    "wait",
    "query",
    Wait,
    f"Blocking query: longest wait, such as '30s' or '500ms' (capped at {MAX_WAIT:g}s, plus "
    "up to 1/16 jitter; needs index).",
)
LIST_QUERY: Final = (LIMIT, CURSOR, INDEX, WAIT)
WATCH_QUERY: Final = (INDEX, WAIT)
PROBE_QUERY: Final = (
    Param(
        "verbose",
        "query",
        str,
        "List every check; any value but '0' or 'false'.",
        allow_empty=True,
    ),
    Param("exclude", "query", str, "Skip the check of this name (repeatable).", array=True),
)

ANY_ROUTE: Final = typed(
    errors.InvalidQuery, errors.InternalError, errors.TooManyConnections, errors.RequestHeadTooLarge
)
"""On every route: a query string that is not UTF-8 or a head over ``server.max_header_bytes``
is refused before routing, and a connection over ``server.max_connections`` before any
request is read."""
OPERATOR: Final = typed(errors.Unauthenticated, errors.Forbidden)
"""Once clients are configured: no or a wrong token, or one of a client that is no operator
(not ``workspaces = ["*"]``, not ``operator = true``)."""
GUARDED: Final = typed(
    errors.Unauthenticated, errors.Forbidden, errors.InvalidIdentifier, errors.AuditUnavailable
)
"""Authentication, policy and audit: no or a wrong token, a workspace the client may not act
for or a policy that says no, an ``X-Yoi-Workspace`` that is not an id, an audit trail that
cannot keep the request's record."""
PATH_IDS: Final = typed(errors.InvalidIdentifier, errors.RouteNotFound)
"""A path id that is not an id (also an encoded ``/``, ``\\`` or NUL), or an empty one."""
RUNTIME: Final = (*PATH_IDS, *typed(errors.UnknownRuntime, errors.RuntimeNotVisible))
WORKER: Final = (*RUNTIME, *typed(errors.UnknownWorker, errors.WorkerNotVisible))
HOST: Final = (*PATH_IDS, *typed(errors.UnknownHost, errors.HostNotVisible))
WATCH: Final = typed(errors.TooManyWatches)
UNROUTED: Final = typed(errors.MethodNotAllowed)
"""Answered to a method a path does not take (with ``Allow``): no operation to attach it to."""
OPERATION: Final = (
    *WORKER,
    *typed(
        errors.InvalidRequest,
        errors.RuntimeUnavailable,
        errors.RuntimeTimeout,
        errors.RuntimeAuthFailed,
        errors.RuntimeBadResponse,
    ),
    BODY_TOO_LARGE,
    BODY_TOO_SLOW,
)

PROMETHEUS_TEXT: Final = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TEXT: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"
PLAIN_TEXT: Final = "text/plain; charset=utf-8"


def _operation(operation: Operation) -> Route:
    """An operation's route: its body and answer types from ``operations``; only input
    needs a body (``operations.decode_request``)."""
    verb = "send input to" if operation == "input" else operation
    return Route(
        f"{verb.capitalize()} a worker",
        Json(
            RESULT_TYPES[operation],
            "The outcome: `state` is `accepted`, or `unsupported` / `rejected` with the "
            "typed reason as a diagnostic (`operation_unsupported`, `worker_not_running`, "
            "`runtime_stopped`, `operation_rejected`, `invalid_request`).",
        ),
        errors=OPERATION,
        body=REQUEST_TYPES[operation],
        body_required=operation == "input",
        description=(
            "Routed to the runtime that owns the worker (runtime_id + worker_id). A refusal "
            "of the operation itself, by the registry or the runtime, answers 200 as yoi "
            "does; a runtime that cannot be reached or fails is a typed 502, 503 or 504."
        ),
    )


def _read(
    summary: str,
    ok: Json,
    query: tuple[Param, ...],
    errors: tuple[TypedError, ...],
    links: Mapping[str, Link],
) -> Route:
    """A read route: blocking queries (so ``too_many_watches``), an ETag and 304s."""
    return Route(summary, ok, query, (*errors, *WATCH), conditional=True, links=links)


def _list(
    summary: str,
    ok: Json,
    endpoint: str,
    links: Mapping[str, Link],
    errors: tuple[TypedError, ...] = (),
) -> Route:
    """A paged list route, ``endpoint`` its operationId: its next page comes first among
    its links."""
    return _read(summary, ok, LIST_QUERY, errors, {**next_page(endpoint), **links})


ROUTES: Final[dict[tuple[str, str], Route]] = {
    ("GET", "/api/runtimes"): _list(
        "List runtimes",
        Json(views.RuntimeList, "Runtimes the caller may see, by runtime_id."),
        "list_runtimes",
        runtime_links(),
    ),
    ("GET", "/api/runtimes/<runtime_id>"): _read(
        "Get a runtime",
        Json(RuntimeRecord, "The runtime (RuntimeSummary) and its status bookkeeping."),
        WATCH_QUERY,
        RUNTIME,
        {
            **but(runtime_links(BODY), "runtime"),
            **host_workers_link(f"{BODY}host_ids/0", "The workers on the runtime's first host."),
        },
    ),
    ("GET", "/api/runtimes/<runtime_id>/workers"): _list(
        "List a runtime's workers",
        Json(views.WorkerList, "Workers of the runtime, by worker_id."),
        "list_runtime_workers",
        worker_links(),
        RUNTIME,
    ),
    ("GET", "/api/runtimes/<runtime_id>/workers/<worker_id>"): _read(
        "Get a worker",
        Json(
            WorkerDetail,
            "The worker (WorkerSummary plus updated_at), keyed by runtime_id + worker_id.",
        ),
        WATCH_QUERY,
        WORKER,
        {
            **but(worker_links(BODY), "worker"),
            **host_workers_link(f"{BODY}host_id", "The workers on the worker's host."),
        },
    ),
    **{("POST", operation_template(op)): _operation(op) for op in OPERATIONS},
    ("GET", "/api/hosts"): _list(
        "List hosts",
        Json(views.HostList, "Hosts the caller may see, by (runtime_id, host_id)."),
        "list_hosts",
        host_workers_link(f"{FIRST_ITEM}host_id", "The host's workers."),
    ),
    ("GET", "/api/hosts/<host_id>/workers"): _list(
        "List a host's workers",
        Json(views.WorkerList, "Workers on the host, by worker_id."),
        "list_host_workers",
        worker_links(),
        HOST,
    ),
    ("GET", "/api/workers"): _list(
        "List every worker",
        Json(views.WorkerList, "Every worker the caller may see, by (runtime_id, worker_id)."),
        "list_workers",
        worker_links(),
    ),
    ("GET", "/api/sources"): _list(
        "List sources and their health",
        Json(SourceList, "One item per configured source, by runtime_id."),
        "list_sources",
        runtime_links(),
    ),
    ("GET", "/livez"): Route(
        "Liveness probe",
        Text((PLAIN_TEXT,), "'ok', or with ?verbose one line per check."),
        PROBE_QUERY,
        guarded=False,
        also={503: "A check failed; the body says which."},
    ),
    ("GET", "/readyz"): Route(
        "Readiness probe",
        Text((PLAIN_TEXT,), "'ok', or with ?verbose one line per check."),
        PROBE_QUERY,
        OPERATOR,  # ?verbose names every source: for operators once clients are configured
        guarded=False,
        also={503: "Not ready (starting, shutting down, or a source in its start-up grace)."},
    ),
    ("GET", "/healthz"): Route(
        "Liveness probe (JSON, older name)",
        Json(HealthAnswer, "The liveness checks passed."),
        PROBE_QUERY,
        guarded=False,
        also={503: "A liveness check failed."},
    ),
    ("GET", "/metrics"): Route(
        "Prometheus metrics",
        Text((PROMETHEUS_TEXT, OPENMETRICS_TEXT), "A scrape, in the format Accept asks for."),
        guarded=False,
        operator=True,
    ),
    ("GET", "/"): Route(
        "Status page",
        Text(
            ("text/html; charset=utf-8",),
            "A self-contained HTML page (strict CSP). With clients configured it loads without "
            "a token and holds no data (its script asks /api/sources, with one).",
        ),
        errors=typed(errors.Forbidden),  # open mode: callers off loopback
        guarded=False,
    ),
    ("GET", "/openapi.json"): Route(
        "This document",
        Json(dict[str, Any], "The OpenAPI 3.1 document of this API."),
    ),
}
"""Every route of the app, keyed by method and werkzeug rule. A new route needs one entry."""

SCOPED_PATH: Final = "$request.path.workspace_id"


def _scoped(route: Route) -> Route:
    """A route's workspace-scoped twin: the same answers, its follow-ups scoped too."""
    links = {
        name: Link(
            f"scoped_{link.operation}",
            {**link.parameters, "workspace_id": SCOPED_PATH},
            link.description,
        )
        for name, link in route.links.items()
    }
    description = (
        "The workspace-scoped twin of the route without /w/{workspace_id} (yoi's scoped "
        "routes): the path names the acting workspace, exactly as X-Yoi-Workspace would; "
        "a request whose header names another gets 400 workspace_mismatch."
    )
    return replace(
        route,
        summary=f"{route.summary} (workspace-scoped)",
        errors=(*route.errors, *typed(errors.WorkspaceMismatch)),
        links=links,
        description=f"{route.description} {description}".strip(),
        workspace_in_path=True,
    )


_TWINNED: Final = frozenset(reads.TEMPLATES) | {operation_template(op) for op in OPERATIONS}
ROUTES.update(
    {
        (method, reads.scoped(rule)): _scoped(route)
        for (method, rule), route in list(ROUTES.items())
        if rule in _TWINNED
    }
)

# -- building the document -----------------------------------------------------------------

_RULE_ARGUMENT: Final = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")
REQUEST_ID_HEADER: Final = "X-Request-Id"


def openapi_path(rule: str) -> str:
    """``/api/runtimes/<runtime_id>`` -> ``/api/runtimes/{runtime_id}``."""
    return _RULE_ARGUMENT.sub(r"{\1}", rule)


def documented_rules(url_map: Map) -> list[tuple[str, str, str]]:
    """``(method, rule, endpoint)`` of every route the app answers (HEAD, OPTIONS aside)."""
    found = []
    for rule in url_map.iter_rules():
        for method in sorted(rule.methods or ()):
            if method not in ("HEAD", "OPTIONS"):
                found.append((method, rule.rule, rule.endpoint))
    return sorted(found, key=lambda m: (m[1], m[0]))


class _Schemas:
    """Collects the msgspec types to describe; renders them as components at the end."""

    def __init__(self) -> None:
        self._types: list[Any] = []
        self._refs: list[dict[str, Any]] = []

    def ref(self, type_: Any) -> dict[str, Any]:
        """A placeholder filled in by :meth:`components` (one schema pass for all types)."""
        placeholder: dict[str, Any] = {}
        self._types.append(type_)
        self._refs.append(placeholder)
        return placeholder

    def components(self) -> dict[str, Any]:
        schemas, components = msgspec.json.schema_components(self._types, ref_template=REF)
        for placeholder, schema in zip(self._refs, schemas, strict=True):
            placeholder.update(schema)
        for component in components.values():
            # A Struct's docstring becomes its description; msgspec 0.23 began to dedent it.
            # Dedented here too, so the document is the same whichever msgspec is installed.
            if "description" in component:
                component["description"] = inspect.cleandoc(component["description"])
        return dict(sorted(components.items()))


def _parameter(param: Param, schemas: _Schemas) -> dict[str, Any]:
    item: Any = param.schema
    schema = schemas.ref(list.__class_getitem__(item) if param.array else item)
    out: dict[str, Any] = {
        "name": param.name,
        "in": param.location,
        "required": param.required,
        "description": param.description,
        "schema": schema,
    }
    if param.array:
        out["style"] = "form"
        out["explode"] = True
    if param.allow_empty:
        out["allowEmptyValue"] = True
    return out


HEADERS: Final[dict[str, dict[str, Any]]] = {
    "RequestId": {
        "description": "The request's id: the caller's own if sane, else a fresh one.",
        "required": True,
        "schema": {"type": "string"},
    },
    "RegistryIndex": {
        "description": "The registry revision the answer was made from.",
        "required": True,
        "schema": msgspec.json.schema(RevisionValue),
    },
    "RegistryIndexIfAny": {
        "description": "The registry revision; absent only on too_many_connections, which is "
        "sent before any request is read.",
        "required": False,
        "schema": msgspec.json.schema(RevisionValue),
    },
    "ETag": {
        "description": "Strong validator of the body; send it back in If-None-Match.",
        "required": True,
        "schema": {"type": "string"},
    },
    "RetryAfter": {
        "description": "Seconds to wait before trying again.",
        "required": False,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "Allow": {
        "description": "The methods the path takes.",
        "required": True,
        "schema": {"type": "string"},
    },
    "WWWAuthenticate": {
        "description": "The bearer challenge.",
        "required": True,
        "schema": {"type": "string"},
    },
}
"""Response headers, referenced from the responses as ``#/components/headers/<name>``."""


def _header_refs(**names: str) -> dict[str, Any]:
    return {header: {"$ref": f"#/components/headers/{name}"} for header, name in names.items()}


def _headers(route: Route, ok: bool, index: str = "RegistryIndex") -> dict[str, Any]:
    """A guarded route's response headers; ``index``: the X-Registry-Index header's entry."""
    if not route.guarded:
        return {}
    headers = _header_refs(**{REQUEST_ID_HEADER: "RequestId", errors.REVISION_HEADER: index})
    if ok and route.conditional:
        headers.update(_header_refs(ETag="ETag"))
    return headers


def _error_schema(codes: Iterable[str]) -> dict[str, Any]:
    """The error envelope, with ``code`` narrowed to ``codes``."""
    return {
        "allOf": [{"$ref": REF.format(name="ErrorResponse")}],
        "properties": {"code": {"enum": sorted(codes)}},
    }


def _error_responses(found: Iterable[TypedError], route: Route) -> dict[str, Any]:
    by_status: dict[int, set[str]] = {}
    for error in found:
        by_status.setdefault(error.status, set()).add(error.code)
    responses: dict[str, Any] = {}
    for status, codes in sorted(by_status.items()):
        schema = _error_schema(codes)
        # Every error answer carries the revision but the connection cap's (errors.render_error).
        connection = errors.TooManyConnections.code in codes
        headers = _headers(
            route, ok=False, index="RegistryIndexIfAny" if connection else "RegistryIndex"
        )
        if status in (429, 503):
            headers.update(_header_refs(**{"Retry-After": "RetryAfter"}))
        if status == 401:
            headers.update(_header_refs(**{"WWW-Authenticate": "WWWAuthenticate"}))
        response: dict[str, Any] = {
            "description": "One of " + ", ".join(f"`{c}`" for c in sorted(codes)) + ".",
            "content": {JSON: {"schema": schema}},
        }
        if headers:
            response["headers"] = headers
        responses[str(status)] = response
    return responses


def _content(ok: Json | Text, schemas: _Schemas) -> dict[str, Any]:
    if isinstance(ok, Json):
        return {JSON: {"schema": schemas.ref(ok.type)}}
    return {media: {"schema": {"type": "string"}} for media in ok.media_types}


PATH_PARAMS: Final = {
    "runtime_id": "The runtime id.",
    "worker_id": "The worker id.",
    "host_id": "The host id.",
    "workspace_id": "The acting workspace, as X-Yoi-Workspace names it (they must agree).",
}


def _operation_object(
    method: str, rule: str, endpoint: str, route: Route, schemas: _Schemas
) -> tuple[dict[str, Any], tuple[TypedError, ...]]:
    """The operation object of one route, and the typed errors it documents."""
    path_params = tuple(
        Param(name, "path", Identifier, PATH_PARAMS.get(name, ""), required=True)
        for name in _RULE_ARGUMENT.findall(rule)
    )
    headers: list[Param] = []
    if route.guarded and not route.workspace_in_path:
        headers.append(
            Param(
                WORKSPACE_HEADER,
                "header",
                Identifier,
                "The workspace the caller acts for (see the clients' configuration).",
            )
        )
    if route.conditional:
        headers.append(
            Param("If-None-Match", "header", str, "An ETag the client holds: 304 if current.")
        )
    operation: dict[str, Any] = {"operationId": endpoint, "summary": route.summary}
    if route.description:
        operation["description"] = route.description
    parameters = [_parameter(p, schemas) for p in (*path_params, *route.query, *headers)]
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": route.body_required,
            "content": {JSON: {"schema": schemas.ref(route.body)}},
        }
    ok_response: dict[str, Any] = {
        "description": route.ok.description,
        "headers": _headers(route, ok=True),
        "content": _content(route.ok, schemas),
    }
    if route.links:
        ok_response["links"] = {
            name: {
                "operationId": link.operation,
                "parameters": dict(link.parameters),
                "description": link.description,
            }
            for name, link in route.links.items()
        }
    responses: dict[str, Any] = {"200": ok_response}
    if route.conditional:
        responses["304"] = {
            "description": "Not modified: the If-None-Match tag is the current one.",
            "headers": _headers(route, ok=True),
        }
    for status, text in route.also.items():
        responses[str(status)] = {**ok_response, "description": text}
        responses[str(status)].pop("links", None)
    found = (
        *route.errors,
        *ANY_ROUTE,
        *(GUARDED if route.guarded else ()),
        *(OPERATOR if route.operator else ()),
    )
    responses.update(_error_responses(found, route))
    operation["responses"] = dict(sorted(responses.items()))
    if not (route.guarded or route.operator):
        operation["security"] = []
    return operation, found


def build_document(url_map: Map) -> dict[str, Any]:
    """The document describing every route of ``url_map`` that :data:`ROUTES` knows.

    A route missing from :data:`ROUTES` is left out and logged (and the tests fail on it).
    """
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    codes: dict[str, TypedError] = {}
    for method, rule, endpoint in documented_rules(url_map):
        route = ROUTES.get((method, rule))
        if route is None:
            log.warning("route %s %s is not described in the OpenAPI document", method, rule)
            continue
        operation, found = _operation_object(method, rule, endpoint, route, schemas)
        paths.setdefault(openapi_path(rule), {})[method.lower()] = operation
        codes.update((e.code, e) for e in found)
    codes.update((e.code, e) for e in UNROUTED)
    schemas.ref(ErrorResponse)
    components = schemas.components()
    unrouted = {
        "HeadersTooLarge": {
            "description": "431 with no body, and the connection is closed: a request head "
            "still incomplete past server.max_header_bytes, refused by the HTTP parser before "
            "any route is known. Other malformed requests get 400 the same way. A complete "
            "head over the limit gets the typed request_head_too_large.",
        },
        "MethodNotAllowed": {
            "description": "A method the path does not take; Allow names those it does.",
            "headers": _header_refs(Allow="Allow"),
            "content": {
                JSON: {"schema": _error_schema({e.code for e in UNROUTED if e.status == 405})}
            },
        },
    }
    components["ErrorCode"] = {
        "description": "Every typed error code, with its HTTP status.\n\n"
        + "\n".join(
            f"- `{e.code}` ({e.status}): {e.description}" for _, e in sorted(codes.items())
        ),
        "enum": sorted(codes),
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "yoi-registryd",
            "version": __version__,
            "description": (
                "The Runtime Registry daemon's HTTP API: a safe projection of the runtimes, "
                "hosts and workers of a yoi workspace, and worker operations routed to the "
                "runtime that owns each worker. Every error is a JSON body in yoi's error shape "
                'with the typed code beside it: `{"error": <reason phrase>, "message", '
                '"diagnostics", "code", ...}`; see ErrorCode.'
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": unrouted,
            "headers": HEADERS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A client's token ([[clients]]). A daemon with no clients "
                    "configured serves callers on loopback and unix sockets without one.",
                }
            },
        },
        "security": [{"bearer": []}],
    }


def encode_document(document: Mapping[str, Any]) -> bytes:
    """The document as served and as committed: indented, one trailing newline."""
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def register(app: QuartTrio, state: ApiState) -> None:
    """``GET /openapi.json``, after every other route (``http/app.py``)."""
    document = partial(serve_document, state, app, [])
    app.add_url_rule("/openapi.json", "openapi_document", document, methods=["GET"])


async def serve_document(state: ApiState, app: QuartTrio, built: list[bytes]) -> Response:
    """This API's OpenAPI 3.1 document, built once (into ``built``) from the routes the app
    really has."""
    no_query()
    if not built:
        built.append(encode_document(build_document(app.url_map)))
    return respond(built[0], state.actor.snapshot.revision)


def main() -> None:
    """Print the document of the routes the daemon serves (no sources, no I/O)."""
    app = new_app(ApiState(RegistryActor(1)), register)
    sys.stdout.buffer.write(encode_document(build_document(app.url_map)))


if __name__ == "__main__":
    main()
