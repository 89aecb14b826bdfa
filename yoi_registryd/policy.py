"""The policy hook: may a request run, and what may the acting workspace see.

A :class:`Policy` answers two questions. ``allows`` decides whether a request may run at all
(the security middleware asks it once, before the app, and answers 403 ``forbidden`` when it
says no). ``view`` gives the :class:`Visibility` of a principal: predicates over the records
of a snapshot. The app filters every list through them *before* paging, so counts and
cursors only ever see visible items, and a direct lookup of something that exists but is not
visible raises a ``*NotVisible`` error.

The default policy is workspace visibility: a worker that names its workspace (local Workers
carry the ``workspace_id`` of their metadata, else an opaque id derived from their workspace
root) is visible to that workspace only; a runtime bound to workspaces in the config
(``workspaces = [...]`` on a source) is visible to those only; everything else is visible to
every workspace. A custom policy is named in the
config as ``module:attribute``: a factory called with a :class:`PolicyContext`.

Policies see records and ids, never the config's secrets: :class:`PolicyContext` carries
only workspace ids, digests and runtime ids.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, runtime_checkable

import msgspec

from yoi_registryd.config import Config, ConfigError, import_object
from yoi_registryd.ids import local_host_id, normalize_root, workspace_id_for_root
from yoi_registryd.model import HostRecord, RuntimeRecord, WorkerRecord
from yoi_registryd.workspace_file import read_workspace_identity

MAX_CACHED_VIEWS: Final = 1024
ACCESS_SCOPE_KEY: Final = "yoi_registryd.access"
"""ASGI scope key where the security middleware leaves the request's :class:`RequestAccess`."""

Decision = Literal["allowed", "denied", "filtered"]
"""How a request fared with the policy, as the audit records it. ``denied``: refused by
authentication or policy (401/403), or a lookup of something that is not visible.
``filtered``: answered, with items the policy hid. ``allowed``: everything else."""


class Principal(msgspec.Struct, frozen=True):
    """Who is asking, and for which workspace."""

    client: str | None = None
    """The authenticated client's name; None for an anonymous local caller."""
    workspace: str | None = None
    """The acting workspace (``X-Yoi-Workspace``); None: no workspace was named, which the
    default policy answers with every workspace at once (see docs/security.md)."""


ANONYMOUS: Final = Principal()


class RequestFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What a policy may know about a request before it runs. No path, query or body."""

    principal: Principal
    method: str
    route: str | None
    """The route template, e.g. ``/api/runtimes/<runtime_id>/workers``; None if none."""
    runtime_id: str | None = None
    worker_id: str | None = None
    host_id: str | None = None


@runtime_checkable
class Visibility(Protocol):
    """What one principal may see. Equal ``key`` means equal answers (it keys the caches)."""

    @property
    def key(self) -> Hashable: ...

    @property
    def restricted(self) -> bool:
        """False only when everything is visible: lets the app skip filtering entirely."""
        ...

    def runtime_visible(self, runtime: RuntimeRecord) -> bool: ...

    def host_visible(self, host: HostRecord) -> bool: ...

    def worker_visible(self, worker: WorkerRecord) -> bool: ...


@runtime_checkable
class Policy(Protocol):
    def allows(self, request: RequestFacts) -> bool:
        """May this request run at all? False answers 403 ``forbidden``."""
        ...

    def view(self, principal: Principal) -> Visibility: ...


class SeesAll:
    """The visibility of a principal that may see everything."""

    key: Final = ("all",)
    restricted: Final = False

    def runtime_visible(self, runtime: RuntimeRecord) -> bool:
        return True

    def host_visible(self, host: HostRecord) -> bool:
        return True

    def worker_visible(self, worker: WorkerRecord) -> bool:
        return True


SEES_ALL: Final = SeesAll()


@dataclass(frozen=True)
class PolicyContext:
    """What a policy is built from: ids and digests from the config, no secrets."""

    workspace_identities: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Configured workspace id -> every id its workers and hosts may carry: the id itself,
    the opaque id of its root (``ws-`` + digest), as local Workers report it, and yoi's id
    of the workspace in ``<root>/.yoi/workspace.toml`` (read when the configuration is
    loaded), from which its local host's id is derived."""
    runtime_bindings: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Runtime id -> the workspace ids it is bound to; unbound runtimes are absent."""
    local_runtime_ids: frozenset[str] = frozenset()
    """Runtimes of local sources, whose hosts are one per workspace."""
    options: Mapping[str, str] = field(default_factory=dict)
    """``[policy] options``, for a custom policy."""

    @classmethod
    def from_config(cls, config: Config) -> PolicyContext:
        identities: dict[str, frozenset[str]] = {}
        for ws in config.workspaces:
            ids = {ws.id}
            if ws.root is not None:
                ids |= _root_identities(ws.root)
            identities[ws.id] = frozenset(ids)
        bindings: dict[str, frozenset[str]] = {}
        local: set[str] = set()
        for src in config.sources:
            if src.hosts_per_workspace:
                local.add(src.runtime_id)
            bound = set(src.bound_workspaces())
            if (root := src.bound_root()) is not None:
                bound |= _root_identities(root)
            if bound:
                bindings[src.runtime_id] = bindings.get(src.runtime_id, frozenset()) | bound
        return cls(identities, bindings, frozenset(local), dict(config.policy.options))

    def identities_of(self, workspace: str) -> frozenset[str]:
        """Every id that names ``workspace``: itself, and its root's opaque id if configured."""
        return self.workspace_identities.get(workspace, frozenset({workspace}))


def _root_identities(root: str) -> frozenset[str]:
    """The ids a workspace root goes by: its opaque id, and yoi's id when its identity file
    gives one (a local host's id derives from that)."""
    normalized = normalize_root(root)
    ids = {workspace_id_for_root(normalized)}
    yoi_id = read_workspace_identity(normalized).workspace_id
    if yoi_id is not None:
        ids.add(yoi_id)
    return frozenset(ids)


class WorkspaceView:
    """The default policy's view for one acting workspace."""

    __slots__ = ("_bindings", "_identities", "_local_hosts", "_local_runtimes", "key")

    restricted: Final = True

    def __init__(self, workspace: str, context: PolicyContext) -> None:
        self.key = ("workspace", workspace)
        self._identities = context.identities_of(workspace)
        self._bindings = context.runtime_bindings
        self._local_runtimes = context.local_runtime_ids
        self._local_hosts = frozenset(local_host_id(i) for i in self._identities)

    def _runtime_id_visible(self, runtime_id: str) -> bool:
        bound = self._bindings.get(runtime_id)
        return bound is None or not bound.isdisjoint(self._identities)

    def runtime_visible(self, runtime: RuntimeRecord) -> bool:
        return self._runtime_id_visible(runtime.runtime_id)

    def host_visible(self, host: HostRecord) -> bool:
        if not self._runtime_id_visible(host.runtime_id):
            return False
        if host.runtime_id in self._local_runtimes:
            return host.host_id in self._local_hosts
        return True

    def worker_visible(self, worker: WorkerRecord) -> bool:
        if not self._runtime_id_visible(worker.runtime_id):
            return False
        if worker.workspace.registry_visibility == "workspace":
            return worker.workspace.workspace_id in self._identities
        return True


class DefaultPolicy:
    """Every authenticated request may run; visibility follows workspaces (module doc)."""

    def __init__(self, context: PolicyContext) -> None:
        self.context = context
        self._views: dict[str, WorkspaceView] = {}

    def allows(self, request: RequestFacts) -> bool:
        return True

    def view(self, principal: Principal) -> Visibility:
        workspace = principal.workspace
        if workspace is None:
            return SEES_ALL
        view = self._views.get(workspace)
        if view is None:
            if len(self._views) >= MAX_CACHED_VIEWS:
                self._views.clear()
            view = self._views[workspace] = WorkspaceView(workspace, self.context)
        return view


def load_policy(config: Config) -> Policy:
    """The default policy, or the custom one ``[policy] custom`` names."""
    context = PolicyContext.from_config(config)
    if config.policy.custom is None:
        return DefaultPolicy(context)
    factory: Any = import_object(config.policy.custom, "policy.custom")
    if not callable(factory):
        raise ConfigError([f"policy.custom: {config.policy.custom!r} is not callable"])
    policy = factory(context)
    if not isinstance(policy, Policy):
        raise ConfigError(
            [f"policy.custom: {config.policy.custom!r} did not return a policy (allows, view)"]
        )
    return policy


@dataclass
class RequestAccess:
    """One request's principal and visibility, as the app sees them, and what the app tells
    the audit back (``decision``)."""

    request_id: str
    principal: Principal
    view: Visibility
    decision: Decision = "allowed"

    def note_filtered(self) -> None:
        if self.decision == "allowed":
            self.decision = "filtered"

    def note_denied(self) -> None:
        self.decision = "denied"


def access_of(scope: Mapping[str, Any]) -> RequestAccess | None:
    """The request's access, if the security middleware admitted it."""
    access = scope.get(ACCESS_SCOPE_KEY)
    return access if isinstance(access, RequestAccess) else None
