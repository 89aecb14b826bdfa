"""Typed daemon configuration, loaded from TOML into msgspec Structs with defaults.

Unknown keys are errors, durations are written ``"500ms"``, ``"2s"``, ``"5m"``, ``"1h"``
(or a number of seconds), and every problem is reported with the dotted path of the key
that caused it, so ``yoi-registryd check-config`` can tell an operator exactly what to fix.
"""

from __future__ import annotations

import ipaddress
import os
import pkgutil
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Final, Literal
from urllib.parse import urlsplit

import msgspec

from yoi_registryd.config_walk import MISSING, KeyHints, Walker
from yoi_registryd.ids import is_valid_identifier
from yoi_registryd.model import SourceKind
from yoi_registryd.record_templates import template_fields
from yoi_registryd.secrets import Secret

DEFAULT_PORT: Final = 38790
DEFAULT_LISTEN: Final = f"127.0.0.1:{DEFAULT_PORT}"
SYSTEM_CONFIG_PATH: Final = Path("/etc/yoi-registryd/config.toml")
CONFIG_ENV: Final = "YOI_REGISTRYD_CONFIG"

DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
"""Seconds per unit of a written duration."""
DURATION_NUMBER: Final = r"[0-9]+(?:\.[0-9]+)?"
_UNIT: Final = "|".join(DURATION_UNITS)


def _duration_grammar(number: str, unit: str) -> str:
    """A number, then a unit, blanks around either: the one grammar of a written duration."""
    return rf"[ \t]*{number}[ \t]*{unit}[ \t]*"


DURATION_PATTERN: Final = _duration_grammar(DURATION_NUMBER, f"(?:{_UNIT})")
"""A written duration (``"500ms"``, ``"2s"``, ``"5m"``) as the config, the ``wait`` query
parameter and the OpenAPI document take it."""
_DURATION_PARTS: Final = re.compile(_duration_grammar(f"({DURATION_NUMBER})", f"({_UNIT})"))


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` name each bad key and why."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


class Duration(timedelta):
    """A timedelta written in config as ``"500ms"``, ``"2s"``, ``"5m"``, ``"1h"`` or seconds."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError("expected a duration such as '500ms', '2s' or '5m'")
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            match = _DURATION_PARTS.fullmatch(value)
            if match is None:
                raise ValueError(
                    f"invalid duration {value!r}: expected a number with a unit "
                    "(ms, s, m, h, d), such as '500ms', '2s' or '5m'"
                )
            seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)]
        else:
            raise ValueError("expected a duration such as '500ms', '2s' or '5m'")
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        try:
            return cls(seconds=seconds)
        except (OverflowError, ValueError):  # inf, nan, or beyond timedelta's range
            raise ValueError("the duration is too large or not a number") from None


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Duration:
        return Duration.parse(obj)
    if type_ is Secret:
        if not isinstance(obj, str):
            raise ValueError("expected a string")
        return Secret(obj)
    raise NotImplementedError(f"unsupported config type {type_!r}")


def default_data_dir() -> Path:
    """The yoi data dir, resolved as yoi resolves it today (contract-v2 section 3.2).

    ``$YOI_DATA_DIR``, else ``$YOI_HOME``, else ``$XDG_DATA_HOME/yoi``, else
    ``~/.local/share/yoi``. The older default ``~/.yoi`` is still found: it is used when
    that XDG directory does not exist and ``~/.yoi`` does (an install from before yoi's
    move that has not migrated). Resolved when the source starts.
    """
    for var in ("YOI_DATA_DIR", "YOI_HOME"):
        if value := os.environ.get(var):
            return Path(value)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    current = base / "yoi"
    older = Path.home() / ".yoi"
    if not current.is_dir() and older.is_dir():
        return older
    return current


def default_state_dir() -> Path:
    """Where the daemon keeps state: systemd's ``$STATE_DIRECTORY``, else the XDG state dir
    (``/var/lib/yoi-registryd`` for root)."""
    if value := os.environ.get("STATE_DIRECTORY"):
        return Path(value.split(":")[0])
    if value := os.environ.get("XDG_STATE_HOME"):
        return Path(value) / "yoi-registryd"
    if os.geteuid() == 0:
        return Path("/var/lib/yoi-registryd")
    return Path.home() / ".local" / "state" / "yoi-registryd"


def default_runtime_dir() -> Path:
    """Where yoi keeps liveness sockets (contract section 2)."""
    if value := os.environ.get("YOI_RUNTIME_DIR"):
        return Path(value)
    if value := os.environ.get("YOI_HOME"):
        return Path(value) / "run"
    if value := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(value) / "yoi"
    return Path.home() / ".yoi" / "run"


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section):
    listen: list[str] = msgspec.field(default_factory=lambda: [DEFAULT_LISTEN])
    """Addresses to serve on: ``host:port``, ``[v6]:port`` or ``unix:/path``."""
    unix_socket_mode: str = "0660"
    shutdown_grace: Duration = Duration(seconds=10)
    conceal_invisible_workers: bool = True
    """Answer a lookup of a worker the caller may not see as 404 ``unknown_worker``."""
    cursor_key_file: str | None = None
    """A file holding the key list cursors are sealed with (at least 32 bytes), so that
    replicas behind one address accept each other's cursors; unset: a random key per
    process (a restart invalidates the cursors in flight)."""
    # Limits on what one client can make the server hold (docs/reliability.md).
    max_connections: int = 1024
    """Open connections at most; past it a new connection is answered 503
    ``too_many_connections`` and closed. The open-files limit is raised to fit."""
    max_header_bytes: int = 16 * 1024
    """Request line and headers at most; past it the answer is 431 and the connection closes."""
    max_body_bytes: int = 64 * 1024
    """Request body at most; past it the answer is 413 ``request_entity_too_large``."""
    body_timeout: Duration = Duration(seconds=10)
    """Longest a request body may take to arrive; then 408 ``request_timeout``."""
    keep_alive_timeout: Duration = Duration(seconds=30)
    """An idle connection is closed after this long; it is also the longest a client may
    take to send a request's line and headers (a slow client cannot hold a connection)."""
    http2: bool = False
    """Speak HTTP/2 over cleartext (h2c: prior knowledge or ``Upgrade: h2c``). Off: a prior
    knowledge preface gets GOAWAY ``HTTP_1_1_REQUIRED`` and an upgrade is ignored."""
    http2_max_streams: int = 16
    """HTTP/2: concurrent streams per connection; the peer is told, and more is an error."""
    http2_stall_timeout: Duration = Duration(seconds=10)
    """HTTP/2: a response the peer's flow control holds up this long is reset."""
    http2_max_buffered_bytes: int = 1024 * 1024
    """HTTP/2: response bytes one connection may hold waiting for the peer's window; a
    response that would pass it is reset (unless it is the only one buffered)."""


class SupervisorConfig(_Section):
    backoff_initial: Duration = Duration(seconds=0.5)
    backoff_max: Duration = Duration(seconds=60)
    healthy_after: Duration = Duration(seconds=60)
    """A source that ran this long before failing restarts with the initial delay again."""
    jitter: bool = True
    """Full jitter: each delay is drawn uniformly between 0 and the exponential ceiling."""


class RegistryConfig(_Section):
    channel_capacity: int = 1024


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class ClientConfig(_Section):
    """A backend client: its name, how it proves who it is, which workspaces it acts for.

    The token itself is never written here: give its SHA-256 (hex), or name where it lives
    (a file, an environment variable or a systemd credential).
    """

    name: str
    workspaces: tuple[str, ...]
    """Workspace ids the client may name in ``X-Yoi-Workspace``; ``["*"]``: any, and every
    workspace at once when it names none."""
    token_sha256: str | None = None
    token_file: str | None = None
    token_env: str | None = None
    token_credential: str | None = None
    """Name of a systemd credential (``LoadCredential=``): ``$CREDENTIALS_DIRECTORY/<name>``."""
    operator: bool = False
    """May read the operator endpoints (``/metrics``, ``/api/sources``, ``/readyz?verbose``,
    the status page's data) although bound to workspaces; a ``["*"]`` client always may."""


class WorkspaceConfig(_Section):
    """Names a workspace and, for local sources, the root its Workers record."""

    id: str
    root: str | None = None
    """Local Workers whose ``workspace_root`` is this path belong to the workspace ``id``."""


class PolicyConfig(_Section):
    custom: str | None = None
    """A policy factory as ``module:attribute``; default: the workspace visibility policy."""
    options: dict[str, str] = msgspec.field(default_factory=dict)
    """Passed to a custom policy's factory."""
    conceal_invisible_workers: bool | None = None
    """Answer a lookup of a worker the caller may not see as 404 ``unknown_worker`` (default),
    else 403 ``worker_not_visible``. Unset: ``server.conceal_invisible_workers``."""


class AuditConfig(_Section):
    sink: str = "file"
    """``file`` (JSON lines, fsynced), ``stderr`` (the journal) or ``module:attribute``."""
    path: str | None = None
    """The file sink's file; default ``audit.jsonl`` in the state directory."""
    queue_size: int = 1024
    """Records waiting to be written; when full, requests wait rather than drop one."""
    flush_interval: Duration = Duration(milliseconds=100)
    """Longest a record waits before its batch is written and fsynced."""
    options: dict[str, str] = msgspec.field(default_factory=dict)
    """Passed to a custom sink's factory."""
    on_failure: Literal["refuse", "serve"] = "refuse"
    """When the sink fails and ``queue_size`` records already wait: ``refuse`` answers new
    requests 503 ``audit_unavailable``; ``serve`` answers them and drops their records."""
    durability: Literal["batched", "before_response"] = "batched"
    """``before_response``: a response starts only once its record is written and fsynced
    (group commit); ``batched``: the record is queued, written within ``flush_interval``."""
    chain: bool = False
    """Each record carries ``seq`` and ``prev`` (the SHA-256 of the line before it), checked
    by ``yoi-registryd audit verify``. File sink only."""

    def resolved_path(self) -> Path:
        return Path(self.path) if self.path else default_state_dir() / "audit.jsonl"


class _SourceBase(
    msgspec.Struct, forbid_unknown_fields=True, kw_only=True, tag_field="kind", frozen=True
):
    """What every ``[[sources]]`` kind knows about itself, so that nothing else asks which
    kind it is: its name (the ``kind`` tag, and ``source_kind`` as served), how to check its
    own keys (:meth:`validate`), the class that builds its source and spec
    (``implementation``), and what binds its runtime to workspaces (for the policy).

    A new kind is a subclass with its ``tag``, listed in :data:`SourceConfig`, whose
    ``implementation`` has a ``spec(config)`` classmethod (``sources/factory.py``)."""

    source_kind: ClassVar[SourceKind]
    """The kind as ``/api/runtimes`` and ``/api/sources`` serve it."""
    implementation: ClassVar[str]
    """``module:attribute`` of the source class; named, not imported, so that the
    configuration stays below the sources it describes and loads only the kinds in use."""
    hosts_per_workspace: ClassVar[bool] = False
    """Its runtime reports one host per workspace (the default policy shows each host to its
    own workspace only)."""

    def validate(self, key: str) -> list[str]:
        """This entry's own problems (beyond its type), each named from ``key``."""
        raise NotImplementedError

    def bound_workspaces(self) -> tuple[str, ...]:
        """Workspace ids the runtime is bound to; empty: visible wherever the runtime is."""
        return ()

    def bound_root(self) -> str | None:
        """A workspace root the runtime is bound to (its Workers' root)."""
        return None


class LocalSourceConfig(_SourceBase, tag="local", frozen=True):
    """The local compatibility source: a read-only projection of on-disk Worker metadata."""

    source_kind: ClassVar[SourceKind] = "local_compatibility"
    implementation: ClassVar[str] = "yoi_registryd.sources.local:LocalCompatibilitySource"
    hosts_per_workspace: ClassVar[bool] = True

    runtime_id: str = "local-worker-runtime"
    label: str = "Local Worker runtime"
    data_dir: str | None = None
    """The yoi data dir; default as yoi resolves it (:func:`default_data_dir`)."""
    runtime_stores: list[str] | None = None
    """Runtime store directories whose ``workers/<id>/metadata.json`` are read too; default
    ``[<data_dir>/runtime]`` (a standalone runtime's store), ``[]`` for none."""
    runtime_dir: str | None = None
    """Where liveness sockets live; default as yoi (``$YOI_RUNTIME_DIR`` ...)."""
    workspace_root: str | None = None
    """Bind the source to one workspace: workers of other roots are excluded."""
    rescan_interval: Duration = Duration(seconds=30)
    stale_after: Duration = Duration(minutes=2)
    liveness_check: bool = True
    """Mark an ``active`` Worker whose liveness socket is absent as ``stale``."""
    max_metadata_age: Duration | None = None
    """Mark an ``active`` Worker whose metadata is older than this as ``stale``."""
    max_metadata_bytes: int = 1024 * 1024
    watch: bool = True
    """Watch the Worker metadata directories for changes (the rescan remains as a safety
    net)."""

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir else default_data_dir()

    def resolved_runtime_dir(self) -> Path:
        return Path(self.runtime_dir) if self.runtime_dir else default_runtime_dir()

    def resolved_runtime_stores(self, data_dir: Path) -> tuple[Path, ...]:
        if self.runtime_stores is None:
            return (data_dir / "runtime",)
        return tuple(Path(p) for p in self.runtime_stores)

    def bound_root(self) -> str | None:
        return self.workspace_root

    def validate(self, key: str) -> list[str]:
        problems = []
        for name in ("data_dir", "runtime_dir", "workspace_root"):
            value = getattr(self, name)
            if value is not None and not value.startswith("/"):
                problems.append(f"{key}.{name}: must be an absolute path")
        for i, store in enumerate(self.runtime_stores or ()):
            if not store.startswith("/"):
                problems.append(f"{key}.runtime_stores[{i}]: must be an absolute path")
        problems.extend(_positive(key, self, "rescan_interval", "stale_after"))
        if self.max_metadata_bytes < 1:
            problems.append(f"{key}.max_metadata_bytes: must be at least 1")
        return problems


class _RemoteAccess(msgspec.Struct, kw_only=True, frozen=True):
    """How a remote runtime is called: its credentials and poll interval. Declared once for
    a ``[[sources]]`` remote entry and a ``[[discovery]]`` entry, which passes them to every
    runtime it finds (:meth:`_DiscoveryBase.remote_template`)."""

    token_file: str | None = None
    """Absolute path of a file holding the bearer token (trailing newline ignored)."""
    token_env: str | None = None
    """Name of an environment variable holding the bearer token."""
    token_credential: str | None = None
    """Name of a systemd credential (``LoadCredential=``): ``$CREDENTIALS_DIRECTORY/<name>``."""
    auth: Literal["bearer", "capability"] = "bearer"
    """``bearer``: send the static token named by ``token_*`` (if any) as it is.
    ``capability``: mint a short-lived signed yoi capability token for every request
    (contract-v2 section 4.6), from ``server_id``, the signing key and ``workspace_id``."""
    server_id: str | None = None
    """``auth = "capability"``: the registry's server id, as the runtime's trusted servers
    list it (the token's ``iss``)."""
    signing_key_file: str | None = None
    """``auth = "capability"``: absolute path of the file holding the registry's private key
    (a ``yoi-ed25519-pkcs8:v1:`` key string, as ``yoi-registryd keygen`` writes it)."""
    signing_key_credential: str | None = None
    """``auth = "capability"``: the same key as a systemd credential (``LoadCredential=``)."""
    workspace_id: str | None = None
    """``auth = "capability"``: the workspace the runtime scopes the registry to (the token's
    ``workspace_id``): the registry sees and operates that workspace's workers only."""
    token_ttl: Duration = Duration(seconds=300)
    """``auth = "capability"``: lifetime of a minted token (1 to 300 seconds)."""
    token_reuse: Duration = Duration(seconds=60)
    """``auth = "capability"``: a token is reused for requests needing the same permission
    while younger than this (at most half of ``token_ttl``); ``0s``: a new token for every
    request."""
    poll_interval: Duration = Duration(seconds=2)
    """Time between polls while the runtime answers (one that serves no subscription)."""


class RemoteSourceConfig(_SourceBase, _RemoteAccess, tag="remote", frozen=True):
    """A remote yoi runtime polled over the worker-runtime REST API v1 (contract section 3).

    ``base_url`` (and any token, which is only ever named here, never written) are
    :class:`~yoi_registryd.secrets.Secret`: this object prints them as ``<redacted>``.
    """

    source_kind: ClassVar[SourceKind] = "remote_http"
    implementation: ClassVar[str] = "yoi_registryd.sources.remote:RemoteRuntimeSource"

    runtime_id: str
    base_url: Secret
    """``http(s)://host:port[/prefix]`` of the runtime; never served, never logged at INFO+."""
    label: str | None = None
    """Display label; default the runtime's own ``display_name``, else ``runtime_id``."""
    token: Secret | None = None
    """Refused by validation: tokens are never written inline. Kept so the error is clear."""
    workspaces: tuple[str, ...] = ()
    """Workspace ids the runtime is bound to; empty: visible wherever the runtime is."""
    poll_jitter: float = 0.1
    """Each wait is the interval times a factor drawn from ``1 +- poll_jitter``."""
    timeout: Duration = Duration(seconds=5)
    """Deadline for one HTTP request, connect to last byte."""
    backoff_max: Duration = Duration(seconds=30)
    """Cap of the exponential wait between polls after consecutive failures."""
    stale_after: Duration = Duration(seconds=30)
    expire_after: Duration = Duration(minutes=10)
    """After this long without a successful poll the last known workers are dropped."""
    max_response_bytes: int = 8 * 1024 * 1024
    """Largest answer accepted, and largest subscription message."""
    subscribe: bool = True
    """Follow the runtime's event subscription when it serves one (runtimes of August 2026
    and later); false: always poll."""
    ping_interval: Duration = Duration(seconds=10)
    """While subscribed: time between WebSocket pings (each must be answered within
    ``timeout``); at most a third of ``stale_after`` is used."""

    def bound_workspaces(self) -> tuple[str, ...]:
        return self.workspaces

    def validate(self, key: str) -> list[str]:
        """No message ever repeats the URL or a token."""
        problems = []
        try:
            url = urlsplit(self.base_url.reveal())
            url_ok = url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
        except ValueError:
            url, url_ok = None, False
        if not url_ok:
            problems.append(f"{key}.base_url: expected http://host:port or https://host[/prefix]")
        elif url is not None:
            if url.username is not None or url.password is not None:
                problems.append(
                    f"{key}.base_url: credentials in the URL are not allowed; use a token"
                )
            if url.query or url.fragment:
                problems.append(f"{key}.base_url: must not have a query or fragment")
        if self.token is not None:
            problems.append(
                f"{key}.token: tokens are never written inline; "
                "use token_file, token_env or token_credential"
            )
        named = [n for n in ("token_file", "token_env", "token_credential") if getattr(self, n)]
        if len(named) > 1:
            problems.append(f"{key}: give at most one of {', '.join(named)}")
        if self.auth == "capability":
            problems.extend(_validate_capability(key, self, named))
        else:
            for name in _CAPABILITY_KEYS:
                if getattr(self, name) is not None:
                    problems.append(f'{key}.{name}: only used with auth = "capability"')
        problems.extend(
            _token_location_problems(key, self.token_file, self.token_env, self.token_credential)
        )
        problems.extend(_validate_workspaces(key, self.workspaces))
        problems.extend(
            _positive(key, self, "poll_interval", "timeout", "stale_after", "ping_interval")
        )
        if not 0 <= self.poll_jitter <= 0.5:
            problems.append(f"{key}.poll_jitter: must be between 0 and 0.5")
        if self.backoff_max < self.poll_interval:
            problems.append(f"{key}.backoff_max: must not be less than poll_interval")
        if self.stale_after <= self.poll_interval:
            problems.append(f"{key}.stale_after: must be longer than poll_interval")
        if self.expire_after <= self.stale_after:
            problems.append(f"{key}.expire_after: must be longer than stale_after")
        if self.max_response_bytes < 1024:
            problems.append(f"{key}.max_response_bytes: must be at least 1024")
        return problems


class EmbeddedSourceConfig(_SourceBase, tag="embedded", frozen=True):
    """A worker runtime living inside the daemon's process, followed by subscription.

    The runtime is built by a factory named ``module:attribute`` or by an entry point in the
    group ``yoi_registryd.runtimes`` (built in: ``memory``, ``demo``), called with
    ``options`` as keyword arguments. ``options`` are handed to the factory only: never
    served, never logged.
    """

    source_kind: ClassVar[SourceKind] = "embedded_worker_runtime"
    implementation: ClassVar[str] = "yoi_registryd.sources.embedded:EmbeddedRuntimeSource"

    runtime_id: str = "embedded-worker-runtime"
    label: str | None = None
    """Display label; default the runtime's own display name."""
    factory: str | None = None
    """``module:attribute`` of a callable returning the runtime (e.g. a class)."""
    entry_point: str | None = None
    """Name of an entry point in the group ``yoi_registryd.runtimes``."""
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    stale_after: Duration = Duration(minutes=2)
    """Heartbeats (a summary read) come every quarter of this; a silent runtime goes stale."""
    workspaces: tuple[str, ...] = ()
    """Workspace ids the runtime is bound to; empty: visible wherever the runtime is."""

    def bound_workspaces(self) -> tuple[str, ...]:
        return self.workspaces

    def validate(self, key: str) -> list[str]:
        """Whether the factory imports is known only at start (``check-config`` tries)."""
        problems = []
        if (self.factory is None) == (self.entry_point is None):
            problems.append(
                f"{key}: give exactly one of factory ('module:attribute') or entry_point (a "
                "name in the group yoi_registryd.runtimes)"
            )
        if self.factory is not None and not _FACTORY_RE.fullmatch(self.factory):
            problems.append(
                f"{key}.factory: {self.factory!r} is not of the form 'module:attribute'"
            )
        if self.entry_point is not None and not _ENTRY_POINT_RE.fullmatch(self.entry_point):
            problems.append(f"{key}.entry_point: {self.entry_point!r} is not an entry point name")
        problems.extend(_positive(key, self, "stale_after"))
        problems.extend(_validate_workspaces(key, self.workspaces))
        return problems


SourceConfig = LocalSourceConfig | RemoteSourceConfig | EmbeddedSourceConfig


class _DiscoveryBase(
    _RemoteAccess, forbid_unknown_fields=True, kw_only=True, tag_field="kind", frozen=True
):
    """What every ``[[discovery]]`` entry has: a name, how long its last good set stays
    fresh, a bound, and the credentials every runtime it finds is called with (never taken
    from what was discovered: see :meth:`remote_template`; with ``auth = "capability"``, a
    record naming a workspace other than ``workspace_id`` is refused)."""

    implementation: ClassVar[str]
    """``module:attribute`` of the backend class, built with the entry (``discovery/
    manager.py``); named, not imported, so that only the kinds in use are loaded.

    A new kind is a subclass with its ``tag`` and ``implementation``, its own keys checked
    by extending :meth:`validate`, listed in :data:`DiscoveryConfig`."""

    name: str
    """Names the entry on ``/api/sources`` and ``/metrics`` ([A-Za-z0-9_:-])."""
    stale_after: Duration = Duration(minutes=5)
    """The last good set is marked stale after this long without a successful refresh
    (it is kept: a failing backend never empties the registry)."""
    max_runtimes: int = 10_000
    """Runtimes one refresh may yield at most; records beyond are refused."""

    @property
    def kind(self) -> str:
        """The kind's name (``kind = ...`` in the file, ``kind`` on ``/api/sources``)."""
        return str(self.__struct_config__.tag)

    def validate(self, key: str) -> list[str]:
        """This entry's own problems, each named from ``key``. Its credentials are checked
        as a remote source's are (on the runtime every record becomes); a kind adds its
        own keys' checks to these."""
        template = self.remote_template("discovered", "http://discovered.invalid:1", None, ())
        problems = template.validate(key)
        problems.extend(_positive(key, self, "stale_after"))
        if self.max_runtimes < 1:
            problems.append(f"{key}.max_runtimes: must be at least 1")
        return problems

    def remote_template(
        self, runtime_id: str, base_url: str, label: str | None, workspaces: tuple[str, ...]
    ) -> RemoteSourceConfig:
        """The remote source of one discovered runtime: address and label from the record,
        everything else from this entry.

        The runtime's other settings keep the remote defaults, except the bounds that must
        exceed its poll interval: a long interval (10,000 runtimes polled every few minutes)
        brings them along, stale after 3 intervals, expired after 20, backing off at most
        one; at intervals up to 10 s they are the defaults."""
        source = RemoteSourceConfig(
            runtime_id=runtime_id,
            base_url=Secret(base_url),
            label=label,
            workspaces=workspaces,
            **{name: getattr(self, name) for name in _RemoteAccess.__struct_fields__},
        )
        poll = self.poll_interval.total_seconds()
        return msgspec.structs.replace(
            source,
            stale_after=max(source.stale_after, Duration(seconds=3 * poll)),
            expire_after=max(source.expire_after, Duration(seconds=20 * poll)),
            backoff_max=max(source.backoff_max, self.poll_interval),
        )


class FileDiscoveryConfig(_DiscoveryBase, tag="file", frozen=True):
    """Runtimes listed in a JSON or TOML file, watched (like Prometheus' ``file_sd``)."""

    implementation: ClassVar[str] = "yoi_registryd.discovery.file:FileDiscovery"

    path: str
    """Absolute path of the file; ``.toml`` is read as TOML, anything else as JSON."""
    max_file_bytes: int = 8 * 1024 * 1024

    def validate(self, key: str) -> list[str]:
        problems = super().validate(key)
        if not self.path.startswith("/"):
            problems.append(f"{key}.path: must be an absolute path")
        if self.max_file_bytes < 1:
            problems.append(f"{key}.max_file_bytes: must be at least 1")
        return problems


class EtcdDiscoveryConfig(_DiscoveryBase, tag="etcd", frozen=True):
    """Runtimes described by the keys under a prefix in etcd, read then watched."""

    implementation: ClassVar[str] = "yoi_registryd.discovery.etcd:EtcdDiscovery"

    endpoints: list[str]
    """etcd client URLs (``http://host:2379``); one is used, the next after a failure."""
    prefix: str
    """Every key under it holds one runtime's JSON description."""
    timeout: Duration = Duration(seconds=5)
    """Deadline to connect and for the range request (the watch itself has none)."""

    def validate(self, key: str) -> list[str]:
        problems = super().validate(key)
        if not self.endpoints:
            problems.append(f"{key}.endpoints: at least one etcd URL is required")
        for j, endpoint in enumerate(self.endpoints):
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problems.append(f"{key}.endpoints[{j}]: expected http://host:port")
        if not self.prefix:
            problems.append(f"{key}.prefix: must not be empty")
        problems.extend(_positive(key, self, "timeout"))
        return problems


class DnsSrvDiscoveryConfig(_DiscoveryBase, tag="dns_srv", frozen=True):
    """Runtimes published as DNS SRV records (a Kubernetes headless Service, Consul's DNS
    interface), re-resolved at ``min(TTL, refresh_interval)``; the templates' grammar is
    :mod:`yoi_registryd.record_templates`, the backend :mod:`yoi_registryd.discovery.dns_srv`."""

    implementation: ClassVar[str] = "yoi_registryd.discovery.dns_srv:DnsSrvDiscovery"

    srv_name: str
    """The SRV name, e.g. ``_yoi-runtime._tcp.example.internal`` (always absolute)."""
    nameservers: list[str] = msgspec.field(default_factory=list)
    """IP addresses of the servers to ask; empty: the system's (``/etc/resolv.conf``)."""
    nameserver_port: int = 53
    refresh_interval: Duration = Duration(seconds=30)
    """Re-resolved after the records' TTL or this, whichever is shorter (at least 1 s)."""
    timeout: Duration = Duration(seconds=5)
    """Deadline of one refresh's resolution (every retry and server included)."""
    runtime_id_template: str = "{host}"
    base_url_template: str = "http://{target}:{port}"
    label_template: str | None = None
    """Fields: ``{target}``, ``{host}``, ``{port}``, ``{priority}``, ``{weight}``,
    ``{txt.KEY}`` (a ``KEY=value`` string of the target's TXT records)."""

    def validate(self, key: str) -> list[str]:
        problems = super().validate(key)
        labels = self.srv_name.rstrip(".").split(".")
        if not 0 < len(self.srv_name) < 254 or not all(0 < len(label) < 64 for label in labels):
            problems.append(f"{key}.srv_name: not a DNS name")
        for i, server in enumerate(self.nameservers):
            try:
                ipaddress.ip_address(server)
            except ValueError:
                problems.append(f"{key}.nameservers[{i}]: expected an IP address")
        if not 1 <= self.nameserver_port <= 65535:
            problems.append(f"{key}.nameserver_port: expected 1 to 65535")
        problems.extend(_positive(key, self, "refresh_interval", "timeout"))
        templates = {
            "runtime_id_template": self.runtime_id_template,
            "base_url_template": self.base_url_template,
            "label_template": self.label_template,
        }
        for name, template in templates.items():
            try:
                if template is not None:
                    template_fields(template)
            except ValueError as exc:
                problems.append(f"{key}.{name}: {exc}")
        return problems


DiscoveryConfig = FileDiscoveryConfig | EtcdDiscoveryConfig | DnsSrvDiscoveryConfig


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    supervisor: SupervisorConfig = msgspec.field(default_factory=SupervisorConfig)
    registry: RegistryConfig = msgspec.field(default_factory=RegistryConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    sources: list[SourceConfig] = msgspec.field(default_factory=lambda: [LocalSourceConfig()])
    """Omitted: one local source on the default data dir. ``sources = []``: none."""
    discovery: list[DiscoveryConfig] = msgspec.field(default_factory=list)
    """Backends whose runtimes become remote sources while the daemon runs."""
    clients: list[ClientConfig] = msgspec.field(default_factory=list)
    """None: unauthenticated requests are accepted on loopback and unix sockets only."""
    workspaces: list[WorkspaceConfig] = msgspec.field(default_factory=list)
    policy: PolicyConfig = msgspec.field(default_factory=PolicyConfig)
    audit: AuditConfig = msgspec.field(default_factory=AuditConfig)

    def conceals_invisible_workers(self) -> bool:
        """``policy.conceal_invisible_workers``, else the older ``server.`` spelling."""
        if self.policy.conceal_invisible_workers is not None:
            return self.policy.conceal_invisible_workers
        return self.server.conceal_invisible_workers


_INLINE_TOKEN: Final = "tokens are never written inline; use "
KEY_HINTS: Final[KeyHints] = {
    (ClientConfig, "token"): _INLINE_TOKEN + "token_sha256, token_file, token_env or "
    "token_credential",
}
"""Unknown keys that deserve more than "unknown key": what was probably meant."""


def parse_config(data: bytes | str, source: str | None = None) -> Config:
    """Decode and validate TOML text; raise :class:`ConfigError` naming every bad key.

    Type problems are found by walking the raw table (``config_walk``: all of them, not the
    first); the cross-key checks then run over what was well typed."""
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not valid TOML: not UTF-8 at byte {exc.start}"], source) from None
    walker = Walker(_dec_hook, KEY_HINTS)
    cleaned = walker.walk(raw, Config, "")
    problems = list(walker.problems)
    config: Config | None = None
    if cleaned is not MISSING:
        try:
            config = msgspec.convert(cleaned, Config, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:  # the walk should have caught it; say so anyway
            problems.append(_describe_validation_error(str(exc)))
    if config is not None:
        inline = {p.partition(".token:")[0] for p in problems if ".token: " + _INLINE_TOKEN in p}
        for problem in validate_config(config):
            problem = walker.original_paths(problem)
            # "give exactly one of token_..." only repeats what an inline token was told.
            if not any(problem.startswith(f"{key}: give exactly one of") for key in inline):
                problems.append(problem)
    if problems or config is None:
        raise ConfigError(problems, source)
    return config


def load_config(path: Path) -> Config:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read the config file: {exc.strerror}"], str(path)) from None
    return parse_config(data, str(path))


def resolve_config_path(explicit: str | None) -> Path | None:
    """``--config``, else ``$YOI_REGISTRYD_CONFIG``, else the system file if it exists."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get(CONFIG_ENV):
        return Path(env)
    if SYSTEM_CONFIG_PATH.exists():
        return SYSTEM_CONFIG_PATH
    return None


_KEY_PROBLEM_RE: Final = re.compile(r"^Object (contains unknown|missing required) field `(.*)`$")
_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")


def _describe_validation_error(text: str) -> str:
    """Turn msgspec's ``... - at `$.a.b[0]``` into ``a.b[0]: ...``.

    An unknown or missing key is named by its own dotted path (``server.lisen: unknown
    key``), not by the table holding it, so the operator sees exactly which line to fix.
    """
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        message, where = text, ""
    path = where.rstrip("`").removeprefix("$").lstrip(".")
    key_problem = _KEY_PROBLEM_RE.match(message)
    if key_problem is not None:
        kind, key = key_problem.groups()
        key = key if _BARE_KEY_RE.fullmatch(key) else msgspec.json.encode(key).decode()
        path = f"{path}.{key}" if path else key
        message = "unknown key" if kind == "contains unknown" else "required key is missing"
    return f"{path or '(top level)'}: {message}"


def parse_listen(
    address: str,
) -> tuple[Literal["tcp"], str, int] | tuple[Literal["unix"], str, int]:
    """Split a listen address into ``("tcp", host, port)`` or ``("unix", path, 0)``."""
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError("a unix socket path must be absolute")
        return ("unix", path, 0)
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ValueError("expected host:port, [v6]:port or unix:/path")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("the port must be a number from 0 to 65535")
    return ("tcp", host, int(port_text))


def _earlier_use(first_use: dict[str, int], value: str, index: int, section: str) -> str:
    """Record where ``value`` is first used; the key of that earlier entry (``section[i]``)
    if entry ``index`` uses it again, else "" (so duplicates are named, not just counted)."""
    first = first_use.setdefault(value, index)
    return f"{section}[{first}]" if first != index else ""


_NAME: Final = "name ([A-Za-z0-9_:-])"
"""What a name (of a client, a discovery entry) must be, as a problem says it."""


def _name_problem(
    first_use: dict[str, int], section: str, index: int, field: str, value: str, what: str
) -> list[str]:
    """The problem with entry ``index``'s name ``field`` in ``section``, which must be a
    valid identifier (else it is "not a valid ``what``") used by no earlier entry."""
    key = f"{section}[{index}].{field}"
    if not is_valid_identifier(value):
        return [f"{key}: {value!r} is not a valid {what}"]
    if first := _earlier_use(first_use, value, index, section):
        return [f"{key}: {value!r} is already used by {first}"]
    return []


def validate_config(config: Config) -> list[str]:
    """Checks that span keys or need more than a type: ids, uniqueness, addresses."""
    problems: list[str] = []
    if not config.server.listen:
        problems.append("server.listen: at least one address is required")
    for i, address in enumerate(config.server.listen):
        try:
            parse_listen(address)
        except ValueError as exc:
            problems.append(f"server.listen[{i}]: {exc}")
    if not re.fullmatch(r"0?[0-7]{3}", config.server.unix_socket_mode):
        problems.append("server.unix_socket_mode: expected an octal mode such as '0660'")
    problems.extend(_validate_server_limits(config.server))
    if config.registry.channel_capacity < 1:
        problems.append("registry.channel_capacity: must be at least 1")
    sup = config.supervisor
    if sup.backoff_initial <= timedelta(0):
        problems.append("supervisor.backoff_initial: must be greater than zero")
    if sup.backoff_max < sup.backoff_initial:
        problems.append("supervisor.backoff_max: must not be less than backoff_initial")
    seen: dict[str, int] = {}
    for i, src in enumerate(config.sources):
        key = f"sources[{i}]"
        if not is_valid_identifier(src.runtime_id):
            problems.append(
                f"{key}.runtime_id: {src.runtime_id!r} is not a valid id "
                "(1 to 120 bytes of [A-Za-z0-9_:-])"
            )
        if first := _earlier_use(seen, src.runtime_id, i, "sources"):
            problems.append(f"{key}.runtime_id: {src.runtime_id!r} is already used by {first}")
        problems.extend(src.validate(key))
    problems.extend(_validate_discovery(config.discovery))
    problems.extend(_validate_access(config))
    return problems


def _validate_server_limits(server: ServerConfig) -> list[str]:
    problems = []
    for name, least in (
        ("max_connections", 1),
        ("max_header_bytes", 1024),
        ("max_body_bytes", 1),
        ("http2_max_streams", 1),
        ("http2_max_buffered_bytes", 65536),
    ):
        if getattr(server, name) < least:
            problems.append(f"server.{name}: must be at least {least}")
    problems.extend(
        _positive("server", server, "body_timeout", "keep_alive_timeout", "http2_stall_timeout")
    )
    return problems


_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CREDENTIAL_RE: Final = re.compile(r"[A-Za-z0-9_.:@-]+")


def _validate_discovery(entries: list[DiscoveryConfig]) -> list[str]:
    """Checks of ``[[discovery]]``: names unique across entries, then each entry's own."""
    problems: list[str] = []
    names: dict[str, int] = {}
    for i, entry in enumerate(entries):
        problems.extend(_name_problem(names, "discovery", i, "name", entry.name, _NAME))
        problems.extend(entry.validate(f"discovery[{i}]"))
    return problems


def _positive(key: str, section: object, *names: str) -> list[str]:
    """``must be greater than zero`` for each duration of ``section`` named that is not."""
    return [
        f"{key}.{name}: must be greater than zero"
        for name in names
        if getattr(section, name) <= timedelta(0)
    ]


_CAPABILITY_KEYS: Final = (
    "server_id",
    "signing_key_file",
    "signing_key_credential",
    "workspace_id",
)


def _validate_capability(key: str, src: RemoteSourceConfig, token_keys: list[str]) -> list[str]:
    """Checks of ``auth = "capability"``: an identity, one key location, a workspace."""
    problems = []
    for name in token_keys:
        problems.append(f'{key}.{name}: a bearer token is not used with auth = "capability"')
    if src.server_id is None:
        problems.append(f'{key}.server_id: required with auth = "capability"')
    elif not is_valid_identifier(src.server_id):
        problems.append(f"{key}.server_id: {src.server_id!r} is not a valid id")
    if src.workspace_id is None:
        problems.append(f'{key}.workspace_id: required with auth = "capability"')
    elif not is_valid_identifier(src.workspace_id):
        problems.append(f"{key}.workspace_id: {src.workspace_id!r} is not a valid workspace id")
    if (src.signing_key_file is None) == (src.signing_key_credential is None):
        problems.append(
            f"{key}: give exactly one of signing_key_file or signing_key_credential "
            '(required with auth = "capability")'
        )
    if src.signing_key_file is not None and not src.signing_key_file.startswith("/"):
        problems.append(f"{key}.signing_key_file: must be an absolute path")
    if src.signing_key_credential is not None and not _is_credential_name(
        src.signing_key_credential
    ):
        problems.append(f"{key}.signing_key_credential: must be a credential name, not a path")
    if not timedelta(seconds=1) <= src.token_ttl <= timedelta(seconds=300):
        problems.append(f"{key}.token_ttl: must be from 1s to 300s")
    elif src.token_reuse > src.token_ttl / 2:
        problems.append(f"{key}.token_reuse: must not be more than half of token_ttl")
    return problems


def _token_location_problems(
    key: str, token_file: str | None, token_env: str | None, token_credential: str | None
) -> list[str]:
    """Where a bearer token is named must be well formed (of a client or a remote source)."""
    problems = []
    if token_file is not None and not token_file.startswith("/"):
        problems.append(f"{key}.token_file: must be an absolute path")
    if token_env is not None and not _ENV_NAME_RE.fullmatch(token_env):
        problems.append(f"{key}.token_env: must be an environment variable name")
    if token_credential is not None and not _is_credential_name(token_credential):
        problems.append(f"{key}.token_credential: must be a credential name, not a path")
    return problems


def _is_credential_name(name: str) -> bool:
    return bool(_CREDENTIAL_RE.fullmatch(name)) and name not in (".", "..")


_DOTTED: Final = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_FACTORY_RE: Final = re.compile(f"{_DOTTED}:{_DOTTED}")
_ENTRY_POINT_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _validate_workspaces(key: str, workspaces: tuple[str, ...]) -> list[str]:
    problems = []
    for j, workspace in enumerate(workspaces):
        if not is_valid_identifier(workspace):
            problems.append(f"{key}.workspaces[{j}]: {workspace!r} is not a valid workspace id")
    if len(set(workspaces)) != len(workspaces):
        problems.append(f"{key}.workspaces: lists a workspace more than once")
    return problems


# -- access: clients, workspaces, policy, audit -------------------------------------------

ANY_WORKSPACE: Final = "*"
_SHA256_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
_TOKEN_KEYS: Final = ("token_sha256", "token_file", "token_env", "token_credential")


def _validate_access(config: Config) -> list[str]:
    """Checks of ``[[clients]]``, ``[[workspaces]]``, ``[policy]`` and ``[audit]``."""
    problems: list[str] = []
    names: dict[str, int] = {}
    digests: dict[str, int] = {}
    for i, client in enumerate(config.clients):
        key = f"clients[{i}]"
        problems.extend(_name_problem(names, "clients", i, "name", client.name, _NAME))
        given = [k for k in _TOKEN_KEYS if getattr(client, k) is not None]
        if len(given) != 1:
            problems.append(f"{key}: give exactly one of {', '.join(_TOKEN_KEYS)}")
        if client.token_sha256 is not None:
            if not _SHA256_RE.fullmatch(client.token_sha256):
                problems.append(f"{key}.token_sha256: expected 64 hexadecimal characters")
            elif first := _earlier_use(digests, client.token_sha256.lower(), i, "clients"):
                problems.append(f"{key}.token_sha256: the same token as {first}")
        problems.extend(
            _token_location_problems(
                key, client.token_file, client.token_env, client.token_credential
            )
        )
        if not client.workspaces:
            problems.append(f'{key}.workspaces: name at least one workspace id, or "*" for any')
        elif ANY_WORKSPACE in client.workspaces:
            if len(client.workspaces) > 1:
                problems.append(f'{key}.workspaces: "*" already means every workspace')
        else:
            problems.extend(_validate_workspaces(key, client.workspaces))
    ids: dict[str, int] = {}
    for i, workspace in enumerate(config.workspaces):
        problems.extend(_name_problem(ids, "workspaces", i, "id", workspace.id, "workspace id"))
        if workspace.root is not None and not workspace.root.startswith("/"):
            problems.append(f"workspaces[{i}].root: must be an absolute path")
    if config.policy.custom is not None and not _FACTORY_RE.fullmatch(config.policy.custom):
        problems.append(
            f"policy.custom: {config.policy.custom!r} is not of the form 'module:attribute'"
        )
    audit = config.audit
    if audit.sink not in ("file", "stderr") and not _FACTORY_RE.fullmatch(audit.sink):
        problems.append('audit.sink: expected "file", "stderr" or \'module:attribute\'')
    if audit.path is not None and not audit.path.startswith("/"):
        problems.append("audit.path: must be an absolute path")
    if audit.chain and audit.sink != "file":
        problems.append('audit.chain: needs sink = "file" (the chain continues from the file)')
    if audit.queue_size < 1:
        problems.append("audit.queue_size: must be at least 1")
    return problems


def import_object(spec: str, key: str) -> Any:
    """The object a ``module:attribute`` config value names; :class:`ConfigError` otherwise."""
    if not _FACTORY_RE.fullmatch(spec):
        raise ConfigError([f"{key}: {spec!r} is not of the form 'module:attribute'"])
    module_name, _, attribute = spec.partition(":")
    try:
        return pkgutil.resolve_name(spec)
    except AttributeError as exc:
        # Raised by the lookup when the module imported; by the module's code when it did not.
        if module_name not in sys.modules:
            raise ConfigError([f"{key}: cannot import {module_name!r}: {exc}"]) from None
        raise ConfigError([f"{key}: {module_name!r} has no attribute {attribute!r}"]) from None
    except Exception as exc:
        raise ConfigError([f"{key}: cannot import {module_name!r}: {exc}"]) from None
