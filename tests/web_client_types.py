"""The yoi web client's view of our answers, as strict msgspec types (contract-v2 section 1).

Written from the spec's tables, not from our records, so that a change of ours that the
client would not understand fails the contract test (``tests/test_web_client_contract.py``).
Strict where the client is: every field it reads is required, has its type (``str`` never
accepts ``null``), and enumerated strings are limited to yoi's vocabulary. Not strict where
the client is not: unknown fields are allowed (our ``next_cursor``, ``registry_status``...),
so ``forbid_unknown_fields`` is deliberately off.

Where commits differ, the union is required: a field any of the commits A, B or HEAD
serializes (``role`` and ``status`` of A/B, ``resource_key`` and ``tags`` of HEAD, ...) must
be present, and an enumeration accepts every commit's values.

Operation results (section 1.7.2) and the error shape (section 1.8) belong here too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

import msgspec

T = TypeVar("T")

Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_:-]{1,120}$")]
"""Section 1.9: non-empty, at most 120 bytes of ASCII letters, digits, ``-``, ``_``, ``:``."""
Count = Annotated[int, msgspec.Meta(ge=0)]


class Diagnostic(msgspec.Struct):
    code: str
    severity: Literal["info", "warning", "error"]
    message: str


class ListResponse(msgspec.Struct, Generic[T]):
    """Section 1.2: ``workspace_id`` always a string, never null."""

    workspace_id: str
    limit: Count
    items: list[T]
    source: Literal[
        "worker_runtime_registry",
        "backend_worker_registry",
        "runtime_registry",
        "runtime_registry_stopped",
    ]
    diagnostics: list[Diagnostic]


class RuntimeCapabilities(msgspec.Struct):
    """Section 1.12.1, every flag of A, B and HEAD."""

    can_list_hosts: bool
    can_list_workers: bool
    can_get_worker: bool
    can_spawn_worker: bool
    can_stop_worker: bool
    can_accept_input: bool
    can_stream_events: bool
    can_read_bounded_transcript: bool
    has_workspace_fs: bool
    has_shell: bool
    has_git: bool
    supports_worktrees: bool
    supports_backend_internal_tools: bool
    local_pod_inspection: Literal["available", "unavailable", "not_applicable"]
    workspace_scope: Literal[
        "current_workspace", "backend_internal", "remote_runtime_backend_private"
    ]
    max_workers: Count
    os: str
    arch: str


class RuntimeSource(msgspec.Struct):
    kind: Literal["local_compatibility", "embedded_worker_runtime", "remote_http"]
    status: Literal["active", "reserved"]
    identity_authority: Literal["runtime_registry_projection"]
    note: str


class Runtime(msgspec.Struct):
    """Section 1.3."""

    runtime_id: Id
    label: str
    kind: Literal["local_pod", "embedded_worker_runtime", "remote_worker_runtime"]
    status: Literal["available", "running", "stopped", "unavailable", "configured"]
    source: RuntimeSource
    host_ids: list[Id]
    capabilities: RuntimeCapabilities
    diagnostics: list[Diagnostic]


class Host(msgspec.Struct):
    """Section 1.4."""

    runtime_id: Id
    host_id: Id
    label: str
    kind: Literal["local-worker-host", "embedded-worker-runtime-host", "remote-worker-runtime-host"]
    status: Literal["available", "degraded", "configured"]
    observed_at: datetime
    last_seen_at: datetime | None
    capabilities: RuntimeCapabilities
    diagnostics: list[Diagnostic]


class WorkerWorkspace(msgspec.Struct):
    """Section 1.5/1.11: ``identity`` a string at every commit; HEAD's ``workspace_id``."""

    visibility: Literal[
        "current_workspace", "backend_internal", "remote_runtime", "backend_registry"
    ]
    identity: str
    workspace_id: str


class Implementation(msgspec.Struct):
    kind: str
    display_hint: str


class WorkerCapabilities(msgspec.Struct):
    """Section 1.12.2, every flag of A, B and HEAD."""

    can_accept_input: bool
    can_stream_events: bool
    can_stop: bool
    can_spawn_followup: bool
    can_read_bounded_transcript: bool


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
"""Section 1.11: ``state`` at every commit, for every source."""

WorkerStatus = Literal[
    "active:segment",
    "active:pending_segment",
    "metadata_only",
    "active",
    "idle",
    "running",
    "paused",
    "stopped",
    "cancelled",
    "stale",
    "rejected",
    "errored",
    "unconnected",
    "missing",
    "unsupported",
]
"""Section 1.11: A's and B's ``status`` (HEAD removed it; those clients still read it)."""


class Worker(msgspec.Struct):
    """Section 1.5.1: the union of A, B and HEAD."""

    runtime_id: Id
    worker_id: Id
    resource_key: str
    host_id: Id
    display_name: str
    label: str
    role: str | None
    profile: str | None
    singleton_key: str | None
    tags: list[str]
    workspace: WorkerWorkspace
    state: WorkerState
    status: WorkerStatus
    last_seen_at: str | None
    pinned: bool
    retention_state: Literal["normal", "pinned"]
    implementation: Implementation
    capabilities: WorkerCapabilities
    diagnostics: list[Diagnostic]


class WorkerDetail(Worker):
    """Section 1.6: HEAD's detail adds ``updated_at`` (epoch milliseconds, a string)."""

    updated_at: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+$")]


RuntimeList = ListResponse[Runtime]
HostList = ListResponse[Host]
WorkerList = ListResponse[Worker]


# -- operations and errors ------------------------------------------------------------------

OperationState = Literal["accepted", "unsupported", "rejected"]
"""Section 1.2 ``WorkerOperationState``."""


class WorkerInputResult(msgspec.Struct):
    """Section 1.7.2 (TS ``WorkerInputResult``): ``transcript_sequence`` and ``event_id`` are
    integers (u64) when present; the console reads ``state`` and shows ``diagnostics``."""

    state: OperationState
    runtime_id: Id
    worker_id: Id
    diagnostics: list[Diagnostic]
    transcript_sequence: Count | None = None
    event_id: Count | None = None


class WorkerLifecycleResult(msgspec.Struct):
    """Section 1.7.2 ``WorkerLifecycleResult`` (stop, cancel)."""

    state: OperationState
    runtime_id: Id
    worker_id: Id
    diagnostics: list[Diagnostic]
    event_id: Count | None = None


class ErrorBody(msgspec.Struct):
    """Section 1.8.1, B and HEAD: the status's reason phrase, a message, diagnostics."""

    error: str
    message: str
    diagnostics: list[Diagnostic]
