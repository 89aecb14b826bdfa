"""A fake yoi worker-runtime speaking the real REST v1 protocol of either era.

It is a plain ASGI app served by hypercorn on a real loopback socket, so the daemon talks
to it exactly as to a real runtime: HTTP/1.1, keep-alive, bearer tokens. One server can
mount many runtimes under distinct base paths (``http://127.0.0.1:PORT/<prefix>``), which is
how the benchmark runs hundreds of them in one process.

``FakeRuntime.era`` chooses the protocol (contract-v2 section 6 tells them apart):

- ``"older"`` (the default; June-July 2026, contract section 3): ``runtime_id`` and
  ``limits`` in ``GET /v1/runtime``, ``worker_ref {runtime_id, worker_id}``, statuses
  ``running|stopped|cancelled``, acks with ``event_id``, ``?status`` ignored, and a bearer
  token only if ``token`` is set.
- ``"current"`` (yoi HEAD, contract-v2 sections 4.1-4.6): auth is mandatory, either
  capability tokens verified with ``cryptography`` against ``trusted_servers`` (see
  ``tests/fake_runtime_auth.py``: audience, expiry, workspace, one permission per route) or
  the static ``token`` (the local token, which scopes the caller to workspace ``local``);
  every request is scoped to the caller's workspace (workers of another workspace answer
  404 ``worker_not_found``); no ``runtime_id``/``limits``, ``os``/``arch``; UUIDv7 worker
  ids (other path ids: 400 ``invalid_worker_id``); statuses ``idle|running|paused|stopped|
  cancelled``; ``display_name``, ``workspace_id``, ``profile``, ``profile_source``;
  ``?status=stopped``; acks ``{worker_ref {worker_id}, status}``; input to a cancelled
  worker 400 ``invalid_request``, to a stopped one 409 ``worker_execution_unavailable``
  without an execution backend; unknown routes 404 and wrong methods 405 with empty bodies.

Faults are switched per runtime (``FakeRuntime.fault``), optionally only on some routes
(``fault_routes``): ``slow`` (answer after ``slow_seconds``), ``hang`` (never answer),
``error500``, ``unauthorized`` (401), ``forbidden`` (403), ``garbage`` (not JSON),
``wrong_shape`` (JSON with the wrong envelope), ``oversize`` (a valid answer larger than
``oversize_bytes``), ``oversize_chunked`` (the same without Content-Length). Connection
refused is :meth:`FakeServer.stop`; a restart with a different worker set is
:meth:`FakeServer.start` again after changing ``workers``.

Error bodies carry canary text (``error_message``) so tests can check that no remote error
text is ever echoed. Every request's ``Authorization`` header is recorded, and in the
current era the context each accepted request was authenticated as (``contexts``).

Run standalone (used by ``benchmarks/remote_freshness.py``)::

    python -m tests.fake_runtime --runtimes 200 --workers 2 [--token-file PATH] [--subscription]

serves runtime ``i`` at ``http://127.0.0.1:<port i>/rt-<i>`` (each on its own port, like
separate runtime processes; every port serves every prefix) and prints ``READY <port 0>
<port 1> ...``. Control routes ``PUT|DELETE /_control/<prefix>/workers/<worker_id>`` add or
remove a worker (published as events with ``--subscription``, which makes every runtime a
current one serving ``GET /v1/protocol/ws``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qs

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from tests.fake_runtime_auth import LOCAL_SERVER_ID, AuthContext, AuthRefusal, RuntimeAuth
from tests.fake_subscription import FakeSubscriptions
from tests.toml_text import toml_value
from yoi_registryd.capability import SigningKey, write_key_file

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

ROUTES: Final = frozenset({"runtime", "workers", "worker", "operation", "subscription"})
TERMINAL: Final = frozenset({"stopped", "cancelled"})
INPUT_KINDS: Final = frozenset(
    {"user", "notify", "compact", "list_rewind_targets", "register_peer"}
)
"""Input kinds a current runtime accepts (``system`` is refused)."""
PERMISSIONS: Final = {
    "runtime": None,
    "workers": "workers:list",
    "worker": "workers:read",
    "input": "workers:input",
    "stop": "workers:stop",
    "cancel": "workers:stop",
    "unknown": None,
}
"""The permission each route needs at HEAD (contract-v2 section 4.1); None: any credential."""
Era = Literal["current", "older"]
FAULTS: Final = frozenset(
    {
        "slow",
        "hang",
        "error500",
        "unauthorized",
        "forbidden",
        "garbage",
        "wrong_shape",
        "oversize",
        "oversize_chunked",
    }
)

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    """A fresh UUIDv7 (RFC 9562: 48-bit Unix milliseconds, version 7, variant, randomness),
    lowercase and hyphenated as a current runtime writes worker ids."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # the RFC variant
    return str(uuid.UUID(int=value))


def _uuid7(text: str) -> str | None:
    """``text`` as a canonical UUIDv7 when it parses as one (any form Rust's uuid accepts)."""
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return None
    return str(parsed) if parsed.version == 7 else None


@dataclass
class FakeWorker:
    worker_id: str
    status: str = "running"
    display_name: str | None = None
    workspace_id: str | None = None
    """Current era: the owning workspace; None: the runtime's ``default_workspace``."""
    intent: dict[str, Any] = field(default_factory=lambda: {"kind": "assistant"})
    profile: dict[str, Any] = field(default_factory=lambda: {"kind": "runtime_default"})
    transcript: list[dict[str, str]] = field(default_factory=list)
    last_event_id: int = 0


@dataclass
class FakeRuntime:
    """One runtime's state and switches. Mutate it freely from the test."""

    runtime_id: str
    token: str | None = None
    """The static bearer token (current era: the local token, scoping to ``local``)."""
    era: Era = "older"
    trusted_servers: dict[str, str] = field(default_factory=dict)
    """Current era: ``server_id`` -> public key string; non-empty turns capability tokens on
    (the local token is then ignored)."""
    default_workspace: str = "local"
    """Current era: the workspace of a worker added without ``workspace_id``."""
    clock: Callable[[], float] = time.time
    """Current era: the runtime's clock for token expiry (Unix seconds)."""
    os: str = "linux"
    arch: str = "x86_64"
    status: str = "running"
    display_name: str | None = "Fake runtime"
    worker_creation_available: bool = False
    workers: dict[str, FakeWorker] = field(default_factory=dict)
    extra_worker_entries: list[Any] = field(default_factory=list)
    """Raw JSON values appended to ``/v1/workers`` (invalid ids, wrong shapes)."""
    fault: str | None = None
    fault_routes: frozenset[str] | None = None
    """Routes the fault applies to (see ``ROUTES``); None: every route."""
    slow_seconds: float = 0.0
    oversize_bytes: int = 9 * 1024 * 1024
    error_message: str = "internal store failure"
    auth_headers: list[str | None] = field(default_factory=list)
    requests: list[tuple[float, str, str]] = field(default_factory=list)
    """``(trio time, method, route)`` of every request, in arrival order."""
    operations: list[tuple[str, str, Any]] = field(default_factory=list)
    """``(operation, worker_id, decoded body)`` of every operation that reached a worker."""
    event_seq: int = 0
    subscriptions: FakeSubscriptions | None = None
    """The event subscription (``GET /v1/protocol/ws``), when the runtime serves one:
    see :func:`with_subscription`."""
    contexts: list[tuple[str, AuthContext]] = field(default_factory=list)
    """Current era: ``(route, context)`` of every request that passed authentication."""
    workspace_owners: dict[str, str] = field(default_factory=dict)
    """Current era: the server id that first used each workspace (it owns it)."""

    def add(self, *workers: FakeWorker | str) -> None:
        for w in workers:
            worker = FakeWorker(w) if isinstance(w, str) else w
            self.workers[worker.worker_id] = worker

    def set_workers(self, workers: Iterable[FakeWorker | str]) -> None:
        self.workers.clear()
        self.add(*workers)

    def count(self, route: str) -> int:
        return sum(1 for _, _, r in self.requests if r == route)

    def times(self, route: str) -> list[float]:
        return [t for t, _, r in self.requests if r == route]

    # -- wire shapes -------------------------------------------------------------------

    def authenticate(
        self, route: str, authorization: bytes | None, permission: str | None
    ) -> AuthContext:
        """Current era: check the credential for ``route`` and bind the workspace to the
        first server id that uses it; :class:`AuthRefusal` when refused."""
        auth = RuntimeAuth(self.runtime_id, self.trusted_servers, self.token, self.clock)
        context = auth.authenticate(authorization, permission)
        if context.server_id != LOCAL_SERVER_ID:
            owner = self.workspace_owners.setdefault(context.workspace_id, context.server_id)
            if owner != context.server_id:
                raise AuthRefusal(
                    403, "workspace_owner_mismatch", "workspace is bound to another server"
                )
        self.contexts.append((route, context))
        return context

    def workspace_of(self, worker: FakeWorker) -> str:
        return worker.workspace_id or self.default_workspace

    def summary(self) -> dict[str, Any]:
        """The runtime summary; counts are over every workspace (a runtime does not scope
        them)."""
        statuses = [w.status for w in self.workers.values()]
        counts = {
            "status": self.status,
            "worker_count": len(statuses),
            "active_worker_count": sum(s not in TERMINAL for s in statuses),
            "stopped_worker_count": statuses.count("stopped"),
            "cancelled_worker_count": statuses.count("cancelled"),
            "diagnostic_count": 0,
        }
        if self.era == "current":
            return {
                "display_name": self.display_name,
                "backend": "fs_store",
                **counts,
                "os": self.os,
                "arch": self.arch,
                "worker_creation_available": self.worker_creation_available,
            }
        body: dict[str, Any] = {
            "runtime_id": self.runtime_id,
            "backend": "memory",
            **counts,
            "limits": {"max_transcript_projection_items": 200, "max_event_batch_items": 100},
            "worker_creation_available": self.worker_creation_available,
            "some_future_field": {"ignored": True},
        }
        if self.display_name is not None:
            body["display_name"] = self.display_name
        if self.subscriptions is not None:
            # A runtime serving the subscription no longer names itself nor its limits
            # (contract v2 section 6.1).
            del body["runtime_id"], body["limits"]
            body.update(os="linux", arch="x86_64")
        return body

    def worker_json(self, w: FakeWorker) -> dict[str, Any]:
        if self.era == "current":
            return self._current_worker_json(w)
        body: dict[str, Any] = {
            "worker_ref": {"runtime_id": self.runtime_id, "worker_id": w.worker_id},
            "runtime_id": self.runtime_id,
            "worker_id": w.worker_id,
            "status": w.status,
            "intent": w.intent,
            "profile": w.profile,
            "requested_capability_count": 0,
            "has_config_bundle": False,
            "transcript_len": len(w.transcript),
            "last_event_id": w.last_event_id,
        }
        if w.display_name is not None:
            body["display_name"] = w.display_name
        return body

    def _current_worker_json(self, w: FakeWorker) -> dict[str, Any]:
        profile = w.profile
        if profile.get("kind") not in ("builtin", "named"):
            profile = {"kind": "builtin", "value": "builtin:coder"}
        body: dict[str, Any] = {
            "worker_ref": {"worker_id": w.worker_id},
            "worker_id": w.worker_id,
            "status": w.status,
            "workspace_id": self.workspace_of(w),
            "profile": profile,
        }
        if w.display_name is not None:
            body["display_name"] = w.display_name
        body["profile_source"] = {
            "id": "profile-source-1",
            "digest": "sha256:" + "0" * 64,
            "size_bytes": 5120,
            "source_graph": {
                "source_count": 3,
                "total_source_bytes": 4800,
                "entrypoints": {},
                "import_count": 2,
            },
        }
        return body


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    chunked: bool = False
    """Send without Content-Length, in small chunks (transfer-encoding: chunked)."""


def _error(status: int, code: str, message: str) -> _Reply:
    return _Reply(status, msgspec.json.encode({"error": {"code": code, "message": message}}))


def _ok(body: Any) -> _Reply:
    return _Reply(200, msgspec.json.encode(body))


class FakeRuntimeApp:
    """The ASGI app: ``<prefix>/v1/...`` is served by the runtime mounted at ``<prefix>``."""

    def __init__(self) -> None:
        self.runtimes: dict[str, FakeRuntime] = {}

    def mount(self, prefix: str, runtime: FakeRuntime) -> FakeRuntime:
        """Serve ``runtime`` under ``prefix`` (``""`` or ``/some/path``)."""
        self.runtimes[prefix.rstrip("/")] = runtime
        return runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        reply = await self._handle(scope, body)
        headers = [(b"content-type", reply.content_type.encode())]
        if not reply.chunked:
            headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        step = 4096 if reply.chunked else max(len(reply.body), 1)
        for start in range(0, len(reply.body), step):
            await send(
                {
                    "type": "http.response.body",
                    "body": reply.body[start : start + step],
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b""})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        prefix, sep, rest = scope["path"].partition("/v1/")
        runtime = self.runtimes.get(prefix)
        if runtime is not None and sep and rest == "protocol/ws":
            runtime.requests.append((trio.current_time(), "GET", "subscription"))
            if runtime.subscriptions is not None:
                await runtime.subscriptions.serve(scope, receive, send)
                return
        await receive()  # websocket.connect
        await send({"type": "websocket.http.response.start", "status": 404, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b""})

    async def _handle(self, scope: Scope, body: bytes) -> _Reply:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/_control/"):
            return self._control(method, path.removeprefix("/_control"))
        prefix, sep, rest = path.partition("/v1/")
        runtime = self.runtimes.get(prefix)
        if not sep or runtime is None:
            return _error(404, "not_found", "no such route")
        parts = rest.split("/")
        route = _route(method, parts)
        runtime.requests.append((trio.current_time(), method, route))
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization")
        runtime.auth_headers.append(auth.decode("latin-1") if auth is not None else None)
        if runtime.era == "current":
            return await self._current(runtime, scope, route, parts, headers, body)
        if runtime.token is not None and auth != f"Bearer {runtime.token}".encode():
            return _error(401, "unauthorized", runtime.error_message)
        faulty = await self._maybe_fault(runtime, route)
        if faulty is not None:
            return faulty
        if route == "runtime":
            return _ok({"runtime": runtime.summary()})
        if route == "workers":
            entries = [runtime.worker_json(w) for w in runtime.workers.values()]
            return _ok({"workers": entries + list(runtime.extra_worker_entries)})
        if route == "worker":
            worker = runtime.workers.get(parts[1])
            if worker is None:
                return _error(404, "worker_not_found", runtime.error_message)
            return _ok({"worker": runtime.worker_json(worker)})
        if route == "operation":
            return self._operate(runtime, parts[1], parts[2], body)
        return _error(404, "not_found", "no such route")

    async def _maybe_fault(self, runtime: FakeRuntime, route: str) -> _Reply | None:
        if runtime.fault is not None and (
            runtime.fault_routes is None or route in runtime.fault_routes
        ):
            return await self._fault(runtime)
        return None

    async def _current(
        self,
        runtime: FakeRuntime,
        scope: Scope,
        route: str,
        parts: list[str],
        headers: dict[bytes, bytes],
        body: bytes,
    ) -> _Reply:
        """A request to a current (HEAD) runtime: authenticate, scope, then serve."""
        operation = parts[2] if route == "operation" else None
        try:
            context = runtime.authenticate(
                route, headers.get(b"authorization"), PERMISSIONS[operation or route]
            )
        except AuthRefusal as refusal:
            return _error(refusal.status, refusal.code, refusal.message)
        if route == "unknown":
            return _Reply(405 if _known_path(parts) else 404, b"")
        faulty = await self._maybe_fault(runtime, route)
        if faulty is not None:
            return faulty
        scoped = {
            wid: w
            for wid, w in runtime.workers.items()
            if runtime.workspace_of(w) == context.workspace_id
        }
        if route == "runtime":
            return _ok({"runtime": runtime.summary()})
        if route == "workers":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            wanted = query.get("status")
            if wanted is not None and wanted != ["stopped"]:
                return _error(400, "invalid_query", "status must be `stopped`")
            entries = [
                runtime.worker_json(w)
                for w in scoped.values()
                if wanted is None or w.status == "stopped"
            ]
            return _ok({"workers": entries + list(runtime.extra_worker_entries)})
        worker_id = _uuid7(parts[1])
        if worker_id is None:
            return _error(400, "invalid_worker_id", "worker_id must be an unsigned integer")
        if route == "worker":
            worker = scoped.get(worker_id)
            if worker is None:
                return _error(404, "worker_not_found", f"worker {worker_id} was not found")
            return _ok({"worker": runtime.worker_json(worker)})
        assert operation is not None
        return self._current_operate(runtime, scoped, worker_id, operation, headers, body)

    def _current_operate(
        self,
        runtime: FakeRuntime,
        scoped: dict[str, FakeWorker],
        worker_id: str,
        operation: str,
        headers: dict[bytes, bytes],
        body: bytes,
    ) -> _Reply:
        """Operations as a HEAD runtime answers them (contract-v2 sections 4.4-4.5)."""
        if operation == "input":
            content_type = headers.get(b"content-type", b"").split(b";")[0].strip()
            if content_type != b"application/json":
                return _error(400, "invalid_json", "invalid JSON request body: content type")
        try:
            request = msgspec.json.decode(body) if body.strip() or operation == "input" else {}
        except msgspec.DecodeError:
            return _error(400, "invalid_json", "invalid JSON request body: syntax")
        if not isinstance(request, dict):
            return _error(400, "invalid_json", "invalid JSON request body: expected an object")
        if operation == "input":
            kind, content = request.get("kind"), request.get("content")
            if kind not in INPUT_KINDS or not isinstance(content, str):
                return _error(400, "invalid_json", "invalid JSON request body: kind, content")
            if not content:
                return _error(400, "invalid_request", "invalid request: content is empty")
        if runtime.status == "stopped":
            return _error(409, "runtime_stopped", runtime.error_message)
        worker = scoped.get(worker_id)
        if worker is None:
            return _error(404, "worker_not_found", f"worker {worker_id} was not found")
        if operation == "input":
            if worker.status == "cancelled":
                return _error(
                    400, "invalid_request", f"invalid request: worker {worker_id} is cancelled"
                )
            if worker.status == "stopped":
                if not runtime.worker_creation_available:
                    return _error(
                        409, "worker_execution_unavailable", "no execution backend is installed"
                    )
                worker.status = "idle"  # the implicit restore connected
            worker.transcript.append({"kind": request["kind"], "content": request["content"]})
            if worker.status == "idle":
                worker.status = "running"  # the input starts a turn
        elif worker.status not in TERMINAL:  # the first terminal state wins
            worker.status = "stopped" if operation == "stop" else "cancelled"
        runtime.operations.append((operation, worker_id, request))
        return _ok({"ack": {"worker_ref": {"worker_id": worker_id}, "status": worker.status}})

    async def _fault(self, runtime: FakeRuntime) -> _Reply | None:
        fault = runtime.fault
        if fault == "slow":
            await trio.sleep(runtime.slow_seconds)
            return None
        elif fault == "hang":
            await trio.sleep_forever()
        elif fault == "error500":
            return _error(500, "store_error", runtime.error_message)
        elif fault == "unauthorized":
            return _error(401, "unauthorized", runtime.error_message)
        elif fault == "forbidden":
            return _error(403, "forbidden", runtime.error_message)
        elif fault == "garbage":
            return _Reply(200, b"<html>" + runtime.error_message.encode() + b"</html>", "text/html")
        elif fault == "wrong_shape":
            return _ok({"runtime": [runtime.error_message], "workers": {"a": 1}})
        elif fault in ("oversize", "oversize_chunked"):
            pad = "x" * runtime.oversize_bytes
            body = {"runtime": runtime.summary(), "workers": [], "pad": pad}
            return _Reply(200, msgspec.json.encode(body), chunked=fault == "oversize_chunked")
        else:
            raise AssertionError(f"unknown fault {fault!r}")

    def _operate(self, runtime: FakeRuntime, worker_id: str, operation: str, body: bytes) -> _Reply:
        try:
            request = msgspec.json.decode(body) if body.strip() else {}
        except msgspec.DecodeError:
            return _error(400, "invalid_json", "the body is not JSON")
        if not isinstance(request, dict):
            return _error(400, "invalid_request", "expected an object")
        if runtime.status == "stopped":
            return _error(409, "runtime_stopped", runtime.error_message)
        worker = runtime.workers.get(worker_id)
        if worker is None:
            return _error(404, "worker_not_found", runtime.error_message)
        ref = {"runtime_id": runtime.runtime_id, "worker_id": worker_id}
        if operation == "input":
            kind, content = request.get("kind"), request.get("content")
            if kind not in ("user", "system") or not isinstance(content, str):
                return _error(400, "invalid_request", "expected {kind, content}")
            if worker.status in TERMINAL:
                return _error(409, "worker_not_running", runtime.error_message)
            worker.transcript.append({"kind": kind, "content": content})
            runtime.event_seq += 1
            worker.last_event_id = runtime.event_seq
            runtime.operations.append((operation, worker_id, request))
            return _ok(
                {
                    "ack": {
                        "worker_ref": ref,
                        "status": worker.status,
                        "transcript_sequence": len(worker.transcript),
                        "event_id": runtime.event_seq,
                    }
                }
            )
        if worker.status not in TERMINAL:  # the first terminal state wins
            worker.status = "stopped" if operation == "stop" else "cancelled"
        runtime.event_seq += 1
        worker.last_event_id = runtime.event_seq
        runtime.operations.append((operation, worker_id, request))
        return _ok(
            {"ack": {"worker_ref": ref, "status": worker.status, "event_id": runtime.event_seq}}
        )

    def _control(self, method: str, path: str) -> _Reply:
        """``PUT|DELETE /_control/<prefix>/workers/<worker_id>`` (for the benchmark)."""
        prefix, sep, worker_id = path.rpartition("/workers/")
        runtime = self.runtimes.get(prefix)
        if not sep or runtime is None:
            return _error(404, "not_found", "no such runtime")
        subscriptions = runtime.subscriptions
        if method == "PUT":
            if subscriptions is not None:
                subscriptions.upsert(worker_id)
            else:
                runtime.add(worker_id)
        elif method == "DELETE":
            if subscriptions is not None:
                if worker_id in runtime.workers:
                    subscriptions.remove(worker_id)
            else:
                runtime.workers.pop(worker_id, None)
        else:
            return _error(405, "method_not_allowed", "PUT or DELETE")
        return _ok({"ok": True})


def _known_path(parts: list[str]) -> bool:
    """A path some route serves (with another method: 405, not 404)."""
    return (
        parts in (["runtime"], ["workers"])
        or (len(parts) == 2 and parts[0] == "workers")
        or (len(parts) == 3 and parts[0] == "workers" and parts[2] in ("stop", "cancel", "input"))
    )


def _route(method: str, parts: list[str]) -> str:
    if method == "GET" and parts == ["runtime"]:
        return "runtime"
    if method == "GET" and parts == ["workers"]:
        return "workers"
    if method == "GET" and len(parts) == 2 and parts[0] == "workers":
        return "worker"
    if (
        method == "POST"
        and len(parts) == 3
        and parts[0] == "workers"
        and parts[2] in ("stop", "cancel", "input")
    ):
        return "operation"
    return "unknown"


class FakeServer:
    """Serves a :class:`FakeRuntimeApp` on loopback ports; can stop and start again.

    Every port serves the same app; more than one port lets each runtime have its own
    origin (``host:port``), as distinct runtime processes would.
    """

    def __init__(self, app: FakeRuntimeApp | None = None) -> None:
        self.app = app or FakeRuntimeApp()
        self.ports: list[int] = []
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    @property
    def port(self) -> int:
        assert self.ports, "start the server first"
        return self.ports[0]

    def url(self, prefix: str = "", port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.port}{prefix}"

    async def start(self, nursery: trio.Nursery, listeners: int = 1) -> FakeServer:
        """Listen (on the same ports as before, after a stop) and serve."""
        wanted = self.ports or [0] * listeners
        socks = []
        for port in wanted:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(1024)
            socks.append(sock)
        self.ports = [sock.getsockname()[1] for sock in socks]
        await nursery.start(self._serve, socks)
        return self

    async def _serve(
        self, socks: list[socket.socket], task_status: trio.TaskStatus[list[str]]
    ) -> None:
        config = HypercornConfig()
        config.bind = [f"fd://{sock.detach()}" for sock in socks]
        config.errorlog = logging.getLogger("fake_runtime.server")
        config.accesslog = None
        config.graceful_timeout = 0.1
        self._stopped = trio.Event()
        app: Any = self.app
        with trio.CancelScope() as scope:
            self._scope = scope
            await serve(app, config, task_status=task_status)
        self._stopped.set()

    async def stop(self) -> None:
        """Close the listener and every connection: clients now get connection refused."""
        assert self._scope is not None
        self._scope.cancel()
        await self._stopped.wait()


async def start_fake(nursery: trio.Nursery, *runtimes: tuple[str, FakeRuntime]) -> FakeServer:
    """Start one server mounting each ``(prefix, runtime)``."""
    server = FakeServer()
    for prefix, runtime in runtimes:
        server.app.mount(prefix, runtime)
    return await server.start(nursery)


def with_subscription(runtime: FakeRuntime) -> FakeSubscriptions:
    """Make ``runtime`` a current one that serves the event subscription."""
    runtime.subscriptions = FakeSubscriptions(runtime)
    return runtime.subscriptions


def remote_source_toml(runtime_id: str, base_url: str, **extra: object) -> str:
    """A ``[[sources]]`` table for a remote runtime; ``extra`` adds keys."""
    lines = [
        "[[sources]]",
        'kind = "remote"',
        f'runtime_id = "{runtime_id}"',
        f'base_url = "{base_url}"',
    ]
    for key, value in extra.items():
        lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


SERVER_ID: Final = "registry-test"
"""The registry's server id in capability tests."""
WORKSPACE_ID: Final = "0192f0e8-4d84-7d6e-a000-000000000001"
"""The workspace a capability test's registry acts for."""


def registry_identity(directory: Path) -> tuple[SigningKey, Path]:
    """A new registry signing key, written to ``directory/registry.key`` (0600)."""
    key = SigningKey.generate()
    path = directory / "registry.key"
    write_key_file(path, key)
    return key, path


def current_runtime(runtime_id: str, key: SigningKey | None = None, **kwargs: Any) -> FakeRuntime:
    """A current-era runtime trusting ``key`` as the registry's (server ``SERVER_ID``)."""
    trusted = {SERVER_ID: key.public_key_string()} if key is not None else {}
    runtime = FakeRuntime(runtime_id, era="current", trusted_servers=trusted, **kwargs)
    runtime.default_workspace = WORKSPACE_ID if key is not None else "local"
    return runtime


def capability_source_toml(runtime_id: str, base_url: str, key_path: Path, **extra: object) -> str:
    """A ``[[sources]]`` table of a remote runtime reached with capability tokens."""
    settings: dict[str, object] = {
        "auth": "capability",
        "server_id": SERVER_ID,
        "signing_key_file": str(key_path),
        "workspace_id": WORKSPACE_ID,
    }
    return remote_source_toml(runtime_id, base_url, **{**settings, **extra})


# -- standalone mode (benchmarks) ---------------------------------------------------------


def runtime_prefix(index: int) -> str:
    return f"/rt-{index:03d}"


async def _serve_standalone(
    runtimes: int, workers: int, token: str | None, subscription: bool
) -> None:
    server = FakeServer()
    for i in range(runtimes):
        runtime = FakeRuntime(runtime_id=f"bench-{i:03d}", token=token)
        runtime.add(*(f"w-{j}" for j in range(workers)))
        if subscription:
            with_subscription(runtime)
        runtime.requests = Discard()
        runtime.auth_headers = Discard()
        server.app.mount(runtime_prefix(i), runtime)
    async with trio.open_nursery() as nursery:
        await server.start(nursery, listeners=runtimes)
        print("READY", *server.ports, flush=True)


class Discard(list[Any]):
    """A list that keeps nothing (long benchmark runs must not grow memory)."""

    def append(self, item: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="serve fake yoi worker-runtimes")
    parser.add_argument("--runtimes", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--token-file", help="require the bearer token held in this file")
    parser.add_argument(
        "--subscription",
        action="store_true",
        help="current runtimes serving the event subscription (control routes publish)",
    )
    args = parser.parse_args(argv)
    token = None
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    try:
        trio.run(_serve_standalone, args.runtimes, args.workers, token, args.subscription)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
