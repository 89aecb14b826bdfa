"""yoi's wire vocabulary, and how the registry's richer model maps into it.

The yoi web client knows a fixed set of words for a runtime's or host's status, a worker's
state, its workspace visibility and a runtime's workspace scope (contract-v2 section 1.11,
1.12). The registry knows more (a runtime can be ``stale`` or ``degraded``, a worker bound
to one workspace or visible wherever its runtime is). Every such field is served twice: the
yoi field with the word yoi would use, computed here, and a ``registry_<field>`` with ours
(see ``yoi_registryd.model``). Also here: what yoi derives for display (``display_name``,
``singleton_key``, ``tags``), so every source derives it the same way.
"""

from __future__ import annotations

import platform
import re
from typing import Final, NamedTuple, get_args

from yoi_registryd.model import (
    Capabilities,
    RuntimeStatus,
    SourceKind,
    WorkerState,
    WorkspaceInfo,
    WorkspaceScope,
    WorkspaceVisibility,
    YoiHostStatus,
    YoiRuntimeStatus,
)

RUNTIME_KINDS: Final[dict[SourceKind, str]] = {
    "local_compatibility": "local_pod",
    "embedded_worker_runtime": "embedded_worker_runtime",
    "remote_http": "remote_worker_runtime",
}
"""A runtime's ``kind`` per kind of source (yoi's values)."""

TERMINAL_STATUSES: Final[frozenset[str]] = frozenset({"stopped", "cancelled"})
"""A yoi worker status after which the worker runs, takes input and stops no more."""

_RUNNING: Final = frozenset({"available", "degraded"})
"""Registry statuses in which an observation of the runtime succeeded."""


def runtime_status(source_kind: SourceKind, status: RuntimeStatus) -> YoiRuntimeStatus:
    """A runtime's ``status`` as yoi words it.

    yoi's local runtime is ``available`` whenever it is served; a runtime process (embedded
    or remote) is ``running`` or ``stopped`` by its own account. One that cannot be
    observed is ``unavailable`` (embedded) or ``configured`` (remote: only its configuration
    is known). ``degraded`` counts as observed, ``stale`` as not observed.
    """
    if source_kind == "local_compatibility":
        return "unavailable" if status in ("unknown", "unavailable") else "available"
    if status in _RUNNING:
        return "running"
    if status == "stopped":
        return "stopped"
    return "configured" if source_kind == "remote_http" else "unavailable"


def host_status(source_kind: SourceKind, status: RuntimeStatus) -> YoiHostStatus:
    """A host's ``status`` as yoi words it: a remote host is always ``configured`` (yoi's host
    list never contacts the runtime); a local or embedded one ``available``, or
    ``degraded`` when its runtime is (or cannot be observed)."""
    if source_kind == "remote_http":
        return "configured"
    if status in ("degraded", "unknown", "unavailable"):
        return "degraded"
    return "available"


_WORKER_STATES: Final[frozenset[str]] = frozenset(get_args(WorkerState))


def worker_state(status: str) -> WorkerState:
    """A runtime worker's status as a yoi ``state``: itself when yoi knows the word, else
    ``unsupported`` (the registry keeps the runtime's word in ``registry_state``)."""
    if status in _WORKER_STATES:
        return status  # type: ignore[return-value]
    return "unsupported"


_VISIBILITY: Final[dict[SourceKind, tuple[WorkspaceVisibility, str]]] = {
    "local_compatibility": ("current_workspace", "runtime_workspace"),
    "embedded_worker_runtime": ("backend_internal", "runtime_registry_worker"),
    "remote_http": ("remote_runtime", "runtime_registry_worker"),
}


def worker_workspace(source_kind: SourceKind, workspace_id: str | None) -> WorkspaceInfo:
    """A worker's ``workspace``: yoi's visibility and identity for its kind of source, and
    the registry's: shown to ``workspace_id`` only, or (None) wherever its runtime is."""
    visibility, identity = _VISIBILITY[source_kind]
    return WorkspaceInfo(
        visibility=visibility,
        identity=identity,
        workspace_id=workspace_id or "",
        registry_visibility="workspace" if workspace_id else "runtime",
    )


WORKSPACE_SCOPES: Final[dict[SourceKind, WorkspaceScope]] = {
    "local_compatibility": "current_workspace",
    "embedded_worker_runtime": "backend_internal",
    "remote_http": "remote_runtime_backend_private",
}
"""``capabilities.workspace_scope`` per kind of source (yoi's values)."""


def placeholder_capabilities(source_kind: SourceKind) -> Capabilities:
    """The capabilities of a runtime not observed yet: nothing offered."""
    return Capabilities(
        local_pod_inspection=(
            "unavailable" if source_kind == "local_compatibility" else "not_applicable"
        ),
        workspace_scope=WORKSPACE_SCOPES[source_kind],
    )


# -- display ------------------------------------------------------------------------------


class WorkerNaming(NamedTuple):
    """What yoi derives from a worker's profile and requested name for display."""

    display_name: str
    singleton_key: str | None
    tags: tuple[str, ...]


MEMORY_CONSOLIDATION: Final = "memory-consolidation"
ORCHESTRATOR: Final = "orchestrator"
WORKSPACE_ORCHESTRATOR: Final = "workspace-orchestrator"


def worker_naming(
    worker_id: str, requested: str | None, profile: str | None, *, internal: bool
) -> WorkerNaming:
    """yoi's ``display_name``, ``singleton_key`` and ``tags`` (contract-v2 section 1.10).

    ``requested`` is the worker's own display name (already display-safe), ``profile`` its
    profile label; ``internal`` adds the ``internal`` tag (workers of an embedded runtime).
    """
    first: tuple[str, ...] = ("internal",) if internal else ()
    label = (profile or "").removeprefix("builtin:")
    if label == MEMORY_CONSOLIDATION:
        return WorkerNaming(
            "Memory Consolidation",
            "workspace-memory-consolidation",
            (*first, "memory", "consolidation", "singleton"),
        )
    if label == ORCHESTRATOR and requested == WORKSPACE_ORCHESTRATOR:
        return WorkerNaming(
            "Workspace Orchestrator",
            WORKSPACE_ORCHESTRATOR,
            (*first, "orchestrator", "singleton"),
        )
    tags = (*first, f"profile:{profile}") if profile else first
    if requested:
        return WorkerNaming(requested, None, tags)
    words = (profile or "").replace("_", "-").split("-")
    from_profile = " ".join(w[:1].upper() + w[1:] for w in words if w)
    return WorkerNaming(from_profile or f"Worker {worker_id}", None, tags)


MAX_DISPLAY_CHARS: Final = 80


_UNSAFE_DISPLAY_CHARS: Final = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")
"""``/``, ``\\`` and the C0 and C1 control characters (and DEL)."""


def safe_display(value: object) -> str | None:
    """Display strings: drop control characters, ``/`` and ``\\``; first 80 chars; "" -> None.
    One pass in C (a regular expression): it runs for every name of every worker read."""
    if not isinstance(value, str):
        return None
    return _UNSAFE_DISPLAY_CHARS.sub("", value)[:MAX_DISPLAY_CHARS] or None


def machine_os() -> str:
    """This machine's OS in ``std::env::consts::OS`` spelling, as upstream reports it."""
    return {"darwin": "macos"}.get(platform.system().lower(), platform.system().lower())


def machine_arch() -> str:
    """This machine's architecture in ``std::env::consts::ARCH`` spelling, as upstream's."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
