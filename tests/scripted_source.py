"""A source the test drives, for timing the daemon's reactions exactly.

It implements the real ``Source`` protocol and reports through the real ``Reporter``,
supervisor and registry actor; only *when* it observes is up to the test: each step the test
sends is run against the reporter. Sources with real I/O (local, remote) have their own
tests; these tests are about what the daemon does with what any source reports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import msgspec
import trio

from yoi_registryd.messages import RuntimeDescriptor
from yoi_registryd.model import (
    HostSpec,
    Implementation,
    SourceKind,
    WorkerCapabilities,
    WorkerRecord,
)
from yoi_registryd.sources.base import Reporter, SourceError, SourceSpec
from yoi_registryd.vocabulary import placeholder_capabilities, worker_state, worker_workspace

Step = Callable[[Reporter], Awaitable[None]]
HOST_ID = "scripted-host"


def descriptor(label: str = "Scripted runtime") -> RuntimeDescriptor:
    return RuntimeDescriptor(
        label=label,
        kind="scripted",
        capabilities=msgspec.structs.replace(
            placeholder_capabilities("embedded_worker_runtime"),
            can_list_workers=True,
            can_get_worker=True,
        ),
    )


def worker(runtime_id: str, worker_id: str, state: str = "active") -> WorkerRecord:
    return WorkerRecord(
        runtime_id=runtime_id,
        worker_id=worker_id,
        host_id=HOST_ID,
        display_name=worker_id,
        label=worker_id,
        role=None,
        profile=None,
        workspace=worker_workspace("embedded_worker_runtime", None),
        state=worker_state(state),
        status=state,
        last_seen_at=None,
        implementation=Implementation("scripted", "scripted worker"),
        capabilities=WorkerCapabilities(),
        registry_state=state,
    )


HOSTS = (
    HostSpec(
        host_id=HOST_ID,
        label="Scripted host",
        kind="scripted",
        capabilities=placeholder_capabilities("embedded_worker_runtime"),
    ),
)


class ScriptedSource:
    """Runs the steps the test sends; restarts (new instances) share the same script."""

    source_kind: SourceKind = "embedded_worker_runtime"

    def __init__(self, runtime_id: str, steps: trio.MemoryReceiveChannel[Step]) -> None:
        self.runtime_id = runtime_id
        self._steps = steps

    async def run(self, reporter: Reporter) -> None:
        async for step in self._steps:
            await step(reporter)


class Script:
    """The test's handle on one scripted runtime."""

    def __init__(self, runtime_id: str, label: str = "Scripted runtime") -> None:
        self.runtime_id = runtime_id
        self.label = label
        self._send, self._receive = trio.open_memory_channel[Step](100)

    def spec(self, stale_after: float = 30.0) -> SourceSpec:
        return SourceSpec(
            runtime_id=self.runtime_id,
            source_kind="embedded_worker_runtime",
            label=self.label,
            stale_after=timedelta(seconds=stale_after),
            expire_after=None,
            factory=lambda: ScriptedSource(self.runtime_id, self._receive),
        )

    async def step(self, step: Step) -> None:
        await self._send.send(step)

    async def observe(
        self, *worker_ids: str, state: str = "active", duration: float | None = None
    ) -> None:
        """Report a full snapshot with these workers."""
        workers = tuple(worker(self.runtime_id, w, state) for w in worker_ids)

        async def step(reporter: Reporter) -> None:
            await reporter.observed(descriptor(self.label), HOSTS, workers, duration=duration)

        await self.step(step)

    async def fail(self, code: str, message: str, duration: float | None = None) -> None:
        async def step(reporter: Reporter) -> None:
            await reporter.failed(code, message, duration=duration)

        await self.step(step)

    async def crash(self, code: str, message: str) -> None:
        async def step(reporter: Reporter) -> None:
            raise SourceError(code, message)

        await self.step(step)


class FailingSource:
    """Never observes: reports a failed observation and stops, every time it is started."""

    source_kind: SourceKind = "embedded_worker_runtime"

    def __init__(self, runtime_id: str) -> None:
        self.runtime_id = runtime_id

    async def run(self, reporter: Reporter) -> None:
        await reporter.failed("runtime_unreachable", "the runtime did not answer", duration=0.05)
        raise SourceError("runtime_unreachable", "the runtime did not answer")


def failing_spec(runtime_id: str, stale_after: float) -> SourceSpec:
    return SourceSpec(
        runtime_id=runtime_id,
        source_kind="embedded_worker_runtime",
        label="Unreachable runtime",
        stale_after=timedelta(seconds=stale_after),
        expire_after=None,
        factory=lambda: FailingSource(runtime_id),
    )
