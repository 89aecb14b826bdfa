"""A fake yoi worker-runtime speaking the real REST v1 protocol (contract section 3).

It is a plain ASGI app served by hypercorn on a real loopback socket, so the daemon talks
to it exactly as to a real runtime: HTTP/1.1, keep-alive, bearer tokens. One server can
mount many runtimes under distinct base paths (``http://127.0.0.1:PORT/<prefix>``), which is
how the benchmark runs hundreds of them in one process.

Faults are switched per runtime (``FakeRuntime.fault``), optionally only on some routes
(``fault_routes``): ``slow`` (answer after ``slow_seconds``), ``hang`` (never answer),
``error500``, ``unauthorized`` (401), ``forbidden`` (403), ``garbage`` (not JSON),
``wrong_shape`` (JSON with the wrong envelope), ``oversize`` (a valid answer larger than
``oversize_bytes``), ``oversize_chunked`` (the same without Content-Length). Connection
refused is :meth:`FakeServer.stop`; a restart with a different worker set is
:meth:`FakeServer.start` again after changing ``workers``.

Error bodies carry canary text (``error_message``) so tests can check that no remote error
text is ever echoed. Every request's ``Authorization`` header is recorded.

Run standalone (used by ``benchmarks/remote_freshness.py``)::

    python -m tests.fake_runtime --runtimes 200 --workers 2 [--token-file PATH]

serves runtime ``i`` at ``http://127.0.0.1:<port i>/rt-<i>`` (each on its own port, like
separate runtime processes; every port serves every prefix) and prints ``READY <port 0>
<port 1> ...``. Control routes ``PUT|DELETE /_control/<prefix>/workers/<worker_id>`` add or
remove a worker.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from tests.fake_subscription import FakeSubscriptions
from tests.toml_text import toml_value

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

ROUTES: Final = frozenset({"runtime", "workers", "worker", "operation", "subscription"})
TERMINAL: Final = frozenset({"stopped", "cancelled"})
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


@dataclass
class FakeWorker:
    worker_id: str
    status: str = "running"
    display_name: str | None = None
    intent: dict[str, Any] = field(default_factory=lambda: {"kind": "assistant"})
    profile: dict[str, Any] = field(default_factory=lambda: {"kind": "runtime_default"})
    transcript: list[dict[str, str]] = field(default_factory=list)
    last_event_id: int = 0


@dataclass
class FakeRuntime:
    """One runtime's state and switches. Mutate it freely from the test."""

    runtime_id: str
    token: str | None = None
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

    def summary(self) -> dict[str, Any]:
        statuses = [w.status for w in self.workers.values()]
        body: dict[str, Any] = {
            "runtime_id": self.runtime_id,
            "backend": "memory",
            "status": self.status,
            "worker_count": len(statuses),
            "active_worker_count": sum(s not in TERMINAL for s in statuses),
            "stopped_worker_count": statuses.count("stopped"),
            "cancelled_worker_count": statuses.count("cancelled"),
            "diagnostic_count": 0,
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
        if runtime.token is not None and auth != f"Bearer {runtime.token}".encode():
            return _error(401, "unauthorized", runtime.error_message)
        if runtime.fault is not None and (
            runtime.fault_routes is None or route in runtime.fault_routes
        ):
            faulty = await self._fault(runtime)
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
        if method == "PUT":
            runtime.add(worker_id)
        elif method == "DELETE":
            runtime.workers.pop(worker_id, None)
        else:
            return _error(405, "method_not_allowed", "PUT or DELETE")
        return _ok({"ok": True})


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


# -- standalone mode (benchmarks) ---------------------------------------------------------


def runtime_prefix(index: int) -> str:
    return f"/rt-{index:03d}"


async def _serve_standalone(runtimes: int, workers: int, token: str | None) -> None:
    server = FakeServer()
    for i in range(runtimes):
        runtime = FakeRuntime(runtime_id=f"bench-{i:03d}", token=token)
        runtime.add(*(f"w-{j}" for j in range(workers)))
        runtime.requests = _Discard()
        runtime.auth_headers = _Discard()
        server.app.mount(runtime_prefix(i), runtime)
    async with trio.open_nursery() as nursery:
        await server.start(nursery, listeners=runtimes)
        print("READY", *server.ports, flush=True)


class _Discard(list[Any]):
    """A list that keeps nothing (long benchmark runs must not grow memory)."""

    def append(self, item: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="serve fake yoi worker-runtimes")
    parser.add_argument("--runtimes", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--token-file", help="require the bearer token held in this file")
    args = parser.parse_args(argv)
    token = None
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    try:
        trio.run(_serve_standalone, args.runtimes, args.workers, token)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
