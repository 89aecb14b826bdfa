"""Messages from source tasks and the supervisor to the RegistryActor.

Sources never touch registry state. They report what they observed with these messages over
one bounded trio memory channel; the actor is the only writer. Every message names the
``runtime_id`` it is about, so one broken source can only ever affect its own runtime.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
import trio

from yoi_registryd.model import (
    Capabilities,
    Diagnostic,
    ErrorInfo,
    HostSpec,
    ObservationMode,
    SourceKind,
    SupervisorInfo,
    WorkerRecord,
)


class RuntimeDescriptor(msgspec.Struct, frozen=True):
    """How a source describes its runtime: label, kind, capabilities, self-reported state."""

    label: str | None
    kind: str
    capabilities: Capabilities
    note: str | None = None
    stopped: bool = False
    """The runtime itself reports that it is stopped (shown as status ``stopped``)."""
    degraded: bool = False
    """The observation worked but the runtime is impaired (shown as ``degraded``)."""
    mode: ObservationMode | None = None
    """How the source follows the runtime, for sources that can do it more than one way."""


class SourceRegistered(msgspec.Struct, frozen=True):
    """Sent by the supervisor before a source task first starts."""

    runtime_id: str
    source_kind: SourceKind
    label: str | None
    stale_after: timedelta
    expire_after: timedelta | None = None


class SourceRemoved(msgspec.Struct, frozen=True):
    """The source was removed from the configuration: forget its runtime."""

    runtime_id: str


class SupervisorChanged(msgspec.Struct, frozen=True):
    """The supervisor's view of the source task changed (running, backoff, ...)."""

    runtime_id: str
    supervisor: SupervisorInfo


class RuntimeObserved(msgspec.Struct, frozen=True):
    """A full snapshot of one runtime: replaces its hosts, workers and diagnostics.

    ``diagnostics`` is keyed by subject (``""`` for the runtime itself, otherwise e.g. a
    derived worker id) so that later ``WorkersChanged`` messages can replace one subject's
    diagnostics without resending the others.
    """

    runtime_id: str
    runtime: RuntimeDescriptor
    hosts: tuple[HostSpec, ...]
    workers: tuple[WorkerRecord, ...]
    diagnostics: dict[str, tuple[Diagnostic, ...]] = {}
    duration: float | None = None
    """Seconds the observation took, when the source measured it (for status and metrics)."""


class WorkersChanged(msgspec.Struct, frozen=True):
    """An incremental change: upserted workers, removed worker ids, per-subject diagnostics.

    A subject mapped to ``()`` has its diagnostics cleared. ``hosts`` replaces the host list
    when given. Counts as a successful observation.
    """

    runtime_id: str
    upserts: tuple[WorkerRecord, ...] = ()
    removals: tuple[str, ...] = ()
    diagnostics: dict[str, tuple[Diagnostic, ...]] = {}
    hosts: tuple[HostSpec, ...] | None = None
    runtime: RuntimeDescriptor | None = None
    duration: float | None = None
    """Seconds the observation took, when the source measured it (for status and metrics)."""


class ObservationSucceeded(msgspec.Struct, frozen=True):
    """The source looked and nothing changed: refreshes ``last_seen_at`` only."""

    runtime_id: str
    duration: float | None = None
    """Seconds the observation took, when the source measured it (for status and metrics)."""


class ObservationFailed(msgspec.Struct, frozen=True):
    """The source could not observe its runtime; ``error`` is typed and safe to serve."""

    runtime_id: str
    error: ErrorInfo
    duration: float | None = None
    """Seconds the observation took, when the source measured it (for status and metrics)."""


class LivenessProbe(msgspec.Struct, frozen=True):
    """Not from a source: the actor sets ``answered`` when it reaches this message, proving
    to the watchdog that it still takes messages from its channel."""

    answered: trio.Event


SourceMessage = (
    LivenessProbe
    | SourceRegistered
    | SourceRemoved
    | SupervisorChanged
    | RuntimeObserved
    | WorkersChanged
    | ObservationSucceeded
    | ObservationFailed
)
