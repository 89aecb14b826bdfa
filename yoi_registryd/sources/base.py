"""What every source is: a task that observes one runtime and reports through a Reporter."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import trio

from yoi_registryd.config import SourceConfig
from yoi_registryd.messages import (
    ObservationFailed,
    ObservationSucceeded,
    RuntimeDescriptor,
    RuntimeObserved,
    SourceMessage,
    WorkersChanged,
)
from yoi_registryd.model import Diagnostic, ErrorInfo, HostSpec, SourceKind, WorkerRecord

if TYPE_CHECKING:
    from yoi_registryd.operations import OperationRouter, RuntimeOperations


class SourceError(Exception):
    """A source failure whose ``code`` and ``message`` are safe to serve.

    Any other exception escaping a source is served only as its type name; its text (which
    may hold a path or URL) goes to the operator log alone.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Reporter:
    """A source's only way to affect the registry: messages about its own runtime."""

    def __init__(
        self,
        runtime_id: str,
        channel: trio.MemorySendChannel[SourceMessage],
        router: OperationRouter | None = None,
    ) -> None:
        self.runtime_id = runtime_id
        self._channel = channel
        self._router = router

    def operations(self, handler: RuntimeOperations) -> AbstractContextManager[None]:
        """Route worker operations for this runtime to ``handler`` while the block runs."""
        if self._router is None:
            return nullcontext()
        return self._router.register(self.runtime_id, handler)

    async def observed(
        self,
        runtime: RuntimeDescriptor,
        hosts: tuple[HostSpec, ...],
        workers: tuple[WorkerRecord, ...],
        diagnostics: Mapping[str, tuple[Diagnostic, ...]] | None = None,
        *,
        duration: float | None = None,
    ) -> None:
        """Report a full snapshot of the runtime (``duration``: seconds the look took)."""
        await self._channel.send(
            RuntimeObserved(
                self.runtime_id, runtime, hosts, workers, dict(diagnostics or {}), duration
            )
        )

    async def changed(
        self,
        *,
        upserts: tuple[WorkerRecord, ...] = (),
        removals: tuple[str, ...] = (),
        diagnostics: Mapping[str, tuple[Diagnostic, ...]] | None = None,
        hosts: tuple[HostSpec, ...] | None = None,
        runtime: RuntimeDescriptor | None = None,
        duration: float | None = None,
    ) -> None:
        """Report what changed since the last report (also a successful observation).

        Nothing at all is reported as :meth:`succeeded`: every source hands over what it
        compared and this one place tells a change from a heartbeat.
        """
        if not (upserts or removals or diagnostics or hosts is not None or runtime is not None):
            await self.succeeded(duration=duration)
            return
        await self._channel.send(
            WorkersChanged(
                self.runtime_id,
                upserts,
                removals,
                dict(diagnostics or {}),
                hosts,
                runtime,
                duration,
            )
        )

    async def succeeded(self, *, duration: float | None = None) -> None:
        """Report that an observation succeeded and nothing changed."""
        await self._channel.send(ObservationSucceeded(self.runtime_id, duration))

    async def failed(self, code: str, message: str, *, duration: float | None = None) -> None:
        """Report a failed observation with a typed, safe code and message."""
        await self._channel.send(
            ObservationFailed(self.runtime_id, ErrorInfo(code, message), duration)
        )


class Source(Protocol):
    """A runtime source. ``run`` observes forever; raising hands control to the supervisor."""

    runtime_id: str
    source_kind: SourceKind

    async def run(self, reporter: Reporter) -> None: ...


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """Everything the supervisor needs to run one source; ``factory`` builds a fresh one."""

    runtime_id: str
    source_kind: SourceKind
    label: str | None
    stale_after: timedelta
    expire_after: timedelta | None
    factory: Callable[[], Source]
    config: object = None
    """The configuration the source is built from. Compared on reload: a source whose
    configuration changed is restarted."""
    owner: str = "config"
    """Who manages the source: ``config`` (``[[sources]]``, reloads) or
    ``discovery:<name>`` (a ``[[discovery]]`` entry); each changes only its own."""

    @classmethod
    def of(
        cls,
        config: SourceConfig,
        factory: Callable[[], Source],
        *,
        label: str | None,
        expire_after: timedelta | None = None,
    ) -> SourceSpec:
        """The spec of a configured source: what every kind shares taken from ``config``."""
        return cls(
            runtime_id=config.runtime_id,
            source_kind=config.source_kind,
            label=label,
            stale_after=config.stale_after,
            expire_after=expire_after,
            factory=factory,
            config=config,
        )


class SourceClass(Protocol):
    """What a source kind's ``implementation`` (named in its configuration) provides."""

    source_kind: SourceKind

    def spec(self, config: Any) -> SourceSpec:
        """How the supervisor runs the source ``config`` describes."""
        ...
