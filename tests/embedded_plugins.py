"""Embedded runtimes for the tests, loaded by the daemon the way an operator's would be.

``ThirdPartyRuntime`` is written against the protocol alone (it does not reuse the built-in
memory runtime): its own subscription mechanism (a trio memory channel), ``stop`` and
``input`` but no ``cancel``, and a switch that holds events back so a test can make the
registry's view lag behind the runtime. The factories below inject faults. Every runtime a
factory builds is recorded in :data:`INSTANCES` under the ``key`` option, so a test can
reach the object living inside the daemon it started.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec
import trio

from tests.toml_text import toml_value
from yoi_registryd.runtimes import (
    InputAck,
    LifecycleAck,
    MemoryRuntime,
    RuntimeChange,
    RuntimeSummary,
    WorkerNotFound,
    WorkerNotRunning,
    WorkerSummary,
)

INSTANCES: dict[str, Any] = {}
ATTEMPTS: dict[str, int] = {}


class ThirdPartyRuntime:
    """A runtime that supports stop and input, not cancel."""

    def __init__(
        self,
        *,
        key: str,
        workers: Iterable[str] = ("alpha", "beta"),
        display_name: str = "Third-party runtime",
    ) -> None:
        self.display_name = display_name
        self._event_id = 0
        self._workers: dict[str, WorkerSummary] = {}
        self._channels: list[trio.MemorySendChannel[RuntimeChange]] = []
        self.hold = False
        """While True, events are kept back (the registry's view lags)."""
        self._held: list[RuntimeChange] = []
        for worker_id in workers:
            self.add(worker_id)
        INSTANCES[key] = self

    def summary(self) -> RuntimeSummary:
        running = sum(1 for w in self._workers.values() if w.status == "running")
        stopped = sum(1 for w in self._workers.values() if w.status == "stopped")
        return RuntimeSummary(
            display_name=self.display_name,
            backend="third_party",
            status="running",
            worker_count=len(self._workers),
            active_worker_count=running,
            stopped_worker_count=stopped,
            cancelled_worker_count=len(self._workers) - running - stopped,
        )

    def workers(self) -> list[WorkerSummary]:
        return list(self._workers.values())

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[trio.MemoryReceiveChannel[RuntimeChange]]:
        send, receive = trio.open_memory_channel[RuntimeChange](math.inf)
        self._channels.append(send)
        try:
            yield receive
        finally:
            self._channels.remove(send)

    # -- changes made by the test --------------------------------------------------------

    def add(self, worker_id: str, display_name: str | None = None) -> WorkerSummary:
        self._event_id += 1
        worker = WorkerSummary(
            worker_id,
            "running",
            display_name=display_name or worker_id.title(),
            last_event_id=self._event_id,
            updated_at=datetime.now(UTC),
        )
        self._workers[worker_id] = worker
        self._emit(RuntimeChange(workers=(worker,)))
        return worker

    def delete(self, worker_id: str) -> None:
        del self._workers[worker_id]
        self._emit(RuntimeChange(removed=(worker_id,)))

    def release(self) -> None:
        self.hold = False
        held, self._held = self._held, []
        for change in held:
            self._emit(change)

    def _emit(self, change: RuntimeChange) -> None:
        if self.hold:
            self._held.append(change)
            return
        for channel in self._channels:
            channel.send_nowait(change)

    def _set(self, worker: WorkerSummary, **changes: Any) -> WorkerSummary:
        self._event_id += 1
        updated = msgspec.structs.replace(worker, last_event_id=self._event_id, **changes)
        self._workers[worker.worker_id] = updated
        self._emit(RuntimeChange(workers=(updated,)))
        return updated

    def _get(self, worker_id: str) -> WorkerSummary:
        try:
            return self._workers[worker_id]
        except KeyError:
            raise WorkerNotFound(worker_id) from None

    # -- operations ----------------------------------------------------------------------

    async def stop(self, worker_id: str, reason: str | None = None) -> LifecycleAck:
        worker = self._get(worker_id)
        if worker.status == "running":
            worker = self._set(worker, status="stopped")
        return LifecycleAck(worker_id, worker.status, worker.last_event_id)

    async def input(self, worker_id: str, kind: str, content: str) -> InputAck:
        worker = self._get(worker_id)
        if worker.status != "running":
            raise WorkerNotRunning(worker_id, worker.status)
        worker = self._set(worker, transcript_len=worker.transcript_len + 1)
        return InputAck(worker_id, worker.status, worker.last_event_id, worker.transcript_len - 1)


class BreakableRuntime(MemoryRuntime):
    """A memory runtime whose subscription raises once, mid-stream, when told to."""

    def __init__(self, *, key: str, **options: Any) -> None:
        super().__init__(**options)
        self.break_next = False
        self.subscriptions = 0
        INSTANCES[key] = self

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[RuntimeChange]]:  # type: ignore[override]
        self.subscriptions += 1
        async with super().subscribe() as subscription:
            yield self._guarded(subscription)

    async def _guarded(self, changes: AsyncIterator[RuntimeChange]) -> AsyncIterator[RuntimeChange]:
        async for change in changes:
            if self.break_next:
                self.break_next = False
                raise ConnectionResetError("the runtime's event stream broke")
            yield change


class FailingTaskRuntime(MemoryRuntime):
    """A runtime with a task of its own that fails on its first run only."""

    def __init__(self, *, key: str, **options: Any) -> None:
        super().__init__(**options)
        self.runs = 0
        INSTANCES[key] = self

    async def run(self) -> None:
        self.runs += 1
        if self.runs == 1:
            raise ValueError("the runtime's timer failed")
        await trio.sleep_forever()


def tracked_memory(*, key: str, secret: str | None = None, **options: Any) -> MemoryRuntime:
    """A built-in memory runtime, recorded for the test. ``secret`` is a canary option."""
    runtime = CountingMemoryRuntime(**options)
    INSTANCES[key] = runtime
    return runtime


class CountingMemoryRuntime(MemoryRuntime):
    """Counts subscriptions: each one after the first is a resynchronisation."""

    subscriptions = 0

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Any]:
        self.subscriptions += 1
        async with super().subscribe() as subscription:
            yield subscription


def flaky_memory(*, key: str, failures: int, secret: str = "") -> MemoryRuntime:
    """Raises (with a canary in the message) on the first ``failures`` calls."""
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] <= failures:
        raise RuntimeError(f"the factory exploded; secret {secret}")
    return tracked_memory(key=key)


def not_a_runtime(**_: Any) -> object:
    return object()


NOT_CALLABLE = 42


def embedded_source_toml(**keys: object) -> str:
    """One ``[[sources]] kind = "embedded"`` table with the given keys (None: omitted)."""
    lines = ["[[sources]]", 'kind = "embedded"']
    lines += [f"{k} = {toml_value(v)}" for k, v in keys.items() if v is not None]
    return "\n".join(lines) + "\n"


FAST_SUPERVISOR = '[supervisor]\nbackoff_initial = "10ms"\nbackoff_max = "50ms"\n'
"""Restart failing sources quickly, so supervision tests take milliseconds."""
