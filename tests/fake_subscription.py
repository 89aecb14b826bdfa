"""The fake runtime's event subscription: ``GET /v1/protocol/ws`` (contract v2 section 5).

Served as an ASGI WebSocket by the same hypercorn server as the fake's REST routes, so the
daemon meets it over a real socket with a real RFC 6455 upgrade. It speaks the runtime's
frames: ``subscribe_events`` with the ``runtime_workers`` selector answered by ``subscribed``
with a snapshot, then ``worker_upserted`` / ``worker_removed`` events carrying per-worker
``subject_revision``s, in order; ``subscription_closed`` ``lagged`` when a subscriber's queue
(256, like the runtime's) overflows. Like the runtime it sends no pings (hypercorn answers
the client's) and no close code of its own.

A test changes the runtime through :class:`FakeSubscriptions` so that every change is also
published, and can make the faults the registry must survive:

- :meth:`~FakeSubscriptions.drop`: every connection ends (no snapshot of what follows);
- :meth:`~FakeSubscriptions.skip`: a worker's revision moves on unpublished (a gap);
- :meth:`~FakeSubscriptions.restart`: connections end and every revision restarts from 0;
- :meth:`~FakeSubscriptions.lag`: ``subscription_closed`` ``lagged`` to every subscriber;
- :meth:`~FakeSubscriptions.replay`: an earlier event is sent again (a duplicate);
- :meth:`~FakeSubscriptions.send_raw`: any message at all (a protocol error);
- ``available = False``: the upgrade is answered 404 (a runtime without the endpoint).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from tests.fake_runtime_auth import AuthRefusal

if TYPE_CHECKING:
    from tests.fake_runtime import FakeRuntime, FakeWorker

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

QUEUE_CAPACITY: Final = 256
PATH: Final = "protocol/ws"


def _frame(lane: str, message: dict[str, Any]) -> str:
    return msgspec.json.encode({"protocol_version": 1, "frame": lane, "message": message}).decode()


@dataclass(eq=False)
class _Connection:
    scope: trio.CancelScope
    workspace: str | None = None
    """Current era: the workspace the credential scopes the connection to (None: all)."""
    outbox: deque[str] = field(default_factory=deque)
    wake: trio.Event = field(default_factory=trio.Event)
    subscription_id: str | None = None
    next_id: int = 1

    def push(self, frame: str) -> bool:
        """Queue a frame; False when the queue is full (the subscriber lags)."""
        if len(self.outbox) >= QUEUE_CAPACITY:
            return False
        self.outbox.append(frame)
        self.wake.set()
        return True


class FakeSubscriptions:
    """The subscription side of one :class:`~tests.fake_runtime.FakeRuntime`."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime
        self.available = True
        """False: the upgrade is answered 404, as by a runtime without the endpoint."""
        self.refuse: int | None = None
        """An HTTP status (401, 403) to answer every upgrade with, as an error."""
        self.revision = 0
        """The runtime-wide ``subscription_revision`` (a snapshot's ``snapshot_revision``)."""
        self.subject: dict[str, int] = {}
        """Per-worker ``subject_revision``; 0 for a worker unchanged since (re)start."""
        self.connections: set[_Connection] = set()
        self.handshakes = 0
        self.subscribed = 0
        """``subscribe_events`` requests answered with a snapshot."""
        self._events: deque[str] = deque(maxlen=16)
        """The last events published (for :meth:`replay`)."""

    # -- changes (each one published) --------------------------------------------------

    def upsert(self, worker: FakeWorker | str, **changes: Any) -> FakeWorker:
        """Create or change a worker (``changes``: its attributes) and publish it."""
        from tests.fake_runtime import FakeWorker

        if isinstance(worker, str):
            worker = self.runtime.workers.get(worker) or FakeWorker(worker)
        for name, value in changes.items():
            setattr(worker, name, value)
        self.runtime.workers[worker.worker_id] = worker
        revision = self._bump(worker.worker_id)
        self._publish(
            worker.worker_id,
            revision,
            {"event": "worker_upserted", "data": {"worker": self.worker_json(worker)}},
        )
        return worker

    def remove(self, worker_id: str) -> None:
        workspace = self.runtime.workspace_of(self.runtime.workers.pop(worker_id))
        revision = self._bump(worker_id)
        self._publish(
            worker_id,
            revision,
            {"event": "worker_removed", "data": {"worker_id": worker_id}},
            workspace,
        )

    def skip(self, worker_id: str) -> None:
        """The worker's revision moves on without an event: its next event shows a gap."""
        self._bump(worker_id)

    # -- faults --------------------------------------------------------------------------

    def drop(self) -> None:
        """End every connection at once (the client sees it close)."""
        for conn in list(self.connections):
            conn.scope.cancel()

    def restart(self) -> None:
        """As a runtime process restarting: connections end, revisions start from 0."""
        self.drop()
        self.revision = 0
        self.subject = dict.fromkeys(self.runtime.workers, 0)

    def lag(self) -> None:
        """Close every subscription as overflowing (``lagged``); connections stay open."""
        for conn in list(self.connections):
            self._close_lagged(conn)

    def replay(self, events_ago: int = 0) -> None:
        """Send an event again, unchanged: the last one, or one ``events_ago`` before it (a
        duplicate, or one late and out of order, that the client must drop)."""
        frame = self._events[-1 - events_ago]
        for conn in self.connections:
            if conn.subscription_id is not None:
                conn.push(frame)

    def send_raw(self, text: str) -> None:
        """Send ``text`` as a message on every connection (a frame of the wrong shape...)."""
        for conn in self.connections:
            conn.push(text)

    # -- wire shapes ---------------------------------------------------------------------

    def worker_json(self, w: FakeWorker) -> dict[str, Any]:
        body: dict[str, Any] = {
            "worker_id": w.worker_id,
            "subject_revision": self.subject.get(w.worker_id, 0),
            "state": w.status,
            "has_running_internal_workers": False,
        }
        if w.display_name is not None:
            body["display_name"] = w.display_name
        profile = w.profile.get("value")
        if isinstance(profile, str):
            body["profile"] = profile
        if self.runtime.era == "current":
            body["workspace_id"] = self.runtime.workspace_of(w)
        return body

    def _in_scope(self, conn: _Connection) -> list[FakeWorker]:
        return [
            w
            for w in self.runtime.workers.values()
            if conn.workspace is None or self.runtime.workspace_of(w) == conn.workspace
        ]

    def _bump(self, worker_id: str) -> int:
        self.revision += 1
        self.subject[worker_id] = self.subject.get(worker_id, 0) + 1
        return self.subject[worker_id]

    def _publish(
        self, worker_id: str, revision: int, payload: dict[str, Any], workspace: str | None = None
    ) -> None:
        """Send an event to every subscriber whose workspace holds the worker (current era;
        ``workspace``: of a worker already removed)."""
        worker = self.runtime.workers.get(worker_id)
        if worker is not None:
            workspace = self.runtime.workspace_of(worker)
        for conn in list(self.connections):
            if conn.subscription_id is None:
                continue
            if conn.workspace is not None and workspace != conn.workspace:
                continue  # another workspace's worker: not in this connection's scope
            frame = _frame(
                "event",
                {
                    "event": "event",
                    "data": {
                        "subscription_id": conn.subscription_id,
                        "subject_revision": revision,
                        "payload": payload,
                    },
                },
            )
            self._events.append(frame)
            if not conn.push(frame):
                self._close_lagged(conn)

    def _close_lagged(self, conn: _Connection) -> None:
        if conn.subscription_id is None:
            return
        closed = {
            "event": "subscription_closed",
            "data": {
                "subscription_id": conn.subscription_id,
                "code": "lagged",
                "message": "Runtime subscription lagged; resubscribe for a fresh snapshot",
            },
        }
        conn.outbox.append(_frame("event", closed))  # past the cap: the last word
        conn.wake.set()
        conn.subscription_id = None

    # -- the endpoint --------------------------------------------------------------------

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One WebSocket connection (ASGI), from the upgrade request to its end."""
        connect = await receive()
        assert connect["type"] == "websocket.connect"
        self.handshakes += 1
        refusal, workspace = self._refusal(scope)
        if refusal is not None:
            status, body = refusal
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"application/json")] if body else [],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
            return
        await send({"type": "websocket.accept"})
        with trio.CancelScope() as cancel:
            conn = _Connection(cancel, workspace)
            self.connections.add(conn)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_loop, conn, send)
                    await self._receive_loop(conn, receive)
                    nursery.cancel_scope.cancel()
            finally:
                self.connections.discard(conn)

    def _refusal(self, scope: Scope) -> tuple[tuple[int, bytes] | None, str | None]:
        """The refusal of an upgrade (status, body), or the connection's workspace."""
        if not self.available:
            return (404, b""), None
        auth = dict(scope["headers"]).get(b"authorization")
        self.runtime.auth_headers.append(auth.decode("latin-1") if auth is not None else None)
        if self.runtime.era == "current" and self.refuse is None:
            # As a current runtime: the handshake needs `workers:list` (contract-v2 5.1).
            try:
                context = self.runtime.authenticate("subscription", auth, "workers:list")
            except AuthRefusal as refused:
                body = {"error": {"code": refused.code, "message": refused.message}}
                return (refused.status, msgspec.json.encode(body)), None
            return None, context.workspace_id
        return self._bearer_refusal(auth), None

    def _bearer_refusal(self, auth: bytes | None) -> tuple[int, bytes] | None:
        token = self.runtime.token
        status = self.refuse
        if status is None and token is not None and auth != f"Bearer {token}".encode():
            status = 401
        if status is not None:
            code = "forbidden" if status == 403 else "unauthorized"
            body = {"error": {"code": code, "message": self.runtime.error_message}}
            return status, msgspec.json.encode(body)
        return None

    async def _send_loop(self, conn: _Connection, send: Send) -> None:
        while True:
            await conn.wake.wait()
            conn.wake = trio.Event()
            while conn.outbox:
                await send({"type": "websocket.send", "text": conn.outbox.popleft()})

    async def _receive_loop(self, conn: _Connection, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                return  # a binary message ends the session, as at the runtime
            try:
                frame = msgspec.json.decode(text)
                request = frame["message"]
                params = request["params"]
                request_id = params["request_id"]
            except (msgspec.DecodeError, KeyError, TypeError):
                return  # not a valid frame: the runtime drops the connection
            if frame.get("frame") != "request":
                return
            if request.get("method") != "subscribe_events":
                continue
            if params.get("selector") != {"topic": "runtime_workers"}:
                conn.push(
                    _frame(
                        "response",
                        {
                            "result": "subscription_rejected",
                            "payload": {
                                "request_id": request_id,
                                "code": "unsupported_selector",
                                "message": "unsupported selector",
                            },
                        },
                    )
                )
                continue
            self._subscribe(conn, request_id)

    def _subscribe(self, conn: _Connection, request_id: str) -> None:
        """Snapshot and live queue in one step: nothing between them is lost."""
        subscription_id = f"runtime-subscription-{conn.next_id}"
        conn.next_id += 1
        workers = [self.worker_json(w) for w in self._in_scope(conn)]
        conn.subscription_id = subscription_id
        self.subscribed += 1
        conn.push(
            _frame(
                "response",
                {
                    "result": "subscribed",
                    "payload": {
                        "request_id": request_id,
                        "subscription_id": subscription_id,
                        "selector": {"topic": "runtime_workers"},
                        "snapshot_revision": self.revision,
                        "snapshot": {"topic": "workers", "data": {"workers": workers}},
                    },
                },
            )
        )
