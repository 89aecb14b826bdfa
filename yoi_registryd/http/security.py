"""The security middleware: request id -> authentication -> policy -> audit, around the app.

One ASGI middleware, in that order, so that no handler has to remember any of it:

1. **Request id.** A sane incoming ``X-Request-Id`` (1 to 128 of ``[A-Za-z0-9._:-]``) is
   kept, anything else is replaced by a fresh one; it is echoed on every response and set
   in :data:`request_id_var` for log lines.
2. **Authentication** (``yoi_registryd.auth``): who is asking, for which workspace.
3. **Policy** (``yoi_registryd.policy``): may the request run; the principal's
   :class:`~yoi_registryd.policy.Visibility` is left in the scope (:class:`RequestAccess`)
   for the app, which filters lists and lookups through it.
4. **Audit** (``yoi_registryd.audit``): one record per request, queued before the response
   starts (so a response a client received always has its record, and a full queue slows
   requests down instead of losing records). Its latency is the time to the response's
   start.

Probe routes (``/healthz``, ``/livez``, ``/readyz``) need no token and are not audited: they
are polled constantly and reveal nothing about workers. What concerns every workspace at once
(``/metrics``, ``/readyz?verbose``, ``/api/sources``) needs, once clients are configured, the
token of an operator (``workspaces = ["*"]`` or ``operator = true``); the status page at
``/`` then loads without a token but carries no data (its script asks the API, with one).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
import trio
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, RoutingException

from yoi_registryd.audit import AuditRecord, AuditTrail
from yoi_registryd.auth import PATH_WORKSPACE, Authenticator, load_clients
from yoi_registryd.config import Config
from yoi_registryd.errors import (
    AuditUnavailable,
    Forbidden,
    InternalError,
    RegistryError,
    send_error,
)
from yoi_registryd.ids import is_valid_identifier
from yoi_registryd.metrics import HELD_SCOPE_KEY, ROUTE_SCOPE_KEY, UNMATCHED_ROUTE, Metrics
from yoi_registryd.policy import (
    ACCESS_SCOPE_KEY,
    ANONYMOUS,
    SEES_ALL,
    Decision,
    Policy,
    Principal,
    RequestAccess,
    RequestFacts,
    load_policy,
)

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]

REQUEST_ID_HEADER: Final = "X-Request-Id"
FILTERED_HEADER: Final = "X-Results-Filtered-By-Policy"
"""Set to ``true`` on a list response from which the policy hid something."""
OPEN_PATHS: Final = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})
"""Neither authenticated nor audited (``/metrics`` and ``/readyz?verbose`` aside: below)."""
OPERATOR_PROBES: Final = frozenset({"/metrics", "/readyz"})
"""Open paths that are, or have a form that is, for operators only once clients exist."""
OPERATOR_ROUTES: Final = frozenset({"/api/sources"})
"""Guarded routes for operators only: each source's health, across workspaces."""
OPERATOR_REFUSAL_KEY: Final = "yoi_registryd.operator_refusal"
"""Scope key: why this caller is not an operator (a ``RegistryError``), or None if it is.
Set on ``/readyz``, whose handler refuses ``verbose`` by it: the app parses the query."""
STATUS_PAGE: Final = "/"
STATIC_PAGE_KEY: Final = "yoi_registryd.static_page"
"""Scope key: serve the status page without data (clients are configured; the page's
script asks the API for it, with a token)."""
LATE_AUDIT_DEADLINE_S: Final = 10.0
"""How long a cancelled request may still wait to queue its audit record."""

_REQUEST_ID_RE: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_REQUEST_ID_NAME: Final = REQUEST_ID_HEADER.lower().encode("ascii")
_METHOD_RE: Final = re.compile(r"[A-Z]{1,16}")
_TARGETS: Final = ("runtime_id", "worker_id", "host_id")

request_id_var: ContextVar[str | None] = ContextVar("yoi_registryd_request_id", default=None)
"""The current request's id, for log lines."""


def unprotected_access() -> RequestAccess:
    """For an app served without this middleware (never by the daemon): sees everything."""
    return RequestAccess(request_id_var.get() or new_request_id(), ANONYMOUS, SEES_ALL)


_REQUEST_ID_PREFIX: Final = secrets.token_hex(8)
_request_counter = itertools.count(1)


def new_request_id() -> str:
    """32 hex digits, unique: a random prefix per process and a counter (a uuid4 per
    request cost a visible share of a lookup's CPU; ids need to be unique, not secret)."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_counter):016x}"


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's ``X-Request-Id`` if there is exactly one and it is sane, else a new one."""
    values = [value for name, value in headers if name.lower() == _REQUEST_ID_NAME]
    if len(values) == 1 and _REQUEST_ID_RE.fullmatch(values[0]):
        return values[0].decode("ascii")
    return new_request_id()


class RouteTable:
    """Matches a request to a route template and its path parameters, before the app runs,
    so that policy and audit speak of ``/api/runtimes/<runtime_id>`` and never a raw path."""

    def __init__(self, url_map: Map) -> None:
        self._map = url_map

    def match(self, method: str, path: str) -> tuple[str | None, dict[str, str]]:
        try:
            rule, params = self._map.bind("localhost").match(path, method, return_rule=True)
        except (HTTPException, RoutingException):
            return None, {}
        return rule.rule, {k: v for k, v in params.items() if isinstance(v, str)}


@dataclass(frozen=True)
class AccessControl:
    """Authentication and policy, built together from the config; swapped whole on reload."""

    authenticator: Authenticator
    policy: Policy

    @classmethod
    def from_config(cls, config: Config) -> AccessControl:
        """Reads token files and imports a custom policy; ``ConfigError`` when it cannot."""
        return cls(Authenticator(load_clients(config.clients)), load_policy(config))


@dataclass
class _RequestAuditRecord:
    """One request as the audit will record it: the record as far as the request's
    arrival tells it, and what the request learns on its way (who, which workspace, the
    decision and the status)."""

    started: float
    arrival: AuditRecord
    targets: dict[str, str]
    """The ids the path names, by their record field (``runtime_id``, ...)."""
    client: str | None = None
    workspace: str | None = None
    path_workspace: str | None = None
    """The workspace a workspace-scoped route's path names (``/api/w/{workspace_id}``)."""
    decision: Decision = "allowed"
    access: RequestAccess | None = None
    status: int | None = None
    recorded: bool = field(default=False)
    refused: bool = field(default=False)
    """Answered 503 ``audit_unavailable`` in place of the app's response."""

    def record(self) -> AuditRecord:
        return msgspec.structs.replace(
            self.arrival,
            client=self.client,
            workspace=self.workspace,
            decision=self.access.decision if self.access is not None else self.decision,
            status=self.status,
            latency_ms=round((trio.current_time() - self.started) * 1000, 3),
        )


async def _record(audit: AuditTrail, exchange: _RequestAuditRecord) -> None:
    """Queue the exchange's record; with ``durability = "before_response"``, wait until it
    is on disk (:class:`AuditUnavailable` when it cannot be)."""
    ticket = await audit.emit(exchange.record())
    exchange.recorded = True
    await audit.until_durable(ticket)  # audit.durability = "before_response"


class _Reply:
    """A request's one ``send`` wrapper, for everything the middleware does to a response:
    the status for the metrics, the echoed request id and, for an audited request, its
    record queued before the response starts (with a Content-Length, a client holds the
    whole response before the final, empty, body message). One object and one frame per
    message, where a wrapper per concern cost a frame and a copy of the message each."""

    __slots__ = ("audit", "exchange", "header", "revision", "send", "status")

    def __init__(
        self, send: Send, request_id: str, audit: AuditTrail, revision: Callable[[], int]
    ) -> None:
        self.send = send
        self.header = (_REQUEST_ID_NAME, request_id.encode("ascii"))
        self.audit = audit
        self.revision = revision
        self.exchange: _RequestAuditRecord | None = None
        """Set for an audited request."""
        self.status: int | None = None
        """The status sent, once the response has started."""

    async def __call__(self, message: Message) -> None:
        exchange = self.exchange
        if exchange is not None:
            if exchange.refused:
                return  # a 503 went out in place of the app's response
            if message["type"] == "http.response.start":
                exchange.status = int(message["status"])
                try:
                    await _record(self.audit, exchange)
                except AuditUnavailable:
                    # The sink began failing while this record waited for room: refused
                    # like the requests after it, unrecorded.
                    exchange.refused = True
                    await send_error(self.deliver, self.audit.refusal(), self.revision())
                    return
        await self.deliver(message)

    async def deliver(self, message: Message) -> None:
        """To the server, with the request id, noting the status."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
            message = {**message, "headers": [*message.get("headers", ()), self.header]}
        await self.send(message)


class SecurityMiddleware:
    """Request id, authentication, policy, audit, and the HTTP metrics, in one frame."""

    def __init__(
        self,
        app: Any,
        *,
        routes: RouteTable,
        access: AccessControl,
        audit: AuditTrail,
        revision: Callable[[], int],
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.access = access
        """Replace with a new :class:`AccessControl` to apply a reloaded config."""
        self.audit = audit
        self.revision = revision
        """The registry's current revision, for the ``X-Registry-Index`` of a refusal."""
        self.metrics = metrics
        """Counts every request by route template and status, and times it. The app names
        the matched route template in the scope (``ROUTE_SCOPE_KEY``); requests that match
        no route (or are refused before routing) count as ``unmatched``, so a scan of random
        paths cannot create new label values."""

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope.get("headers", []))
        token = request_id_var.set(request_id)
        reply = _Reply(send, request_id, self.audit, self.revision)
        try:
            path = scope["path"]
            if path in OPEN_PATHS:
                await self._open(scope, receive, reply.deliver)
            elif path == STATUS_PAGE and not self.access.authenticator.open:
                scope[STATIC_PAGE_KEY] = True
                await self.app(scope, receive, reply.deliver)
            else:
                await self._guarded(scope, receive, reply, request_id)
        finally:
            request_id_var.reset(token)
            # A request whose client left before any answer (a held watch, typically) was
            # not answered: it is not counted.
            if reply.status is not None and self.metrics is not None:
                seconds = None if scope.get(HELD_SCOPE_KEY) else time.perf_counter() - started
                route = scope.get(ROUTE_SCOPE_KEY) or UNMATCHED_ROUTE
                self.metrics.observe_request(route, scope.get("method", ""), reply.status, seconds)

    async def _open(self, scope: Scope, receive: Any, send: Send) -> None:
        """A probe, or ``/metrics``: an operator's token first, once clients exist."""
        if scope["path"] in OPERATOR_PROBES and not self.access.authenticator.open:
            refusal: RegistryError | None = None
            try:
                authenticator = self.access.authenticator
                authenticator.require_operator(authenticator.authenticate(scope))
            except RegistryError as error:
                refusal = error
            if refusal is not None and scope["path"] == "/metrics":
                await send_error(send, refusal, self.revision())
                return
            scope[OPERATOR_REFUSAL_KEY] = refusal
        await self.app(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Any, reply: _Reply, request_id: str) -> None:
        try:
            self.audit.admit()
        except AuditUnavailable as error:
            # Its record could not be kept either: refused before anything runs, unrecorded
            # (counted in ``audit.requests_refused``).
            await send_error(reply.deliver, error, self.revision())
            return
        access = self.access  # one configuration for the whole request, even across a reload
        method = scope["method"]
        route, params = self.routes.match(method, scope["path"])
        if route is not None:
            scope[ROUTE_SCOPE_KEY] = route
        targets = {k: v for k in _TARGETS if is_valid_identifier(v := params.get(k, ""))}
        arrival = AuditRecord(
            time=datetime.now(UTC),
            request_id=request_id,
            client=None,
            workspace=None,
            method=method if _METHOD_RE.fullmatch(method) else "OTHER",
            route=route,
            decision="allowed",
            status=None,
            latency_ms=0.0,
            # Named one by one: a ``**`` mapping takes msgspec's slow path (0.64 against
            # 0.32 us for this record and its completion, measured).
            runtime_id=targets.get("runtime_id"),
            worker_id=targets.get("worker_id"),
            host_id=targets.get("host_id"),
        )
        exchange = _RequestAuditRecord(
            trio.current_time(), arrival, targets, path_workspace=params.get(PATH_WORKSPACE)
        )
        reply.exchange = exchange
        try:
            try:
                principal = self._admit(scope, access, exchange)
            except RegistryError as error:
                exchange.decision = "denied"
                log.debug("request %s refused: %s", request_id, error.code)
                await send_error(reply, error, self.revision())
                return
            exchange.access = RequestAccess(request_id, principal, access.policy.view(principal))
            scope[ACCESS_SCOPE_KEY] = exchange.access
            await self.app(scope, receive, reply)
        except Exception:
            if exchange.status is None:
                exchange.status = 500
            raise
        finally:
            if not (exchange.recorded or exchange.refused):
                with trio.CancelScope(shield=True) as late:
                    late.deadline = trio.current_time() + LATE_AUDIT_DEADLINE_S
                    with suppress(AuditUnavailable):
                        await _record(self.audit, exchange)
                if not exchange.recorded:
                    self.audit.records_lost += 1
                    log.error("request %s: its audit record could not be queued", request_id)

    def _admit(
        self, scope: Scope, access: AccessControl, exchange: _RequestAuditRecord
    ) -> Principal:
        """Authenticate, then ask the policy; the exchange learns who as soon as it is known."""
        client = access.authenticator.authenticate(scope)
        exchange.client = client.name if client is not None else None
        if exchange.arrival.route in OPERATOR_ROUTES:
            access.authenticator.require_operator(client)
        workspace = access.authenticator.acting_workspace(client, scope, exchange.path_workspace)
        exchange.workspace = workspace
        principal = Principal(exchange.client, workspace)
        facts = RequestFacts(
            principal=principal,
            method=exchange.arrival.method,
            route=exchange.arrival.route,
            **exchange.targets,
        )
        try:
            allowed = access.policy.allows(facts)
        except Exception:
            request_id = exchange.arrival.request_id
            log.exception("request %s: the policy failed; refusing", request_id)
            raise InternalError(request_id) from None
        if not allowed:
            raise Forbidden("the policy does not allow this request")
        return principal
