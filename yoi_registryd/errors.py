"""The typed error family: one code, one HTTP status, one function that renders them.

Every error a client can see is a :class:`RegistryError` defined here, whoever raises it: the
registry layer (lookups, validation, routing), the audit trail, the HTTP edge (watches, the
connection cap, the request head bound) and the HTTP framework itself (:class:`HttpRefusal`).
:func:`render_error` turns any of them into its status, headers and body, in yoi's error
shape (contract-v2 section 1.8.1) with our typed code beside it: ``{"error": <reason phrase>,
"message", "diagnostics": [{code, severity, message}], "code", ...details}``; the quart app,
the ASGI middleware and the connection cap all answer through it. Messages are written here,
from ids the caller already knows, so no error body can carry an endpoint, path or token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any, ClassVar, Final, NamedTuple

import msgspec


def reason_phrase(status: int) -> str:
    """The canonical reason phrase of ``status`` (yoi's ``error`` member)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_document(
    status: int, code: str, message: str, details: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """An error body: yoi's ``{error, message, diagnostics}`` plus ``code`` and details.

    yoi's ``error`` is the status's reason phrase, not a code, so the typed code has a field
    of its own, and is also the one ``error`` diagnostic (which yoi's web client shows).
    """
    return {
        "error": reason_phrase(status),
        "message": message,
        "diagnostics": [{"code": code, "severity": "error", "message": message}],
        "code": code,
        **(details or {}),
    }


class RegistryError(Exception):
    """Base of every error that reaches a client as a typed JSON body."""

    code: str = "internal_error"
    status: int = 500
    retry_after: int | None = None
    """Seconds a client should wait before asking again (``Retry-After``); None: not an
    error that passes with time."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers: dict[str, str] = {}
        if self.retry_after is not None:
            self.headers["Retry-After"] = str(self.retry_after)

    def wire(self, *, conceal_invisible: bool = True) -> tuple[int, dict[str, Any]]:
        """The status and body as the client sees them."""
        return self.status, error_document(self.status, self.code, self.message, self.details)


class Templated(RegistryError):
    """An error whose message is its class's ``template`` formatted with its details alone:
    ids the caller sent, so the message cannot say more than they do."""

    template: ClassVar[str]

    def __init__(self, **details: str) -> None:
        super().__init__(self.template.format(**details), **details)


class InvalidIdentifier(Templated):
    code = "invalid_identifier"
    status = 400
    template = "{parameter} must be 1 to 120 bytes of [A-Za-z0-9_:-]"

    def __init__(self, parameter: str) -> None:
        super().__init__(parameter=parameter)


class InvalidQuery(RegistryError):
    code = "invalid_query"
    status = 400

    def __init__(self, message: str, parameter: str | None = None) -> None:
        if parameter is None:
            super().__init__(message)
        else:
            super().__init__(message, parameter=parameter)


class InvalidRequest(RegistryError):
    """A request body that does not match the operation's schema."""

    code = "invalid_request"
    status = 400


class RuntimeScoped(Templated):
    """An error about one runtime, named only by its id."""

    def __init__(self, runtime_id: str) -> None:
        super().__init__(runtime_id=runtime_id)


class WorkerScoped(Templated):
    """An error about one worker, named only by its runtime's id and its own."""

    def __init__(self, runtime_id: str, worker_id: str) -> None:
        super().__init__(runtime_id=runtime_id, worker_id=worker_id)


class HostScoped(Templated):
    """An error about one host, named only by its id."""

    def __init__(self, host_id: str) -> None:
        super().__init__(host_id=host_id)


class UnknownRuntime(RuntimeScoped):
    code = "unknown_runtime"
    status = 404
    template = "no runtime {runtime_id!r} is registered"


class UnknownHost(HostScoped):
    code = "unknown_host"
    status = 404
    template = "no host {host_id!r} is registered"


class UnknownWorker(WorkerScoped):
    code = "unknown_worker"
    status = 404
    template = "runtime {runtime_id!r} has no worker {worker_id!r}"


class NotVisible(RegistryError):
    """Something exists but the acting workspace may not see it.

    On the wire it is concealed as the matching "unknown" error (404) unless the
    configuration turns concealment off, so that its existence does not leak across
    workspaces.
    """

    status = 403
    conceal_as: ClassVar[Callable[..., RegistryError]]

    def concealed(self) -> RegistryError:
        """The error a caller that may not know about the target sees instead: the
        matching "unknown" error, built from the same ids."""
        return self.conceal_as(**self.details)

    def wire(self, *, conceal_invisible: bool = True) -> tuple[int, dict[str, Any]]:
        if conceal_invisible:
            return self.concealed().wire()
        return super().wire()


class WorkerNotVisible(NotVisible, WorkerScoped):
    code = "worker_not_visible"
    conceal_as = UnknownWorker
    template = "worker {worker_id!r} of runtime {runtime_id!r} is not visible to this workspace"


class RuntimeNotVisible(NotVisible, RuntimeScoped):
    code = "runtime_not_visible"
    conceal_as = UnknownRuntime
    template = "runtime {runtime_id!r} is not visible to this workspace"


class HostNotVisible(NotVisible, HostScoped):
    code = "host_not_visible"
    conceal_as = UnknownHost
    template = "host {host_id!r} is not visible to this workspace"


class Unauthenticated(RegistryError):
    """No valid bearer token where one is required."""

    code = "unauthenticated"
    status = 401

    def __init__(self, message: str, *, invalid_token: bool = False) -> None:
        super().__init__(message)
        challenge = 'Bearer realm="yoi-registryd"'
        if invalid_token:
            challenge += ', error="invalid_token"'
        self.headers["WWW-Authenticate"] = challenge


class WorkspaceMismatch(Templated):
    """The ``/api/w/{workspace_id}`` path and ``X-Yoi-Workspace`` name different workspaces."""

    code = "workspace_mismatch"
    status = 400
    template = "the workspace in the path and the one in X-Yoi-Workspace differ"

    def __init__(self) -> None:
        super().__init__(parameter="workspace_id")


class Forbidden(RegistryError):
    """The caller is known but may not do this (workspace not allowed, policy says no)."""

    code = "forbidden"
    status = 403


class RuntimeUnavailable(RuntimeScoped):
    code = "runtime_unavailable"
    status = 503
    template = "runtime {runtime_id!r} is not reachable right now"

    def __init__(self, runtime_id: str, retry_after: int = 5) -> None:
        self.retry_after = retry_after
        super().__init__(runtime_id)


class RuntimeTimeout(RuntimeScoped):
    """The runtime did not answer an operation within its configured timeout.

    The operation may or may not have taken effect; the worker's state shows which.
    """

    code = "runtime_timeout"
    status = 504
    template = "runtime {runtime_id!r} did not answer in time"


class RuntimeAuthFailed(RuntimeScoped):
    """The runtime refused the registry's own credentials: a gateway fault, not the caller's.

    The message says which refusal it was: the credentials themselves (the runtime's 401),
    or this request although they were valid (its 403: a missing permission, a workspace).
    """

    code = "runtime_auth_failed"
    status = 502
    template = "runtime {runtime_id!r} refused the registry's credentials"
    forbidden_template: ClassVar[str] = (
        "runtime {runtime_id!r} accepted the registry's credentials but refused this request"
    )

    def __init__(self, runtime_id: str, *, forbidden: bool = False) -> None:
        template = self.forbidden_template if forbidden else self.template
        RegistryError.__init__(self, template.format(runtime_id=runtime_id), runtime_id=runtime_id)


class RuntimeBadResponse(RuntimeScoped):
    """The runtime failed (5xx), or answered with something that is not a valid reply."""

    code = "runtime_bad_response"
    status = 502
    template = "runtime {runtime_id!r} failed or sent an invalid reply"


class RouteNotFound(Templated):
    code = "not_found"
    status = 404
    template = "no such API route"


class MethodNotAllowed(Templated):
    code = "method_not_allowed"
    status = 405
    template = "method not allowed on this route"

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        super().__init__()
        if allowed:  # RFC 9110: a 405 names the methods the route takes
            self.headers["Allow"] = ", ".join(sorted(allowed))


class InternalError(RegistryError):
    """Anything unexpected: logged in full for the operator, opaque for the client."""

    code = "internal_error"
    status = 500

    def __init__(self, request_id: str | None = None) -> None:
        if request_id is None:
            super().__init__("internal error")
        else:
            super().__init__("internal error", request_id=request_id)


class HttpRefusal(RegistryError):
    """A request the HTTP framework refused before any handler ran (a body too large or too
    slow, a malformed request): its status, a code made of the status's name, its message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RequestHeadTooLarge(Templated):
    """The request line and headers are larger than ``server.max_header_bytes``."""

    code = "request_head_too_large"
    status = 431
    template = "the request line and headers are too large"


class TooManyWatches(Templated):
    code = "too_many_watches"
    status = 429
    retry_after = 2
    template = "too many requests are waiting for changes; retry later"


class TooManyConnections(Templated):
    """The server holds ``server.max_connections`` connections: this one is refused."""

    code = "too_many_connections"
    status = 503
    retry_after = 1
    template = "the server has too many open connections; retry later"


class AuditUnavailable(Templated):
    """The audit trail cannot take another record (its sink fails and its queue is full), and
    ``audit.on_failure = "refuse"``: the request is refused rather than answered unaudited."""

    code = "audit_unavailable"
    status = 503
    retry_after = 1
    template = "the audit trail cannot record this request right now; retry later"


# -- rendering -------------------------------------------------------------------------------

REVISION_HEADER: Final = "X-Registry-Index"
"""The registry revision an answer was made from (``docs/api.md``, Headers)."""
JSON: Final = "application/json"
"""The media type of every API body, errors included."""
JSON_HEADER: Final = (b"content-type", JSON.encode("ascii"))
_REVISION_NAME: Final = REVISION_HEADER.lower().encode("ascii")
_encoder: Final = msgspec.json.Encoder()


class ErrorAnswer(NamedTuple):
    """A rendered error: status, headers (lower-case names, as ASGI wants them) and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def render_error(
    error: RegistryError, revision: int | None, *, conceal_invisible: bool = True
) -> ErrorAnswer:
    """The one rendering of a typed error, for the app, the middleware and the server alike.

    The headers an error answer carries follow one rule:

    - ``Content-Type: application/json`` and ``Content-Length``, always;
    - ``X-Registry-Index``, the registry's current revision, on every answer to a request
      (``revision``), whichever layer refused it: authentication, policy, the audit trail,
      the path guard or the app. Only ``too_many_connections`` goes without (``revision``
      None): it is sent on a connection before any request is read;
    - the error's own headers, which belong to its kind: ``Retry-After`` on the errors that
      ask to retry later (429 and 503), ``WWW-Authenticate`` on 401, ``Allow`` on 405.

    ``X-Request-Id`` is not the renderer's: the security middleware adds it to every answer
    to a request, an error or not. ``conceal_invisible``: a :class:`NotVisible` error is
    answered as its "unknown" twin (``server.conceal_invisible_workers``).
    """
    status, document = error.wire(conceal_invisible=conceal_invisible)
    body = _encoder.encode(document)
    headers = [JSON_HEADER, (b"content-length", b"%d" % len(body))]
    if revision is not None:
        headers.append((_REVISION_NAME, b"%d" % revision))
    headers.extend(
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in error.headers.items()
    )
    return ErrorAnswer(status, headers, body)


async def send_error(
    send: Callable[[dict[str, Any]], Awaitable[None]], error: RegistryError, revision: int | None
) -> None:
    """Answer with ``error`` through an ASGI ``send``, before (or instead of) the app."""
    status, headers, body = render_error(error, revision)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
