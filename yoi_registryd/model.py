"""Registry records: what the registry stores and serves.

These types are the safe projection by construction. None of them has a field that can hold
an endpoint, token, socket path, session id or file path: sources turn what they observe
into these records at the edge, and everything downstream (registry, HTTP, audit) only ever
sees these. Field names and shapes follow the backend API of contract section 4.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

Severity = Literal["info", "warning", "error"]

SourceKind = Literal["local_compatibility", "embedded_worker_runtime", "remote_http"]

ObservationMode = Literal["subscription", "polling"]
"""How a remote source follows its runtime: the runtime's event subscription, or polls."""

RuntimeStatus = Literal["unknown", "available", "degraded", "unavailable", "stale", "stopped"]
"""Observed status of a runtime.

``unknown``: never observed since the source started. ``available``: the last observation
succeeded. ``degraded``: it succeeded but the runtime reports problems (warning
diagnostics). ``unavailable``: the last observation failed, or the source is not running.
``stale``: nothing succeeded for longer than the source's ``stale_after``; last known
workers are kept and marked. ``stopped``: the runtime itself says it is stopped.
"""

SupervisorState = Literal["starting", "running", "backoff", "stopped"]

IDENTITY_AUTHORITY = "runtime_registry_projection"


class Diagnostic(msgspec.Struct, frozen=True, omit_defaults=True):
    """A typed, safe note about a runtime, host or worker. Messages never name a path."""

    code: str
    severity: Severity
    message: str
    worker_id: str | None = None


class ErrorInfo(msgspec.Struct, frozen=True):
    """The last error of a source or runtime: a typed code and a message safe to serve."""

    code: str
    message: str


class Capabilities(msgspec.Struct, frozen=True):
    """What a runtime or host really offers; true only when the operation is implemented.

    Field names follow upstream's ``RuntimeCapabilitySummary`` (upstream's local source
    wrongly claimed ``can_accept_input``; ours does not).
    """

    can_list_hosts: bool = False
    can_list_workers: bool = False
    can_get_worker: bool = False
    can_spawn_worker: bool = False
    can_stop_worker: bool = False
    can_cancel_worker: bool = False
    can_accept_input: bool = False
    can_stream_events: bool = False
    can_read_bounded_transcript: bool = False
    workspace_scope: str = "all_workspaces"
    os: str | None = None
    arch: str | None = None


class WorkerCapabilities(msgspec.Struct, frozen=True):
    """Per-worker operations (upstream's ``WorkerCapabilitySummary`` plus cancel)."""

    can_accept_input: bool = False
    can_stream_events: bool = False
    can_stop: bool = False
    can_cancel: bool = False
    can_spawn_followup: bool = False
    can_read_bounded_transcript: bool = False


class WorkspaceInfo(msgspec.Struct, frozen=True):
    """Which workspace a worker belongs to, as an opaque id (never its root path).

    ``visibility`` is ``workspace`` when the worker belongs to exactly the workspace named
    by ``identity``; ``runtime`` when it is visible wherever its runtime is (``identity``
    is then null).
    """

    visibility: Literal["workspace", "runtime"]
    identity: str | None = None


class Implementation(msgspec.Struct, frozen=True):
    kind: str
    display_hint: str | None = None


class WorkerRecord(msgspec.Struct, frozen=True):
    """One worker, keyed by ``runtime_id + worker_id``. Also its wire shape."""

    runtime_id: str
    worker_id: str
    host_id: str
    label: str | None
    role: str | None
    profile: str | None
    workspace: WorkspaceInfo
    state: str
    status: str
    last_seen_at: datetime | None
    implementation: Implementation
    capabilities: WorkerCapabilities
    diagnostics: tuple[Diagnostic, ...] = ()
    stale: bool = False
    """True while the runtime is ``stale``: the record is the last one known."""


class HostSpec(msgspec.Struct, frozen=True):
    """A host as a source reports it; the registry adds status and times."""

    host_id: str
    label: str | None
    kind: str
    capabilities: Capabilities
    diagnostics: tuple[Diagnostic, ...] = ()


class HostRecord(msgspec.Struct, frozen=True):
    """Wire shape of a host (``HostSummary``)."""

    runtime_id: str
    host_id: str
    label: str | None
    kind: str
    status: RuntimeStatus
    observed_at: datetime | None
    last_seen_at: datetime | None
    capabilities: Capabilities
    diagnostics: tuple[Diagnostic, ...] = ()


class SourceInfo(msgspec.Struct, frozen=True):
    """Where a runtime's records come from (upstream's ``RuntimeSourceSummary``)."""

    kind: SourceKind
    status: Literal["active"] = "active"
    identity_authority: str = IDENTITY_AUTHORITY
    note: str | None = None


class SupervisorInfo(msgspec.Struct, frozen=True):
    """How the supervisor sees the source task: state, restarts, last crash, next try."""

    state: SupervisorState
    restarts: int = 0
    last_error: ErrorInfo | None = None
    next_attempt_at: datetime | None = None
    backoff_seconds: float | None = None


class RuntimeRecord(msgspec.Struct, frozen=True):
    """Wire shape of a runtime (``RuntimeSummary``) with its status bookkeeping."""

    runtime_id: str
    label: str | None
    kind: str
    status: RuntimeStatus
    source: SourceInfo
    host_ids: tuple[str, ...]
    capabilities: Capabilities
    diagnostics: tuple[Diagnostic, ...]
    worker_count: int
    last_seen_at: datetime | None
    last_transition_at: datetime | None
    last_error: ErrorInfo | None
    consecutive_failures: int
    supervisor: SupervisorInfo
