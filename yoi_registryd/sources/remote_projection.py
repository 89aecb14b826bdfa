"""Remote worker-runtime v1 answers decoded and projected into registry records.

Decoding is tolerant where contract section 3 asks for it (unknown fields, missing optional
ones) and strict about shape: an answer whose envelope is wrong is malformed as a whole,
while one bad worker entry is left out with a diagnostic so it cannot hide the others.
Nothing remote is copied into a record unchecked: ids are validated, display strings go
through :func:`safe_display`, statuses must be short lowercase tokens, and remote error
text is never read at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, NamedTuple, TypeVar

import msgspec

from yoi_registryd.config import RemoteSourceConfig
from yoi_registryd.ids import REMOTE_HOST_PREFIX, derive_id, is_valid_identifier
from yoi_registryd.messages import RuntimeDescriptor
from yoi_registryd.model import (
    UNKNOWN_PLATFORM,
    Capabilities,
    Diagnostic,
    HostSpec,
    Implementation,
    ObservationMode,
    RegistryWorkspaceScope,
    WorkerCapabilities,
    WorkerRecord,
    WorkspaceInfo,
)
from yoi_registryd.vocabulary import (
    RUNTIME_KINDS,
    TERMINAL_STATUSES,
    WORKSPACE_SCOPES,
    safe_display,
    worker_naming,
    worker_state,
    worker_workspace,
)

RUNTIME_KIND: Final = RUNTIME_KINDS["remote_http"]
HOST_KIND: Final = "remote-worker-runtime-host"
IMPLEMENTATION: Final = Implementation("remote_worker_runtime", "remote worker-runtime Worker")
NOTES: Final[Mapping[ObservationMode, str]] = {
    "polling": (
        "polled over the worker-runtime REST API v1; the endpoint and credentials stay in "
        "the registry's configuration"
    ),
    "subscription": (
        "followed over the runtime's event subscription (GET /v1/protocol/ws); the endpoint "
        "and credentials stay in the registry's configuration"
    ),
}

WORKER_ID_INVALID: Final = "remote_worker_id_invalid"
WORKER_MALFORMED: Final = "remote_worker_malformed"
WORKER_DUPLICATE: Final = "remote_worker_id_duplicate"
STATUS_UNRECOGNISED: Final = "remote_runtime_status_unrecognised"

_STATUS_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAX_WORKSPACES: Final = 1024


def platform_word(value: object) -> str:
    """A runtime's ``os`` or ``arch`` (``std::env::consts`` words such as ``linux``,
    ``x86_64``) if it is a short lowercase token, else ``unknown``: nothing else a runtime
    sends is served."""
    if isinstance(value, str) and _STATUS_RE.fullmatch(value):
        return value
    return UNKNOWN_PLATFORM


class MalformedAnswer(Exception):
    """The answer does not have the worker-runtime v1 shape."""


# -- wire shapes (unknown fields are ignored) -------------------------------------------


class RemoteRuntimeSummary(msgspec.Struct, frozen=True):
    status: str
    display_name: str | None = None
    worker_creation_available: bool = False
    os: object = None
    arch: object = None
    """The runtime host's platform (today's runtimes; absent from older ones): any JSON here,
    served only when it is a short lowercase token (:func:`platform_word`)."""


class _RuntimeEnvelope(msgspec.Struct):
    runtime: RemoteRuntimeSummary


class _WorkersEnvelope(msgspec.Struct):
    workers: list[msgspec.Raw]


class _WorkerRef(msgspec.Struct):
    worker_id: str


class RemoteWorker(msgspec.Struct, frozen=True):
    status: str
    worker_id: str | None = None
    worker_ref: _WorkerRef | None = None
    display_name: str | None = None
    intent: dict[str, object] | None = None
    profile: dict[str, object] | None = None
    workspace_id: str | None = None
    """Current runtimes: the workspace that owns the worker (contract-v2 section 4.3)."""


class RemoteAck(msgspec.Struct, frozen=True):
    status: str
    event_id: str | int | None = None
    transcript_sequence: int | None = None


class _AckEnvelope(msgspec.Struct):
    ack: RemoteAck


_RUNTIME_DECODER: Final = msgspec.json.Decoder(_RuntimeEnvelope)
_WORKERS_DECODER: Final = msgspec.json.Decoder(_WorkersEnvelope)
_WORKER_DECODER: Final = msgspec.json.Decoder(RemoteWorker)
_ACK_DECODER: Final = msgspec.json.Decoder(_AckEnvelope)


_T = TypeVar("_T")


def _decode(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T:
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise MalformedAnswer from None


def decode_runtime(body: bytes) -> RemoteRuntimeSummary:
    summary = _decode(_RUNTIME_DECODER, body).runtime
    if not _STATUS_RE.fullmatch(summary.status):
        raise MalformedAnswer
    return summary


def decode_workers(body: bytes) -> list[msgspec.Raw]:
    return _decode(_WORKERS_DECODER, body).workers


def decode_ack(body: bytes) -> RemoteAck:
    ack = _decode(_ACK_DECODER, body).ack
    if not _STATUS_RE.fullmatch(ack.status):
        raise MalformedAnswer
    return ack


def safe_event_id(value: str | int | None) -> int | None:
    """The ack's event id as yoi serves it, a non-negative integer (u64); else dropped."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64:
        return value
    return None


# -- projection -------------------------------------------------------------------------


_INTENT_LABELS: Final = {"assistant": "purpose", "task": "objective", "role": "role"}
"""The field of each kind of intent that labels it."""


def _role(intent: Mapping[str, object] | None) -> str | None:
    """Upstream's label of a worker intent: assistant purpose, task objective, role name
    (an assistant without a purpose is labelled ``assistant``)."""
    kind = intent.get("kind") if intent else None
    if intent is None or not isinstance(kind, str) or kind not in _INTENT_LABELS:
        return None
    label = safe_display(intent.get(_INTENT_LABELS[kind]))
    return (label or "assistant") if kind == "assistant" else label


def _profile(profile: Mapping[str, object] | None) -> str | None:
    if not profile:
        return None
    kind = profile.get("kind")
    if kind == "runtime_default":
        return "runtime_default"
    if kind in ("builtin", "named"):
        return safe_display(profile.get("value"))
    return None


class WorkerFields(NamedTuple):
    """What the registry keeps of one remote worker, whichever wire shape it came in."""

    worker_id: str
    status: str
    display_name: str | None
    role: str | None
    profile: str | None
    workspace_id: str | None = None
    """The owning workspace, as a current runtime names it (None: it names none)."""


def rest_worker_fields(raw: msgspec.Raw) -> WorkerFields | None:
    """One entry of ``GET /v1/workers``, or None when it is not a v1 worker."""
    try:
        remote = _WORKER_DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    worker_id = remote.worker_id
    if worker_id is None and remote.worker_ref is not None:
        worker_id = remote.worker_ref.worker_id
    if worker_id is None or not _STATUS_RE.fullmatch(remote.status):
        return None
    return WorkerFields(
        worker_id,
        remote.status,
        remote.display_name,
        _role(remote.intent),
        _profile(remote.profile),
        remote.workspace_id,
    )


def valid_status(status: str) -> bool:
    """A status fit to keep: a short lowercase token."""
    return _STATUS_RE.fullmatch(status) is not None


@dataclass(frozen=True, slots=True)
class RemoteView:
    """What one successful poll shows: the runtime and its workers as registry records."""

    running: bool
    descriptor: RuntimeDescriptor
    hosts: tuple[HostSpec, ...]
    workers: Mapping[str, WorkerRecord]
    diagnostics: tuple[Diagnostic, ...]
    """Diagnostics of the runtime itself (registry subject ``""``)."""


class Projector:
    """Turns decoded remote answers into records for one configured remote runtime."""

    def __init__(self, config: RemoteSourceConfig) -> None:
        self.runtime_id = config.runtime_id
        self.host_id = derive_id(REMOTE_HOST_PREFIX, config.runtime_id)
        self.label = config.label
        self.workspace = worker_workspace(
            "remote_http", config.workspaces[0] if len(config.workspaces) == 1 else None
        )
        self._bound = bool(config.workspaces)
        self._workspaces: dict[str, WorkspaceInfo] = {}
        """Per workspace a runtime named: the worker's ``workspace`` (shared, not rebuilt)."""
        self.workspace_scope: RegistryWorkspaceScope = (
            "current_workspace" if config.workspaces else "all_workspaces"
        )

    def worker_capabilities(self, running: bool, status: str) -> WorkerCapabilities:
        """Operations the registry can really route: none unless the runtime runs.

        Stop and cancel stay available on an ended worker (the runtime answers them
        idempotently, so a retried stop is safe); input needs a worker that has not ended.
        """
        return WorkerCapabilities(
            can_stop=running,
            can_cancel=running,
            can_accept_input=running and status not in TERMINAL_STATUSES,
        )

    def worker_workspace(self, named: str | None) -> WorkspaceInfo:
        """A worker's ``workspace``: the configured binding when the source has one; else
        the workspace a current runtime says owns the worker, which then only that
        workspace's callers see (as the runtime itself shows it to that workspace only);
        else visible wherever the runtime is (an older runtime names none)."""
        if self._bound or named is None or not is_valid_identifier(named):
            return self.workspace
        info = self._workspaces.get(named)
        if info is None:
            if len(self._workspaces) >= _MAX_WORKSPACES:
                self._workspaces.clear()
            info = self._workspaces[named] = worker_workspace("remote_http", named)
        return info

    def runtime_capabilities(
        self, running: bool, creation: bool, summary: RemoteRuntimeSummary | None = None
    ) -> Capabilities:
        """What the registry can do with the runtime; its ``os`` and ``arch`` as the runtime
        reports them (``unknown`` when it does not, as yoi says)."""
        return Capabilities(
            can_list_hosts=True,
            can_list_workers=True,
            can_get_worker=True,
            can_spawn_worker=running and creation,
            can_stop_worker=running,
            can_accept_input=running,
            local_pod_inspection="unavailable",
            workspace_scope=WORKSPACE_SCOPES["remote_http"],
            os=platform_word(summary.os) if summary is not None else UNKNOWN_PLATFORM,
            arch=platform_word(summary.arch) if summary is not None else UNKNOWN_PLATFORM,
            can_cancel_worker=running,
            registry_workspace_scope=self.workspace_scope,
        )

    def with_status(
        self, record: WorkerRecord, status: str, running: bool, now: datetime
    ) -> WorkerRecord:
        """``record`` after an acknowledged operation left the worker in ``status``."""
        state = worker_state(status)
        return msgspec.structs.replace(
            record,
            state=state,
            status=state,
            registry_state=status,
            capabilities=self.worker_capabilities(running, status),
            last_seen_at=now,
        )

    def project(
        self,
        runtime_body: bytes,
        workers_body: bytes,
        previous: Mapping[str, WorkerRecord],
        now: datetime,
        mode: ObservationMode = "polling",
    ) -> RemoteView:
        """Project one poll. Raises :class:`MalformedAnswer` when an envelope is wrong.

        A worker whose projection did not change keeps its previous record (and its
        ``last_seen_at``, the time the registry last saw it change), so an unchanged
        runtime yields records equal to the last ones and nothing is sent.
        """
        summary = decode_runtime(runtime_body)
        entries = decode_workers(workers_body)
        running = summary.status == "running"
        workers, diagnostics = self.project_entries(
            entries, rest_worker_fields, running, previous, now
        )
        return self.view(summary, workers, diagnostics, mode)

    def view(
        self,
        summary: RemoteRuntimeSummary,
        workers: Mapping[str, WorkerRecord],
        worker_diagnostics: tuple[Diagnostic, ...],
        mode: ObservationMode,
    ) -> RemoteView:
        """The runtime described by ``summary`` holding ``workers``."""
        running = summary.status == "running"
        diagnostics: list[Diagnostic] = []
        if summary.status not in ("running", "stopped"):
            diagnostics.append(
                Diagnostic(
                    STATUS_UNRECOGNISED,
                    "warning",
                    "the runtime reports a status this registry does not know; "
                    "worker operations are disabled",
                )
            )
        diagnostics.extend(worker_diagnostics)
        capabilities = self.runtime_capabilities(
            running, summary.worker_creation_available, summary
        )
        label = self.label or safe_display(summary.display_name) or self.runtime_id
        descriptor = RuntimeDescriptor(
            label=label,
            kind=RUNTIME_KIND,
            capabilities=capabilities,
            note=NOTES[mode],
            stopped=summary.status == "stopped",
            degraded=bool(diagnostics),
            mode=mode,
        )
        host = HostSpec(
            host_id=self.host_id, label=label, kind=HOST_KIND, capabilities=capabilities
        )
        return RemoteView(running, descriptor, (host,), workers, tuple(diagnostics))

    def project_entries(
        self,
        entries: Iterable[msgspec.Raw],
        fields_of: Callable[[msgspec.Raw], WorkerFields | None],
        running: bool,
        previous: Mapping[str, WorkerRecord],
        now: datetime,
    ) -> tuple[dict[str, WorkerRecord], tuple[Diagnostic, ...]]:
        """Records of the valid entries, and diagnostics counting the ones left out.

        ``fields_of`` reads one entry of the wire shape at hand (REST list, subscription
        snapshot), returning None when it does not have that shape.
        """
        workers: dict[str, WorkerRecord] = {}
        invalid_ids = malformed = duplicates = 0
        for raw in entries:
            fields = fields_of(raw)
            if fields is None:
                malformed += 1
                continue
            worker_id = fields.worker_id
            if not is_valid_identifier(worker_id):
                invalid_ids += 1
                continue
            if worker_id in workers:
                duplicates += 1
                continue
            workers[worker_id] = self.record(fields, running, previous.get(worker_id), now)
        diagnostics: list[Diagnostic] = []
        if invalid_ids:
            diagnostics.append(
                Diagnostic(
                    WORKER_ID_INVALID,
                    "warning",
                    f"{invalid_ids} worker(s) reported by the runtime were left out: "
                    "their worker_id is not a valid id",
                )
            )
        if malformed:
            diagnostics.append(
                Diagnostic(
                    WORKER_MALFORMED,
                    "warning",
                    f"{malformed} worker entr{'y' if malformed == 1 else 'ies'} reported by "
                    "the runtime were left out: they do not have the worker-runtime v1 shape",
                )
            )
        if duplicates:
            diagnostics.append(
                Diagnostic(
                    WORKER_DUPLICATE,
                    "warning",
                    f"the runtime reported {duplicates} worker_id(s) more than once; "
                    "the first entry of each is shown",
                )
            )
        return workers, tuple(diagnostics)

    def record(
        self,
        fields: WorkerFields,
        running: bool,
        previous: WorkerRecord | None,
        now: datetime,
    ) -> WorkerRecord:
        """The registry record of one worker; ``previous`` when nothing changed."""
        requested = safe_display(fields.display_name)
        naming = worker_naming(fields.worker_id, requested, fields.profile, internal=False)
        state = worker_state(fields.status)
        record = WorkerRecord(
            runtime_id=self.runtime_id,
            worker_id=fields.worker_id,
            host_id=self.host_id,
            display_name=naming.display_name,
            label=requested or fields.worker_id,
            role=fields.role,
            profile=fields.profile,
            singleton_key=naming.singleton_key,
            tags=naming.tags,
            workspace=self.worker_workspace(fields.workspace_id),
            state=state,
            status=state,
            last_seen_at=previous.last_seen_at if previous is not None else now,
            implementation=IMPLEMENTATION,
            capabilities=self.worker_capabilities(running, fields.status),
            registry_state=fields.status,
        )
        if previous is None or record == previous:
            return previous if previous is not None else record
        return msgspec.structs.replace(record, last_seen_at=now)
