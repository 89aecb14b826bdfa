"""The remote runtime source: polls a yoi worker-runtime over REST v1, routes operations to it.

A runtime has no event stream over HTTP, so the source polls ``GET /v1/runtime`` and
``GET /v1/workers`` (contract section 3) on its interval, with jitter so that many runtimes
do not poll in lockstep. It reports to the registry only what changed: identical answers
cost a byte comparison and a heartbeat. Failures are reported as typed codes with messages
naming the runtime id only; consecutive failures back off exponentially (capped) and the
first success returns to the normal interval. Staleness and expiry are the registry's job
(the supervisor registers this source with its ``stale_after`` and ``expire_after``).

Worker operations (stop, cancel, input) reach this runtime only, by ``runtime_id +
worker_id``. A successful one updates the registry at once from the runtime's own
acknowledgement instead of waiting for the next poll.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import replace
from functools import partial
from typing import Final

import msgspec
import trio

from yoi_registryd import operations
from yoi_registryd.backoff import Backoff, spread
from yoi_registryd.capability import NO_PERMISSION, WORKERS_INPUT, WORKERS_LIST, WORKERS_STOP
from yoi_registryd.clock import utcnow
from yoi_registryd.config import RemoteSourceConfig
from yoi_registryd.errors import (
    RegistryError,
    RuntimeAuthFailed,
    RuntimeBadResponse,
    RuntimeTimeout,
    RuntimeUnavailable,
    UnknownWorker,
)
from yoi_registryd.model import SourceKind
from yoi_registryd.operations import (
    CancelRequest,
    InputRequest,
    Operation,
    OperationAck,
    StopRequest,
)
from yoi_registryd.sources.base import Reporter, SourceSpec
from yoi_registryd.sources.remote_auth import RemoteCredentials
from yoi_registryd.sources.remote_client import (
    AUTH_FAILED,
    FORBIDDEN,
    HTTP_ERROR,
    KEY_UNAVAILABLE,
    MALFORMED,
    NETWORK_ERROR,
    TIMEOUT,
    TOKEN_UNAVAILABLE,
    UNSUPPORTED,
    WORKER_NOT_FOUND,
    RemoteClient,
    RemoteFailure,
    failure_for_status,
    open_client,
    tls_context,
)
from yoi_registryd.sources.remote_projection import (
    MalformedAnswer,
    Projector,
    RemoteView,
    decode_ack,
    safe_event_id,
)
from yoi_registryd.sources.remote_subscription import (
    HandshakeRefused,
    SessionSettings,
    SubscriptionSession,
    SubscriptionUnavailable,
    may_subscribe,
    websocket_url,
)

log = logging.getLogger(__name__)

# httpcore traces every step of every request (host included) at DEBUG: too much for an
# operator's debug log, and the endpoint is the operator's secret.
logging.getLogger("httpcore").setLevel(logging.INFO)

SUBSCRIPTION_RECHECK: Final = 600.0
"""Seconds between looks whether a polled runtime has come to serve the subscription."""
SUMMARY_EVERY: Final = 5
"""A polled runtime's own summary is read at least every this many polls (and whenever its
workers changed): in between, an unchanged runtime costs one request per poll."""
RUNTIME_PATH: Final = "/v1/runtime"
WORKERS_PATH: Final = "/v1/workers"
_MAX_EPOCH_RETRIES: Final = 3
_PERMISSIONS: Final[dict[Operation, str]] = {
    "stop": WORKERS_STOP,
    "cancel": WORKERS_STOP,
    "input": WORKERS_INPUT,
}
"""The permission each operation's route needs (contract-v2 section 4.1)."""


class RemoteRuntimeSource:
    """Observes one remote runtime; one instance per supervised run."""

    source_kind: SourceKind = RemoteSourceConfig.source_kind

    @classmethod
    def spec(cls, config: RemoteSourceConfig) -> SourceSpec:
        """A fresh source on every (re)start; its workers expire after ``expire_after``."""
        return SourceSpec.of(
            config,
            partial(cls, config),
            label=config.label or config.runtime_id,
            expire_after=config.expire_after,
        )

    def __init__(self, config: RemoteSourceConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.runtime_id = config.runtime_id
        self._projector = Projector(config)
        self._rng = rng or random.Random()
        self._backoff = Backoff(
            config.poll_interval.total_seconds(),
            config.backoff_max.total_seconds(),
            jitter=spread(config.poll_jitter),
            rng=self._rng,
        )
        """The wait between polls: the interval, growing after consecutive failures."""
        self._client: RemoteClient | None = None
        self._credentials = RemoteCredentials(config)
        self._lock = trio.Lock()
        """Serialises applying a poll and applying an operation's acknowledgement."""
        self._reported: RemoteView | None = None
        """What the registry was last told (the base for deltas)."""
        self._bodies: tuple[bytes, bytes] | None = None
        """The raw answers behind ``_reported``: identical answers need no decoding."""
        self._needs_full = True
        self._op_epoch = 0
        """Bumped by every operation: a poll that overlapped one is discarded and redone."""
        self._failures = 0
        self._last_failure: str | None = None
        self._wake = trio.Event()
        self._probe_at = -math.inf if config.subscribe else math.inf
        """When to look (again) whether the runtime serves the subscription."""
        self._polling_logged = False
        self._summary_age = 0
        """Polls since ``GET /v1/runtime`` was last read."""
        self._probed_summary: bytes | None = None
        """The ``GET /v1/runtime`` answer a probe just read: the poll that follows at once
        uses it rather than asking again (a remote source's start costs two requests)."""

    # -- the task ------------------------------------------------------------------------

    async def run(self, reporter: Reporter) -> None:
        config = self.config
        with open_client(
            config.base_url,
            config.timeout.total_seconds(),
            config.max_response_bytes,
            self._credentials,
        ) as client:
            self._client = client
            with reporter.operations(RemoteOperations(self, reporter)):
                log.debug(
                    "remote source %s: base URL %s", self.runtime_id, config.base_url.reveal()
                )
                if not config.subscribe:
                    self._poll_from_now("subscribe = false")
                first = True
                while True:
                    if not self._probe_due() or await self._probe(reporter):
                        await self.poll(reporter)
                    delay = self._next_delay(first)
                    first = False
                    with trio.move_on_after(delay):
                        await self._wake.wait()
                    self._wake = trio.Event()

    def _next_delay(self, first: bool) -> float:
        """The wait before the next poll: a random phase first, then jittered, backing off."""
        if first and not self._failures:
            return self.config.poll_interval.total_seconds() * self._rng.random()
        return self._backoff.delay(max(self._failures - 1, 0))

    # -- subscription --------------------------------------------------------------------

    def _probe_due(self) -> bool:
        return trio.current_time() >= self._probe_at

    async def _probe(self, reporter: Reporter) -> bool:
        """Follow the runtime's subscription if it serves one (contract v2 section 6.2).

        Returns True when the runtime must be polled now (an older runtime, or no
        subscription), False when the probe failed (reported; the loop backs off). A
        subscription, once open, only ends by raising: the supervisor restarts the source
        with its backoff and the next session starts from a fresh snapshot.
        """
        started = trio.current_time()
        try:
            client = await self._ready_client()
            runtime_body = await client.get(RUNTIME_PATH, NO_PERMISSION)
        except RemoteFailure as failure:
            if failure.code == WORKER_NOT_FOUND:
                failure.code = HTTP_ERROR
            await self._failed(reporter, failure, trio.current_time() - started)
            return False
        if not may_subscribe(runtime_body):
            self._poll_from_now("it predates the event subscription")
            self._probed_summary = runtime_body
            return True
        settings = SessionSettings(
            url=websocket_url(self.config.base_url.reveal()),
            projector=self._projector,
            reporter=reporter,
            authorization=self._authorization,
            fetch_runtime=lambda: client.get(RUNTIME_PATH, NO_PERMISSION),
            timeout=self.config.timeout.total_seconds(),
            ping_interval=min(
                self.config.ping_interval.total_seconds(),
                self.config.stale_after.total_seconds() / 3,
            ),
            summary_interval=self.config.poll_interval.total_seconds(),
            max_message_bytes=self.config.max_response_bytes,
            ssl_context=tls_context(),
        )
        session = SubscriptionSession(settings, runtime_body)
        self._reported = None  # the session reports on its own; acks wait for its events
        self._needs_full = True
        try:
            await session.run()
        except SubscriptionUnavailable:
            self._poll_from_now("it does not serve the event subscription")
            return True
        except HandshakeRefused as refused:
            refusal = failure_for_status(refused.status, b"")
            if refusal.code == WORKER_NOT_FOUND:
                refusal.code = HTTP_ERROR
            await self._failed(reporter, refusal, trio.current_time() - started)
            return False
        raise AssertionError("a subscription session ends by raising")

    def _poll_from_now(self, why: str) -> None:
        if self.config.subscribe:
            self._probe_at = trio.current_time() + SUBSCRIPTION_RECHECK
        if not self._polling_logged:
            log.info(
                "remote source %s: polling every %gs: %s",
                self.runtime_id,
                self.config.poll_interval.total_seconds(),
                why,
            )
            self._polling_logged = True

    async def _authorization(self) -> str | None:
        """The ``Authorization`` header value for the subscription's upgrade request: its
        route needs ``workers:list`` (contract-v2 section 5.1)."""
        await self._ready_client()
        authorization = self._credentials.authorization(WORKERS_LIST)
        return None if authorization is None else authorization.reveal()

    # -- polling -------------------------------------------------------------------------

    async def _ready_client(self) -> RemoteClient:
        """The client, with its credentials loaded (again, after the runtime refused them)."""
        client = self._client
        assert client is not None, "run() sets the client"
        await self._credentials.load()
        return client

    async def poll(self, reporter: Reporter) -> bool:
        """Poll once and report; True when the runtime answered validly."""
        for _ in range(_MAX_EPOCH_RETRIES):
            started = trio.current_time()
            epoch = self._op_epoch
            try:
                # The probe's answer is used by the poll right after it, or never.
                probed, self._probed_summary = self._probed_summary, None
                client = await self._ready_client()
                workers_body = await client.get(WORKERS_PATH, WORKERS_LIST)
                runtime_body = probed if probed is not None else self._recent_summary(workers_body)
                if probed is not None or runtime_body is None:
                    self._summary_age = 0
                if runtime_body is None:
                    runtime_body = await client.get(RUNTIME_PATH, NO_PERMISSION)
            except RemoteFailure as failure:
                if failure.code == WORKER_NOT_FOUND:  # a 404 on a runtime-wide route
                    failure.code = HTTP_ERROR
                await self._failed(reporter, failure, trio.current_time() - started)
                return False
            duration = trio.current_time() - started
            async with self._lock:
                if epoch != self._op_epoch:
                    continue  # an operation changed the runtime meanwhile: look again
                try:
                    await self._apply(reporter, runtime_body, workers_body, duration)
                except MalformedAnswer:
                    await self._failed(reporter, RemoteFailure(MALFORMED), duration)
                    return False
            self._recovered(duration)
            return True
        return True  # operations keep landing; their acknowledgements keep the view fresh

    def _recent_summary(self, workers_body: bytes) -> bytes | None:
        """The last ``GET /v1/runtime`` answer, when it need not be read again: the workers
        are unchanged and it was read fewer than ``SUMMARY_EVERY`` polls ago. Cuts the
        requests of an unchanged runtime by 40%; a runtime's own state (stopped, renamed,
        worker creation) shows within ``SUMMARY_EVERY`` polls, or at once with any change
        of its workers."""
        if self._needs_full or self._bodies is None or workers_body != self._bodies[1]:
            return None
        if self._summary_age >= SUMMARY_EVERY - 1:
            return None
        self._summary_age += 1
        return self._bodies[0]

    async def _apply(
        self, reporter: Reporter, runtime_body: bytes, workers_body: bytes, duration: float
    ) -> None:
        bodies = (runtime_body, workers_body)
        if not self._needs_full and bodies == self._bodies:
            await reporter.succeeded(duration=duration)
            return
        previous = self._reported.workers if self._reported is not None else {}
        view = self._projector.project(runtime_body, workers_body, previous, utcnow())
        old = self._reported
        if self._needs_full or old is None:
            # The first look, or the first after failures (the registry may have expired
            # the workers meanwhile): send everything.
            await reporter.observed(
                view.descriptor,
                view.hosts,
                tuple(view.workers.values()),
                {"": view.diagnostics},
                duration=duration,
            )
            self._needs_full = False
        else:
            await reporter.changed(
                upserts=tuple(w for wid, w in view.workers.items() if old.workers.get(wid) != w),
                removals=tuple(wid for wid in old.workers if wid not in view.workers),
                diagnostics={"": view.diagnostics} if view.diagnostics != old.diagnostics else {},
                hosts=view.hosts if view.hosts != old.hosts else None,
                runtime=view.descriptor if view.descriptor != old.descriptor else None,
                duration=duration,
            )
        self._reported = view
        self._bodies = bodies

    async def _failed(self, reporter: Reporter, failure: RemoteFailure, duration: float) -> None:
        self._failures += 1
        self._needs_full = True
        if self.config.subscribe:
            self._probe_at = -math.inf  # back, it may be a newer runtime: look again
        self._bodies = None
        if failure.code in (AUTH_FAILED, FORBIDDEN):
            self._credentials.invalidate()  # re-read them: they may have been rotated
        if failure.code == AUTH_FAILED and failure.reason is None:
            failure.reason = self._credentials.refusal_hint
        message = failure.safe_message(self.runtime_id)
        if failure.code != self._last_failure:
            log.warning("remote source %s: %s [%s]", self.runtime_id, message, failure.code)
        log.debug("remote source %s: %s", self.runtime_id, failure.detail or failure.code)
        self._last_failure = failure.code
        await reporter.failed(failure.code, message, duration=duration)

    def _recovered(self, elapsed: float) -> None:
        if self._failures:
            log.info(
                "remote source %s: answering again after %d failed polls",
                self.runtime_id,
                self._failures,
            )
        self._failures = 0
        self._last_failure = None
        log.debug("remote source %s: polled in %.3fs", self.runtime_id, elapsed)

    # -- operations ----------------------------------------------------------------------

    async def operate(
        self, reporter: Reporter, worker_id: str, operation: Operation, body: bytes
    ) -> OperationAck:
        """Send one operation to the runtime; map every failure to a typed registry error.

        Whatever the outcome, the poll loop is woken to look at the runtime again at once:
        an operation that failed (unreachable, stopped, unknown worker) tells as much about
        the runtime as a poll would, so that poll re-reads the runtime's summary as well.
        """
        try:
            return await self._operate(reporter, worker_id, operation, body)
        finally:
            self._summary_age = SUMMARY_EVERY  # the runtime's own state too (e.g. stopped)
            self._wake.set()

    async def _operate(
        self, reporter: Reporter, worker_id: str, operation: Operation, body: bytes
    ) -> OperationAck:
        try:
            client = await self._ready_client()
            response = await client.post(
                f"/v1/workers/{worker_id}/{operation}", _PERMISSIONS[operation], body
            )
        except RemoteFailure as failure:
            raise self._operation_error(failure, worker_id, operation) from None
        if not 200 <= response.status < 300:
            refused = failure_for_status(response.status, response.body)
            if refused.code in (AUTH_FAILED, FORBIDDEN):
                self._credentials.invalidate()
            elif refused.code == WORKER_NOT_FOUND:
                await self._forget_worker(reporter, worker_id)
            raise self._operation_error(refused, worker_id, operation)
        try:
            ack = decode_ack(response.body)
        except MalformedAnswer:
            self._log_operation_failure(worker_id, operation, MALFORMED)
            raise RuntimeBadResponse(self.runtime_id) from None
        await self._acknowledged(reporter, worker_id, ack.status)
        return OperationAck(
            runtime_id=self.runtime_id,
            worker_id=worker_id,
            operation=operation,
            status=ack.status,
            event_id=safe_event_id(ack.event_id),
            transcript_sequence=ack.transcript_sequence,
        )

    def _operation_error(
        self, failure: RemoteFailure, worker_id: str, operation: Operation
    ) -> RegistryError | operations.OperationRefused:
        """A failed operation as a typed error, or (the runtime declined the operation
        itself: unsupported, stopped, refused, invalid) as a refusal."""
        self._log_operation_failure(worker_id, operation, failure.code, failure.detail)
        rid = self.runtime_id
        code = failure.code
        if code == TIMEOUT:
            return RuntimeTimeout(rid)
        if code in (NETWORK_ERROR, TOKEN_UNAVAILABLE, KEY_UNAVAILABLE):
            retry = max(1, math.ceil(self.config.poll_interval.total_seconds()))
            return RuntimeUnavailable(rid, retry_after=retry)
        if code in (AUTH_FAILED, FORBIDDEN):
            return RuntimeAuthFailed(rid, forbidden=code == FORBIDDEN)
        if code == WORKER_NOT_FOUND:
            return UnknownWorker(rid, worker_id)
        if code == UNSUPPORTED:
            return operations.unsupported(rid, operation)
        if failure.status == 409:
            if failure.remote_code == "runtime_stopped":
                return operations.runtime_stopped(rid)
            if failure.remote_code == operations.WORKER_NOT_RUNNING:
                return operations.worker_not_running(rid, worker_id, operation)
            if failure.remote_code is None:
                return operations.rejected(rid, worker_id, operation)
            return self._refused_as_runtime_says(failure, worker_id, operation)
        if failure.status == 400:
            if failure.remote_code is None:
                return operations.request_rejected(rid, operation)
            return self._refused_as_runtime_says(failure, worker_id, operation)
        return RuntimeBadResponse(rid)

    def _refused_as_runtime_says(
        self, failure: RemoteFailure, worker_id: str, operation: Operation
    ) -> operations.OperationRefused:
        """``rejected`` with the runtime's own code as the diagnostic's code, as yoi's backend
        passes a typed refusal through (contract-v2 section 1.8.3): ``invalid_request`` for
        input to a cancelled worker, ``worker_execution_unavailable`` without an execution
        backend... The code is one of yoi's snake_case tokens (checked when decoded); the
        runtime's message is never read."""
        code = failure.remote_code
        assert code is not None
        return operations.OperationRefused(
            "rejected",
            code,
            f"runtime {self.runtime_id!r} refused {operation!r} for worker {worker_id!r} "
            f"(HTTP {failure.status} {code})",
        )

    def _log_operation_failure(
        self, worker_id: str, operation: str, code: str, detail: str = ""
    ) -> None:
        log.warning(
            "remote source %s: %s of worker %s failed [%s]",
            self.runtime_id,
            operation,
            worker_id,
            code,
        )
        if detail:
            log.debug("remote source %s: %s", self.runtime_id, detail)

    def _after_operation(self, worker_id: str) -> RemoteView | None:
        """Under the lock, after an operation on ``worker_id``: make an overlapping poll
        redo its work and drop the cached bodies; return the reported view to update, or
        None if it does not hold the worker (or a full snapshot is due anyway)."""
        self._op_epoch += 1
        self._bodies = None
        view = self._reported
        if view is None or self._needs_full or worker_id not in view.workers:
            return None
        return view

    async def _acknowledged(self, reporter: Reporter, worker_id: str, status: str) -> None:
        """Show the acknowledged status at once (the next poll confirms the rest)."""
        async with self._lock:
            view = self._after_operation(worker_id)
            if view is None:
                return
            old = view.workers[worker_id]
            new = self._projector.with_status(old, status, view.running, utcnow())
            if new.registry_state == old.registry_state and new.capabilities == old.capabilities:
                return
            self._reported = replace(view, workers={**view.workers, worker_id: new})
            await reporter.changed(upserts=(new,))

    async def _forget_worker(self, reporter: Reporter, worker_id: str) -> None:
        """The runtime says the worker does not exist: drop it now, not at the next poll."""
        async with self._lock:
            view = self._after_operation(worker_id)
            if view is None:
                return
            workers = {k: v for k, v in view.workers.items() if k != worker_id}
            self._reported = replace(view, workers=workers)
            await reporter.changed(removals=(worker_id,))


class RemoteOperations:
    """The :class:`~yoi_registryd.operations.RuntimeOperations` of one remote runtime."""

    def __init__(self, source: RemoteRuntimeSource, reporter: Reporter) -> None:
        self._source = source
        self._reporter = reporter

    async def stop(self, worker_id: str, request: StopRequest) -> OperationAck:
        body = {"reason": request.reason} if request.reason is not None else {}
        return await self._source.operate(
            self._reporter, worker_id, "stop", msgspec.json.encode(body)
        )

    async def cancel(self, worker_id: str, request: CancelRequest) -> OperationAck:
        body = {"reason": request.reason} if request.reason is not None else {}
        return await self._source.operate(
            self._reporter, worker_id, "cancel", msgspec.json.encode(body)
        )

    async def input(self, worker_id: str, request: InputRequest) -> OperationAck:
        body = {"kind": request.kind, "content": request.content}
        return await self._source.operate(
            self._reporter, worker_id, "input", msgspec.json.encode(body)
        )
