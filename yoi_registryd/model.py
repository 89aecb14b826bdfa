"""Registry records: what the registry stores and serves.

These types are the safe projection by construction. None of them has a field that can hold
an endpoint, token, socket path, session id or file path: sources turn what they observe
into these records at the edge, and everything downstream (registry, HTTP, audit) only ever
sees these.

They are also the wire shapes, and those are yoi's (contract-v2 section 1): every field the
yoi web client reads is present, with its type and a value from yoi's vocabulary, so the
backend can hand our answers to its browser client as they are. Where our model says more
than yoi's vocabulary can, yoi's field carries yoi's value and ours has a field of its own,
named ``registry_<field>`` (``status`` / ``registry_status``, ``state`` / ``registry_state``,
``workspace.visibility`` / ``workspace.registry_visibility``, ``workspace_scope`` /
``registry_workspace_scope``); ``yoi_registryd.vocabulary`` maps ours to yoi's. Fields only we
have (``stale``, ``supervisor``, ...) are extra: clients ignore them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

import msgspec

Severity = Literal["info", "warning", "error"]

SourceKind = Literal["local_compatibility", "embedded_worker_runtime", "remote_http"]

ObservationMode = Literal["subscription", "polling"]
"""How a remote source follows its runtime: the runtime's event subscription, or polls."""

RuntimeStatus = Literal["unknown", "available", "degraded", "unavailable", "stale", "stopped"]
"""The registry's status of a runtime (served as ``registry_status``).

``unknown``: never observed since the source started. ``available``: the last observation
succeeded. ``degraded``: it succeeded but the runtime reports problems (warning
diagnostics). ``unavailable``: the last observation failed, or the source is not running.
``stale``: nothing succeeded for longer than the source's ``stale_after``; last known
workers are kept and marked. ``stopped``: the runtime itself says it is stopped.
"""

YoiRuntimeStatus = Literal["available", "running", "stopped", "unavailable", "configured"]
"""A runtime's ``status`` in yoi's vocabulary (contract-v2 section 1.11)."""

YoiHostStatus = Literal["available", "degraded", "configured"]
"""A host's ``status`` in yoi's vocabulary (contract-v2 section 1.11)."""

WorkerState = Literal[
    "active",
    "metadata_only",
    "idle",
    "running",
    "paused",
    "stopped",
    "cancelled",
    "missing",
    "unsupported",
]
"""A worker's ``state`` in yoi's vocabulary: ``active``/``metadata_only`` for local Worker
metadata, the runtime's status for runtime workers, ``unsupported`` for a status yoi has
no word for (the registry's own word is in ``registry_state``)."""

WorkspaceVisibility = Literal[
    "current_workspace", "backend_internal", "remote_runtime", "backend_registry"
]
"""``workspace.visibility`` in yoi's vocabulary: which kind of source shows the worker."""

RegistryVisibility = Literal["workspace", "runtime"]
"""Who the registry shows a worker to (``workspace.registry_visibility``): ``workspace``,
only the workspace named by ``workspace.workspace_id``; ``runtime``, every caller that may
see its runtime."""

WorkspaceScope = Literal["current_workspace", "backend_internal", "remote_runtime_backend_private"]
"""``capabilities.workspace_scope`` in yoi's vocabulary: fixed per kind of source."""

RegistryWorkspaceScope = Literal["current_workspace", "all_workspaces"]
"""``capabilities.registry_workspace_scope``: ``current_workspace`` when the source is bound
to workspaces (``workspaces`` / ``workspace_root`` in its config), else ``all_workspaces``."""

LocalPodInspection = Literal["available", "unavailable", "not_applicable"]

RetentionState = Literal["normal", "pinned"]

SupervisorState = Literal["starting", "running", "backoff", "stopped"]

IDENTITY_AUTHORITY: Final = "runtime_registry_projection"
MAX_WORKERS: Final = 200
"""``capabilities.max_workers``: yoi echoes its list limit there (not a capacity); we serve
the default list limit."""
UNKNOWN_PLATFORM: Final = "unknown"
"""``os`` / ``arch`` of a runtime whose platform is not known (as yoi says of remotes)."""


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


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a runtime or host really offers; true only when the operation is implemented.

    Every field of yoi's ``RuntimeCapabilitySummary`` at every commit the client was written
    against (contract-v2 section 1.12.1), in its order, then ours (``can_cancel_worker``,
    ``registry_workspace_scope``). Upstream's local source wrongly claimed
    ``can_accept_input``; ours does not. The ``has_*`` and ``supports_*`` flags are false:
    the registry offers no workspace filesystem, shell, git, worktrees or backend tools.
    """

    can_list_hosts: bool = False
    can_list_workers: bool = False
    can_get_worker: bool = False
    can_spawn_worker: bool = False
    can_stop_worker: bool = False
    can_accept_input: bool = False
    can_stream_events: bool = False
    can_read_bounded_transcript: bool = False
    has_workspace_fs: bool = False
    has_shell: bool = False
    has_git: bool = False
    supports_worktrees: bool = False
    supports_backend_internal_tools: bool = False
    local_pod_inspection: LocalPodInspection
    workspace_scope: WorkspaceScope
    max_workers: int = MAX_WORKERS
    os: str = UNKNOWN_PLATFORM
    arch: str = UNKNOWN_PLATFORM
    can_cancel_worker: bool = False
    registry_workspace_scope: RegistryWorkspaceScope = "all_workspaces"


class WorkerCapabilities(msgspec.Struct, frozen=True):
    """Per-worker operations: every flag of yoi's ``WorkerCapabilitySummary`` at any commit,
    plus ``can_cancel``."""

    can_accept_input: bool = False
    can_stream_events: bool = False
    can_stop: bool = False
    can_cancel: bool = False
    can_spawn_followup: bool = False
    can_read_bounded_transcript: bool = False


class WorkspaceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Which workspace a worker belongs to, as an opaque id (never its root path).

    ``visibility`` and ``identity`` are yoi's values, fixed per kind of source;
    ``workspace_id`` is the worker's workspace (``""`` when it names none);
    ``registry_visibility`` is who the registry shows it to (see :data:`RegistryVisibility`).
    """

    visibility: WorkspaceVisibility
    identity: str
    workspace_id: str = ""
    registry_visibility: RegistryVisibility


class Implementation(msgspec.Struct, frozen=True):
    kind: str
    display_hint: str


# gc=False: not tracked by the cycle collector. A frozen record of strings, tuples and frozen
# records cannot be part of a cycle, and a registry holds a hundred thousand of them, which
# every full collection would otherwise walk (the docstring is the OpenAPI description).
class WorkerRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One worker, keyed by ``runtime_id + worker_id``. Also its wire shape (yoi's
    ``WorkerSummary``, section 1.5, fields in yoi's order, ours after)."""

    runtime_id: str
    worker_id: str
    resource_key: str = ""
    """yoi's backend-local key (``W-<n>``); the registry assigns none: ``""``."""
    host_id: str
    display_name: str
    label: str
    role: str | None
    profile: str | None
    singleton_key: str | None = None
    tags: tuple[str, ...] = ()
    workspace: WorkspaceInfo
    state: WorkerState
    status: str
    """yoi's older status string: local Worker metadata's ``active:segment``,
    ``active:pending_segment`` or ``metadata_only``; else the same as ``state``."""
    last_seen_at: datetime | None
    pinned: bool = False
    retention_state: RetentionState = "normal"
    implementation: Implementation
    capabilities: WorkerCapabilities
    diagnostics: tuple[Diagnostic, ...] = ()
    registry_state: str
    """The registry's own word for the worker's state: as ``state``, but ``stale`` for a
    local Worker that claims to be active without a liveness hint (or whose metadata is
    too old), and a runtime's status as it reported it when yoi has no word for it."""
    stale: bool = False
    """The record may not say how the worker is now: its runtime is ``stale`` (the record is
    the last one known), or its own ``registry_state`` is ``stale`` (a local Worker that
    claims to be active without a liveness hint, or whose metadata is too old)."""


class WorkerDetail(WorkerRecord, frozen=True, kw_only=True):
    """Wire shape of one worker looked up by id: yoi's ``WorkerSummary`` plus ``updated_at``
    (section 1.6)."""

    updated_at: str
    """``last_seen_at`` as yoi writes its registry timestamps: Unix epoch milliseconds, as
    a decimal string; ``""`` when the registry has no time for the worker."""

    @classmethod
    def of(cls, worker: WorkerRecord) -> WorkerDetail:
        seen = worker.last_seen_at
        updated_at = "" if seen is None else str(int(seen.timestamp() * 1000))
        return cls(**msgspec.structs.asdict(worker), updated_at=updated_at)


class HostSpec(msgspec.Struct, frozen=True):
    """A host as a source reports it; the registry adds status and times."""

    host_id: str
    label: str
    kind: str
    capabilities: Capabilities
    diagnostics: tuple[Diagnostic, ...] = ()


class HostRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Wire shape of a host (yoi's ``HostSummary``, section 1.4)."""

    runtime_id: str
    host_id: str
    label: str
    kind: str
    status: YoiHostStatus
    observed_at: datetime
    """When the registry last observed the host's runtime (or, never observed yet, since
    when it has been trying)."""
    last_seen_at: datetime | None
    capabilities: Capabilities
    diagnostics: tuple[Diagnostic, ...] = ()
    registry_status: RuntimeStatus
    """The registry's status of the host's runtime."""


class SourceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Where a runtime's records come from (upstream's ``RuntimeSourceSummary``)."""

    kind: SourceKind
    status: Literal["active"] = "active"
    identity_authority: str = IDENTITY_AUTHORITY
    note: str


class SupervisorInfo(msgspec.Struct, frozen=True):
    """How the supervisor sees the source task: state, restarts, last crash, next try."""

    state: SupervisorState
    restarts: int = 0
    last_error: ErrorInfo | None = None
    next_attempt_at: datetime | None = None
    backoff_seconds: float | None = None


class RuntimeRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Wire shape of a runtime (yoi's ``RuntimeSummary``, section 1.3) with the registry's
    status bookkeeping."""

    runtime_id: str
    label: str
    kind: str
    status: YoiRuntimeStatus
    source: SourceInfo
    host_ids: tuple[str, ...]
    capabilities: Capabilities
    diagnostics: tuple[Diagnostic, ...]
    registry_status: RuntimeStatus
    worker_count: int
    last_seen_at: datetime | None
    last_transition_at: datetime | None
    last_error: ErrorInfo | None
    consecutive_failures: int
    supervisor: SupervisorInfo
