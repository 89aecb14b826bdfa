"""The built-in in-memory worker runtime (yoi's ``memory`` backend, in Python).

It follows the yoi worker-runtime domain model (contract section 3): workers are
``running``, ``stopped`` or ``cancelled``; the first terminal state wins (cancelling a
stopped worker answers ``stopped``); stop and cancel are idempotent and answer the status
that won with the event that recorded it; input appends to the worker's transcript and is
refused once the worker is terminal. Every change is one event with a runtime-wide,
increasing id, published at once to every subscriber.

Each subscriber has a bounded queue. One that falls more than ``subscription_capacity``
events behind loses its queue and gets :class:`SubscriptionOverflow`, so a slow reader
costs bounded memory and learns that it must resynchronise instead of silently missing
changes. Deliveries coalesce: everything queued since the last read arrives as one batch,
the latest summary per worker.

Not thread-safe: call it from the trio thread that runs the daemon (from another thread,
go through ``trio.from_thread``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Final

import msgspec
import trio

from yoi_registryd.runtimes import protocol
from yoi_registryd.runtimes.protocol import (
    LifecycleAck,
    RuntimeSummary,
    WorkerStatus,
    WorkerSummary,
)
from yoi_registryd.vocabulary import TERMINAL_STATUSES

DEFAULT_SUBSCRIPTION_CAPACITY: Final = 4096
DEFAULT_MAX_INPUT_BYTES: Final = 64 * 1024


class TranscriptEntry(msgspec.Struct, frozen=True):
    sequence: int
    kind: protocol.InputKind
    content: str
    event_id: int
    at: datetime


_Event = tuple[WorkerSummary | str | None, RuntimeSummary | None]
"""A queued event: a worker's new summary, or the id of a removed worker, or None; and the
runtime summary when something runtime-wide changed."""


class MemorySubscription:
    """One subscriber's bounded queue; iterate it for coalesced batches."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._queue: deque[_Event] = deque()
        self._overflowed = False
        self._wakeup = trio.Event()

    def _push(self, event: _Event) -> None:
        if self._overflowed:
            return
        if len(self._queue) >= self._capacity:
            self._overflowed = True
            self._queue.clear()
        else:
            self._queue.append(event)
        self._wakeup.set()

    def __aiter__(self) -> MemorySubscription:
        return self

    async def __anext__(self) -> protocol.RuntimeChange:
        if self._queue or self._overflowed:
            await trio.lowlevel.checkpoint()
        while not self._queue and not self._overflowed:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        if self._overflowed:
            raise protocol.SubscriptionOverflow()
        queue, self._queue = self._queue, deque()
        latest: dict[str, WorkerSummary | None] = {}
        runtime: RuntimeSummary | None = None
        for item, summary in queue:
            if isinstance(item, str):
                latest[item] = None
            elif item is not None:
                latest[item.worker_id] = item
            if summary is not None:
                runtime = summary
        return protocol.RuntimeChange(
            workers=tuple(w for w in latest.values() if w is not None),
            removed=tuple(wid for wid, w in latest.items() if w is None),
            runtime=runtime,
        )


class MemoryRuntime:
    """Workers held in memory; every change is published to subscribers as it happens."""

    backend: str = "memory"

    def __init__(
        self,
        *,
        display_name: str | None = "Memory worker runtime",
        subscription_capacity: int = DEFAULT_SUBSCRIPTION_CAPACITY,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
    ) -> None:
        if subscription_capacity < 1:
            raise ValueError("subscription_capacity must be at least 1")
        self.display_name = display_name
        self.subscription_capacity = subscription_capacity
        self.max_input_bytes = max_input_bytes
        self.stopped = False
        self._workers: dict[str, WorkerSummary] = {}
        self._transcripts: dict[str, list[TranscriptEntry]] = {}
        """Only for workers that took input: most never do, and a runtime may hold many."""
        self._counts: dict[WorkerStatus, int] = {"running": 0, "stopped": 0, "cancelled": 0}
        self._subscribers: set[MemorySubscription] = set()
        self._last_event_id = 0
        self._next_worker = 1

    # -- reading ---------------------------------------------------------------------------

    def summary(self) -> RuntimeSummary:
        return RuntimeSummary(
            display_name=self.display_name,
            backend=self.backend,
            status="stopped" if self.stopped else "running",
            worker_count=len(self._workers),
            active_worker_count=self._counts["running"],
            stopped_worker_count=self._counts["stopped"],
            cancelled_worker_count=self._counts["cancelled"],
        )

    def workers(self) -> Iterable[WorkerSummary]:
        return tuple(self._workers.values())

    def worker(self, worker_id: str) -> WorkerSummary:
        try:
            return self._workers[worker_id]
        except KeyError:
            raise protocol.WorkerNotFound(worker_id) from None

    def transcript(
        self, worker_id: str, start: int = 0, limit: int = 100
    ) -> tuple[TranscriptEntry, ...]:
        """A bounded window of the worker's transcript."""
        self.worker(worker_id)
        return tuple(self._transcripts.get(worker_id, ())[start : start + max(limit, 0)])

    @property
    def last_event_id(self) -> int:
        return self._last_event_id

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[MemorySubscription]:
        subscription = MemorySubscription(self.subscription_capacity)
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    # -- changing --------------------------------------------------------------------------

    def spawn(
        self,
        worker_id: str | None = None,
        *,
        display_name: str | None = None,
        intent: protocol.Intent | None = None,
        profile: protocol.Profile | None = None,
    ) -> WorkerSummary:
        """Create a running worker (with a generated id when none is given)."""
        if self.stopped:
            raise protocol.RuntimeStopped()
        if worker_id is None:
            while f"worker-{self._next_worker}" in self._workers:
                self._next_worker += 1
            worker_id = f"worker-{self._next_worker}"
            self._next_worker += 1
        elif worker_id in self._workers:
            raise protocol.EmbeddedRuntimeError(f"worker {worker_id!r} already exists")
        summary = WorkerSummary(
            worker_id=worker_id,
            status="running",
            display_name=display_name,
            intent=intent or protocol.Intent(),
            profile=profile or protocol.Profile(),
            last_event_id=self._next_event_id(),
            updated_at=datetime.now(UTC),
        )
        self._counts["running"] += 1
        self._store(summary)
        return summary

    def remove(self, worker_id: str) -> None:
        """Forget a terminal worker (as upstream, a running worker must be stopped first)."""
        worker = self.worker(worker_id)
        if worker.status not in TERMINAL_STATUSES:
            raise protocol.EmbeddedRuntimeError(f"worker {worker_id!r} is running; stop it first")
        del self._workers[worker_id]
        self._transcripts.pop(worker_id, None)
        self._counts[worker.status] -= 1
        self._next_event_id()
        self._publish(worker_id)

    def rename(self, worker_id: str, display_name: str | None) -> WorkerSummary:
        """Change a worker's display name (not its identity)."""
        return self._update(self.worker(worker_id), display_name=display_name)

    def stop_runtime(self) -> None:
        """Stop the runtime: running workers become ``stopped``; data stays readable."""
        if self.stopped:
            return
        self.stopped = True
        running = [w for w in self._workers.values() if w.status == "running"]
        for worker in running:
            self._transition(worker, "stopped")
        self._next_event_id()
        self._publish(None, runtime_changed=True)

    async def stop(self, worker_id: str, reason: str | None = None) -> LifecycleAck:
        return self._terminate(worker_id, "stopped")

    async def cancel(self, worker_id: str, reason: str | None = None) -> LifecycleAck:
        return self._terminate(worker_id, "cancelled")

    async def input(
        self, worker_id: str, kind: protocol.InputKind, content: str
    ) -> protocol.InputAck:
        worker = self.worker(worker_id)
        if worker.status != "running":
            raise protocol.WorkerNotRunning(worker_id, worker.status)
        if not content.strip():
            raise protocol.InputRejected("input content is empty")
        if len(content.encode("utf-8")) > self.max_input_bytes:
            raise protocol.InputRejected("input content is too long")
        transcript = self._transcripts.setdefault(worker_id, [])
        sequence = len(transcript)
        now = datetime.now(UTC)
        updated = self._update(worker, transcript_len=sequence + 1, updated_at=now)
        transcript.append(TranscriptEntry(sequence, kind, content, updated.last_event_id, now))
        return protocol.InputAck(worker_id, updated.status, updated.last_event_id, sequence)

    # -- internals -------------------------------------------------------------------------

    def _terminate(self, worker_id: str, status: WorkerStatus) -> LifecycleAck:
        worker = self.worker(worker_id)
        if worker.status in TERMINAL_STATUSES:
            # The first terminal state wins; repeating is answered, not an error.
            return LifecycleAck(worker_id, worker.status, worker.last_event_id)
        updated = self._transition(worker, status)
        return LifecycleAck(worker_id, updated.status, updated.last_event_id)

    def _transition(self, worker: WorkerSummary, status: WorkerStatus) -> WorkerSummary:
        self._counts[worker.status] -= 1
        self._counts[status] += 1
        return self._update(worker, status=status)

    def _update(self, worker: WorkerSummary, **changes: object) -> WorkerSummary:
        changes.setdefault("updated_at", datetime.now(UTC))
        updated = msgspec.structs.replace(worker, last_event_id=self._next_event_id(), **changes)
        self._store(updated)
        return updated

    def _store(self, summary: WorkerSummary) -> None:
        self._workers[summary.worker_id] = summary
        self._publish(summary)

    def _next_event_id(self) -> int:
        self._last_event_id += 1
        return self._last_event_id

    def _publish(self, worker: WorkerSummary | str | None, runtime_changed: bool = False) -> None:
        """Queue a change for every subscriber: a worker's summary or a removed id, with the
        runtime summary only when something runtime-wide changed (counts are read on demand)."""
        item: _Event = (worker, self.summary() if runtime_changed else None)
        for subscription in self._subscribers:
            subscription._push(item)
