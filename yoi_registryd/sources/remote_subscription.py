"""Following a current yoi runtime's event subscription instead of polling it.

A runtime of August 2026 or later serves ``GET /v1/protocol/ws`` (contract v2 section 5): a
WebSocket on which one ``subscribe_events`` request with the ``runtime_workers`` selector
answers with a snapshot of every worker in the caller's scope, then one event per upsert or
removal of a worker, in order. The protocol has no heartbeat, no close code and no resume,
so this module brings its own:

- a WebSocket ping every ``ping_interval`` that must be answered within ``timeout``: a dead
  peer or a half-open connection ends the session instead of leaving the registry silently
  behind (each answer also tells the registry the runtime is still there);
- per-worker ``subject_revision``: an event at or below the last revision seen for its worker
  is a duplicate and is dropped, one that skips a revision is a gap and ends the session;
- bounded messages (``max_response_bytes``) and a bounded receive queue.

Every end of a session (drop, gap, ``subscription_closed``, protocol error, silence) raises
:class:`SubscriptionEnded`: the supervisor restarts the source with its backoff (exponential,
full jitter), and the next session starts from a fresh snapshot that replaces the runtime's
workers wholesale, so nothing lost meanwhile stays lost and nothing is counted twice. A
runtime restart resets every revision to 0; that, too, is only ever seen through a new
connection and so a new snapshot.
"""

from __future__ import annotations

import itertools
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Generic, Literal, TypeVar

import msgspec
import trio
import trio_websocket

from yoi_registryd.clock import utcnow
from yoi_registryd.ids import is_valid_identifier
from yoi_registryd.json_depth import TooDeep, decode_bounded
from yoi_registryd.model import Diagnostic, WorkerRecord
from yoi_registryd.sources.base import Reporter, SourceError
from yoi_registryd.sources.remote_projection import (
    STATUS_UNRECOGNISED,
    MalformedAnswer,
    Projector,
    RemoteRuntimeSummary,
    RemoteView,
    WorkerFields,
    decode_runtime,
    valid_status,
)

log = logging.getLogger(__name__)

SUBSCRIPTION_PATH: Final = "/v1/protocol/ws"
PROTOCOL_VERSION: Final = 1
MAX_TOMBSTONES: Final = 10_000
"""Revisions of removed workers kept per session; past this the session starts afresh."""
_QUEUE: Final = 32
"""Messages trio-websocket buffers before the runtime's own queue takes the backpressure."""

# Typed, safe codes of a session's end (served as the source's last crash).
DROPPED: Final = "remote_subscription_dropped"
GAP: Final = "remote_subscription_gap"
CLOSED: Final = "remote_subscription_closed"
UNRESPONSIVE: Final = "remote_subscription_unresponsive"
PROTOCOL_ERROR: Final = "remote_subscription_protocol_error"
REJECTED: Final = "remote_subscription_rejected"
RESYNC: Final = "remote_subscription_resync"


class SubscriptionEnded(SourceError):
    """A subscription session ended; the next one starts from a fresh snapshot."""


class SubscriptionUnavailable(Exception):
    """The runtime does not serve the subscription (404 on the upgrade, or refused the
    selector as unsupported): follow it by polling."""


class HandshakeRefused(Exception):
    """The upgrade was answered with an HTTP status other than 101 or 404."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


# -- wire frames (contract v2 section 5.2-5.4; unknown fields are ignored) ---------------


class RuntimeWorkersSelector(msgspec.Struct, tag_field="topic", tag="runtime_workers"):
    """Every worker in the credential's workspace."""


class SubscribeParams(msgspec.Struct):
    request_id: str
    selector: RuntimeWorkersSelector


class SubscribeEvents(msgspec.Struct, tag_field="method", tag="subscribe_events"):
    params: SubscribeParams


class RequestFrame(msgspec.Struct, tag_field="frame", tag="request"):
    message: SubscribeEvents
    protocol_version: int = PROTOCOL_VERSION


class SubscriptionWorker(msgspec.Struct, frozen=True):
    """A worker as the subscription describes it (``SubscriptionWorker``)."""

    worker_id: str
    subject_revision: int
    state: str
    has_running_internal_workers: bool = False
    workspace_id: str | None = None
    display_name: str | None = None
    profile: str | None = None


class WorkersSnapshotData(msgspec.Struct):
    workers: list[msgspec.Raw]


class WorkersSnapshot(msgspec.Struct):
    topic: Literal["workers"]
    data: WorkersSnapshotData


P = TypeVar("P")


class _Result(msgspec.Struct, Generic[P], tag_field="result"):
    """A response's message: ``result`` names it, ``payload`` carries it."""

    payload: P


class _Event(msgspec.Struct, Generic[P], tag_field="event"):
    """An event frame's message, or an event's payload: ``event`` names it, ``data``
    carries it."""

    data: P


class SubscribedPayload(msgspec.Struct):
    request_id: str
    subscription_id: str
    snapshot_revision: int
    snapshot: WorkersSnapshot


class RejectedPayload(msgspec.Struct):
    request_id: str
    code: str
    subscription_id: str | None = None


class UnsubscribedPayload(msgspec.Struct):
    request_id: str
    subscription_id: str


class Subscribed(_Result[SubscribedPayload], tag="subscribed"):
    """The subscription is open: its id, and the snapshot its events follow."""


class SubscriptionRejected(_Result[RejectedPayload], tag="subscription_rejected"):
    """The runtime refused the subscription: ``code`` says why (an unsupported protocol
    version or selector sends the source back to polling)."""


class Unsubscribed(_Result[UnsubscribedPayload], tag="unsubscribed"):
    """An answer to an unsubscribe request, which a session never sends: ignored."""


class ResponseFrame(msgspec.Struct, tag_field="frame", tag="response"):
    protocol_version: int
    message: Subscribed | SubscriptionRejected | Unsubscribed


class UpsertedData(msgspec.Struct):
    worker: msgspec.Raw


class RemovedData(msgspec.Struct):
    worker_id: str


class WorkerUpserted(_Event[UpsertedData], tag="worker_upserted"):
    """A worker appeared or changed; its summary is decoded on its own, so one bad worker
    does not cost the session."""


class WorkerRemoved(_Event[RemovedData], tag="worker_removed"):
    """A worker is gone."""


class EventData(msgspec.Struct):
    subscription_id: str
    subject_revision: int
    payload: WorkerUpserted | WorkerRemoved


class ClosedData(msgspec.Struct):
    subscription_id: str
    code: str


class Event(_Event[EventData], tag="event"):
    """One change of the subscribed topic, at the worker's ``subject_revision``."""


class SubscriptionClosed(_Event[ClosedData], tag="subscription_closed"):
    """The runtime ended the subscription; ``code`` says why (``lagged``...)."""


class EventFrame(msgspec.Struct, tag_field="frame", tag="event"):
    protocol_version: int
    message: Event | SubscriptionClosed


Frame = ResponseFrame | EventFrame

_FRAME_DECODER: Final = msgspec.json.Decoder(Frame)
_WORKER_DECODER: Final = msgspec.json.Decoder(SubscriptionWorker)
_ENCODER: Final = msgspec.json.Encoder()

_CLOSE_CODES: Final = frozenset({"lagged", "resource_gone", "unauthorized", "server_shutdown"})
_UNSUPPORTED: Final = frozenset({"unsupported_protocol_version", "unsupported_selector"})


def subscription_fields(raw: msgspec.Raw) -> WorkerFields | None:
    """One snapshot or event worker, or None when it is not a ``SubscriptionWorker``."""
    worker = _decode_worker(raw)
    if worker is None:
        return None
    return WorkerFields(
        worker.worker_id,
        worker.state,
        worker.display_name,
        None,
        worker.profile,
        worker.workspace_id,
    )


def _decode_worker(raw: msgspec.Raw) -> SubscriptionWorker | None:
    try:
        worker = _WORKER_DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return worker if valid_status(worker.state) else None


class _RuntimeProbe(msgspec.Struct):
    runtime_id: msgspec.Raw | None = None
    limits: msgspec.Raw | None = None


class _ProbeEnvelope(msgspec.Struct):
    runtime: _RuntimeProbe


_PROBE_DECODER: Final = msgspec.json.Decoder(_ProbeEnvelope)


def may_subscribe(runtime_body: bytes) -> bool:
    """Whether a ``GET /v1/runtime`` answer comes from a runtime that may serve the
    subscription (contract v2 section 6.2): one that names its own ``runtime_id`` or
    reports ``limits`` predates it, and is polled."""
    try:
        probe = _PROBE_DECODER.decode(runtime_body).runtime
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return probe.runtime_id is None and probe.limits is None


def websocket_url(base_url: str) -> str:
    """``ws(s)://`` + the runtime's base URL + the subscription path."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + SUBSCRIPTION_PATH
    return "ws://" + base.removeprefix("http://") + SUBSCRIPTION_PATH


_generation = itertools.count(1)


@dataclass(frozen=True, kw_only=True)
class SessionSettings:
    """What a session connects to and reports through, and its bounds: fixed for its life."""

    url: str
    projector: Projector
    reporter: Reporter
    authorization: Callable[[], Awaitable[str | None]]
    """The ``Authorization`` header value for the upgrade (None: none)."""
    fetch_runtime: Callable[[], Awaitable[bytes]]
    """Reads ``GET /v1/runtime`` again, for the runtime's own state (label, stopped), which
    the subscription does not carry: after events arrived, at most once per
    ``summary_interval``."""
    timeout: float
    ping_interval: float
    summary_interval: float
    max_message_bytes: int
    ssl_context: ssl.SSLContext | None = None


class SubscriptionSession:
    """One connection and one subscription: snapshot, then deltas, until it ends."""

    def __init__(self, settings: SessionSettings, runtime_body: bytes) -> None:
        self.settings = settings
        self._runtime_body = runtime_body
        self._request_id = f"registry-{next(_generation)}-1"
        self._subscription_id = ""
        self._revisions: dict[str, int] = {}
        """Last ``subject_revision`` seen per worker id (removed workers included)."""
        self._removed = 0
        self._workers: dict[str, WorkerRecord] = {}
        self._view: RemoteView | None = None
        self._events_since_summary = trio.Event()
        self.runtime_id = settings.projector.runtime_id

    # -- the session ---------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, subscribe and follow; never returns (raises when the session ends)."""
        headers = []
        authorization = await self.settings.authorization()
        if authorization is not None:
            headers.append((b"authorization", authorization.encode("latin-1")))
        try:
            async with trio_websocket.open_websocket_url(
                self.settings.url,
                self.settings.ssl_context if self.settings.url.startswith("wss://") else None,
                extra_headers=headers,
                message_queue_size=_QUEUE,
                max_message_size=self.settings.max_message_bytes,
                connect_timeout=self.settings.timeout,
                disconnect_timeout=self.settings.timeout,
            ) as ws:
                await self._follow(ws)
        except trio_websocket.ConnectionRejected as rejected:
            if rejected.status_code == 404:
                raise SubscriptionUnavailable from None
            raise HandshakeRefused(rejected.status_code) from None
        except trio_websocket.ConnectionClosed as closed:
            reason = closed.reason
            if reason is not None and reason.code == 1009:
                raise self._ended(PROTOCOL_ERROR, "a message exceeded max_response_bytes") from None
            raise self._ended(DROPPED, "the runtime closed the connection") from None
        except trio_websocket.HandshakeError as exc:
            log.debug("remote source %s: subscription: %r", self.runtime_id, exc)
            raise self._ended(DROPPED, "the connection could not be opened") from None

    def _ended(self, code: str, why: str) -> SubscriptionEnded:
        message = f"the subscription to remote runtime {self.runtime_id!r} ended: {why}"
        return SubscriptionEnded(code, message)

    async def _follow(self, ws: trio_websocket.WebSocketConnection) -> None:
        request = RequestFrame(
            SubscribeEvents(SubscribeParams(self._request_id, RuntimeWorkersSelector()))
        )
        await ws.send_message(_ENCODER.encode(request).decode())
        with trio.move_on_after(self.settings.timeout) as deadline:
            subscribed = await self._subscribed(ws)
        if deadline.cancelled_caught:
            raise self._ended(UNRESPONSIVE, "no answer to subscribe_events within the timeout")
        await self._snapshot(subscribed)
        ended: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def until_one_ends(task: Callable[[], Awaitable[None]]) -> None:
                # The first task to end ends the session with its own exception, raised
                # below as itself rather than inside an exception group.
                try:
                    await task()
                except Exception as exc:
                    ended.append(exc)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(until_one_ends, lambda: self._keep_alive(ws))
            nursery.start_soon(until_one_ends, self._refresh_summary)
            nursery.start_soon(until_one_ends, lambda: self._receive(ws))
        raise ended[0]

    async def _receive(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            await self._on_frame(self._decode(await ws.get_message()))

    def _decode(self, message: str | bytes) -> Frame:
        if isinstance(message, bytes):
            raise self._ended(PROTOCOL_ERROR, "a binary message")
        try:
            frame = decode_bounded(_FRAME_DECODER.decode, message.encode())
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise self._ended(PROTOCOL_ERROR, "a message that is not a valid frame") from None
        except TooDeep:
            raise self._ended(PROTOCOL_ERROR, "a message nested too deeply") from None
        if frame.protocol_version != PROTOCOL_VERSION:
            raise self._ended(PROTOCOL_ERROR, "an unknown protocol_version")
        return frame

    async def _subscribed(self, ws: trio_websocket.WebSocketConnection) -> SubscribedPayload:
        while True:
            frame = self._decode(await ws.get_message())
            if not isinstance(frame, ResponseFrame) or isinstance(frame.message, Unsubscribed):
                continue  # nothing else can concern this connection yet
            if frame.message.payload.request_id != self._request_id:
                continue
            if isinstance(frame.message, SubscriptionRejected):
                code = frame.message.payload.code
                if code in _UNSUPPORTED:
                    raise SubscriptionUnavailable
                safe = code if code.isidentifier() and len(code) <= 64 else "unknown"
                raise self._ended(REJECTED, f"the runtime refused it ({safe})")
            return frame.message.payload

    # -- state ---------------------------------------------------------------------------

    async def _snapshot(self, subscribed: SubscribedPayload) -> None:
        """Replace the runtime's workers wholesale with the snapshot's."""
        self._subscription_id = subscribed.subscription_id
        entries = subscribed.snapshot.data.workers
        summary = self._summary(self._runtime_body)
        running = summary.status == "running"
        workers, diagnostics = self.settings.projector.project_entries(
            entries, subscription_fields, running, {}, utcnow()
        )
        for raw in entries:
            worker = _decode_worker(raw)
            if worker is not None and worker.worker_id in workers:
                self._revisions[worker.worker_id] = worker.subject_revision
        self._workers = workers
        view = self.settings.projector.view(summary, workers, diagnostics, "subscription")
        self._view = view
        await self.settings.reporter.observed(
            view.descriptor, view.hosts, tuple(workers.values()), {"": view.diagnostics}
        )
        log.info(
            "remote source %s: subscribed (snapshot revision %d, %d workers)",
            self.runtime_id,
            subscribed.snapshot_revision,
            len(workers),
        )

    def _summary(self, body: bytes) -> RemoteRuntimeSummary:
        try:
            return decode_runtime(body)
        except MalformedAnswer:
            raise self._ended(PROTOCOL_ERROR, "GET /v1/runtime is not a v1 answer") from None

    async def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, ResponseFrame):
            return  # answers to requests this session did not make
        message = frame.message
        if message.data.subscription_id != self._subscription_id:
            raise self._ended(PROTOCOL_ERROR, "an event for an unknown subscription")
        if isinstance(message, SubscriptionClosed):
            code = message.data.code if message.data.code in _CLOSE_CODES else "unknown"
            raise self._ended(CLOSED, f"the runtime closed the subscription ({code})")
        await self._on_event(message.data)

    async def _on_event(self, data: EventData) -> None:
        payload = data.payload
        if isinstance(payload, WorkerUpserted):
            worker = _decode_worker(payload.data.worker)
            if worker is None:
                raise self._ended(PROTOCOL_ERROR, "an upserted worker of the wrong shape")
            worker_id = worker.worker_id
        else:
            worker_id = payload.data.worker_id
        if not is_valid_identifier(worker_id):
            return  # left out, like in the snapshot (which counts them in a diagnostic)
        if not self._fresh(worker_id, data.subject_revision):
            return
        assert self._view is not None, "the snapshot comes first"
        if isinstance(payload, WorkerRemoved):
            self._removed += 1
            if self._removed > MAX_TOMBSTONES:
                raise self._ended(RESYNC, "too many removals to remember; starting afresh")
            if self._workers.pop(worker_id, None) is not None:
                await self.settings.reporter.changed(removals=(worker_id,))
        else:
            fields = subscription_fields(payload.data.worker)
            assert fields is not None  # decoded above
            now: datetime = utcnow()
            previous = self._workers.get(worker_id)
            record = self.settings.projector.record(fields, self._view.running, previous, now)
            if record is not previous:
                self._workers[worker_id] = record
                await self.settings.reporter.changed(upserts=(record,))
        self._events_since_summary.set()

    def _fresh(self, worker_id: str, revision: int) -> bool:
        """False for a duplicate (at or below the last revision seen); raises on a gap."""
        known = self._revisions.get(worker_id)
        if known is not None:
            if revision <= known:
                log.debug(
                    "remote source %s: dropped a duplicate event (revision %d <= %d)",
                    self.runtime_id,
                    revision,
                    known,
                )
                return False
            if revision > known + 1:
                raise self._ended(GAP, "a worker's subject_revision skipped a value")
        self._revisions[worker_id] = revision
        return True

    # -- liveness and the runtime's own state ----------------------------------------------

    async def _keep_alive(self, ws: trio_websocket.WebSocketConnection) -> None:
        """Ping on an interval; an unanswered ping ends the session. Each answer is a
        successful observation (the registry's heartbeat for this runtime)."""
        while True:
            await trio.sleep(self.settings.ping_interval)
            with trio.move_on_after(self.settings.timeout) as deadline:
                await ws.ping()
            if deadline.cancelled_caught:
                raise self._ended(UNRESPONSIVE, "a ping went unanswered within the timeout")
            await self.settings.reporter.succeeded()

    async def _refresh_summary(self) -> None:
        """After events, re-read the runtime's summary (at most once per interval): a
        runtime stopping or renamed shows in its workers' events, not in its own."""
        while True:
            await self._events_since_summary.wait()
            self._events_since_summary = trio.Event()
            try:
                body = await self.settings.fetch_runtime()
            except Exception as exc:
                log.debug("remote source %s: runtime summary: %r", self.runtime_id, exc)
                raise self._ended(DROPPED, "GET /v1/runtime failed") from None
            if body != self._runtime_body:
                self._runtime_body = body
                await self._describe(self._summary(body))
            await trio.sleep(self.settings.summary_interval)

    async def _describe(self, summary: RemoteRuntimeSummary) -> None:
        assert self._view is not None
        old = self._view
        diagnostics = tuple(d for d in old.diagnostics if d.code != STATUS_UNRECOGNISED)
        view = self.settings.projector.view(summary, self._workers, diagnostics, "subscription")
        self._view = view
        upserts: tuple[WorkerRecord, ...] = ()
        if view.running != old.running:
            now = utcnow()
            refreshed = {
                wid: self.settings.projector.with_status(w, w.status, view.running, now)
                for wid, w in self._workers.items()
            }
            self._workers = refreshed
            upserts = tuple(refreshed.values())
        if view.descriptor != old.descriptor or upserts or view.diagnostics != old.diagnostics:
            diags: dict[str, tuple[Diagnostic, ...]] = {"": view.diagnostics}
            await self.settings.reporter.changed(
                upserts=upserts, diagnostics=diags, hosts=view.hosts, runtime=view.descriptor
            )
