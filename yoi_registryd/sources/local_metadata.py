"""Read one on-disk yoi Worker directory into a safe record or a diagnostic.

Every layout yoi has written (contract-v2 section 3.2) holds one directory per Worker with a
``metadata.json``: ``<data_dir>/pods/<name>/`` (June), ``<data_dir>/workers/<name>/`` (since
the end of June) and a runtime store's ``workers/<id>/`` (runtime-managed Workers, whose
liveness hint is ``runs/<generation>/worker.sock`` inside the directory). A Worker's
workspace is the ``workspace_id`` its metadata names, else its ``workspace_root``; its host
is the workspace's, with yoi's id (:class:`WorkspaceHosts`).

Pure and synchronous: the local source runs it in a worker thread. Any bytes in give a
record or a diagnostic out, never an exception. Nothing read here that is sensitive
(session ids, workspace roots, children's socket paths, the manifest) is ever copied into
what it returns; diagnostic messages never name a path, a file or a session.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from yoi_registryd import ids
from yoi_registryd.files import FileTooLarge, read_regular_file
from yoi_registryd.json_depth import MAX_JSON_DEPTH, TooDeep, decode_bounded
from yoi_registryd.model import (
    Diagnostic,
    Implementation,
    Severity,
    WorkerCapabilities,
    WorkerRecord,
)
from yoi_registryd.vocabulary import safe_display, worker_naming, worker_workspace
from yoi_registryd.workspace_file import read_workspace_identity

log = logging.getLogger(__name__)

METADATA_FILE: Final = "metadata.json"
IMPLEMENTATION_KIND: Final = "local_pod"

# Upstream's diagnostic codes (kept) and ours.
REGISTRY_UNAVAILABLE: Final = "local_pod_registry_unavailable"
REGISTRY_UNREADABLE: Final = "local_pod_registry_unreadable"
METADATA_UNREADABLE: Final = "local_pod_metadata_unreadable"
METADATA_INVALID: Final = "local_pod_metadata_invalid"
WORKSPACE_ROOT_MISSING: Final = "local_pod_workspace_root_missing"
WORKSPACE_NOT_VISIBLE: Final = "local_pod_workspace_not_visible"
LEGACY_METADATA: Final = "local_pod_legacy_metadata"
LIVENESS_MISSING: Final = "local_pod_liveness_missing"
METADATA_EXPIRED: Final = "local_pod_metadata_expired"
ACTIONS_NOT_IMPLEMENTED: Final = "worker_actions_not_implemented"
WORKSPACE_ID_UNAVAILABLE: Final = "local_workspace_id_unavailable"

NO_CAPABILITIES: Final = WorkerCapabilities()


def _diag(code: str, severity: Severity, message: str, worker_id: str | None) -> Diagnostic:
    return Diagnostic(code=code, severity=severity, message=message, worker_id=worker_id)


class _Metadata(msgspec.Struct):
    """The keys we read; unknown keys are ignored, as upstream does."""

    worker_name: str | None = None
    pod_name: str | None = None
    active: dict[str, Any] | None = None
    workspace_root: str | None = None
    workspace_id: str | None = None
    """yoi's path-free workspace identity (since 2026-07-11)."""
    resolved_manifest_snapshot: Any = None


_DECODER: Final = msgspec.json.Decoder(_Metadata)


@dataclass(frozen=True, slots=True)
class LocalOptions:
    """What evaluating one Worker directory depends on, besides the directory itself."""

    runtime_id: str
    directory: Path
    """The directory holding the Worker directories (``pods``, ``workers``, a store's)."""
    runtime_dir: Path
    bound_root: str | None
    liveness_check: bool
    max_age_seconds: float | None
    max_bytes: int
    runtime_managed: bool = False
    """A runtime store's ``workers``: the liveness hint is inside each Worker directory."""


class WorkspaceHosts:
    """The host of each workspace, with yoi's id (contract-v2 section 1.9).

    yoi derives a local host's id from the workspace's own id: ``local-`` + the id in
    ``<workspace_root>/.yoi/workspace.toml``. When that file is missing, unreadable or
    invalid, the id is derived from the root's opaque id instead (stable while the root
    stays), and the host carries an ``info`` diagnostic saying so. One instance serves one
    scan, so each root's file is read once per scan and a file created or changed later is
    picked up by the next one.
    """

    def __init__(self) -> None:
        self._roots: dict[str, tuple[str | None, str, Diagnostic | None]] = {}

    def _resolve(self, root: str) -> tuple[str | None, str, Diagnostic | None]:
        found = self._roots.get(root)
        if found is None:
            identity = read_workspace_identity(root)
            if identity.workspace_id is not None:
                found = (identity.workspace_id, ids.local_host_id(identity.workspace_id), None)
            else:
                note = _diag(
                    WORKSPACE_ID_UNAVAILABLE,
                    "info",
                    f"the workspace's identity file is {identity.problem}; the host id is "
                    "derived from its root instead of from yoi's workspace id",
                    None,
                )
                found = (None, ids.local_host_id(ids.workspace_id_for_root(root)), note)
            self._roots[root] = found
        return found

    def workspace_id(self, root: str) -> str | None:
        """yoi's id of the workspace at ``root``, if its identity file gives one."""
        return self._resolve(root)[0]

    def for_root(self, root: str) -> tuple[str, Diagnostic | None]:
        """The host id of the workspace at ``root``, and the note when it is a fallback."""
        _, host_id, note = self._resolve(root)
        return host_id, note


@dataclass(frozen=True, slots=True)
class EntryResult:
    """What one Worker directory yields: a worker (or none) and its diagnostics."""

    name: str
    worker_id: str
    fingerprint: tuple[object, ...]
    """Changes whenever a re-read could give another result (file stat, liveness, age)."""
    worker: WorkerRecord | None
    diagnostics: tuple[Diagnostic, ...]
    stat_key: tuple[object, ...] | None = None
    """The metadata file's identity and version when it was read."""
    volatile: bool = True
    """The result may change without the file changing (liveness, age, a read error)."""
    host_root: str | None = None
    """The workspace root whose identity file decided the worker's host id."""
    host_note: Diagnostic | None = None
    """The host's ``info`` diagnostic when its id is a fallback."""
    directory: Path | None = None
    """The directory the Worker directory was read from (see ``LocalOptions.directory``)."""

    def unchanged(self, options: LocalOptions, hosts: WorkspaceHosts) -> bool:
        """True when re-reading cannot give another result: a cheap ``lstat`` (and, for a
        host decided by a workspace's identity file, that file) decides."""
        if self.volatile or self.stat_key != metadata_stat_key(self.name, options):
            return False
        if self.host_root is None or self.worker is None:
            return True
        return self.worker.host_id == hosts.for_root(self.host_root)[0]


def metadata_stat_key(name: str, options: LocalOptions) -> tuple[object, ...] | None:
    try:
        st = os.lstat(options.directory / name / METADATA_FILE)
    except (OSError, ValueError):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _io_reason(exc: OSError) -> str:
    """An OS error as a short reason with no path in it."""
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link"
    if exc.errno in (errno.EISDIR, errno.ENOTDIR) or isinstance(exc, IsADirectoryError):
        return "it is not a regular file"
    if exc.errno == errno.ENOENT:
        return "the metadata file does not exist"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return os.strerror(exc.errno) if exc.errno else "I/O error"


def _display_field(value: object) -> str | None:
    """A role or profile: a string, or an object with a string ``name``."""
    if isinstance(value, dict):
        value = value.get("name")
    return safe_display(value)


def _role_and_profile(snapshot: object) -> tuple[str | None, str | None]:
    if not isinstance(snapshot, dict):
        return None, None
    role = _display_field(snapshot.get("role"))
    if role is None:
        claim = snapshot.get("role_claim")
        if isinstance(claim, dict):
            role = _display_field(claim.get("role"))
    profile = _display_field(snapshot.get("profile_selector"))
    if profile is None:
        profile = _display_field(snapshot.get("profile"))
    return role, profile


def _modified_at(st: os.stat_result) -> datetime | None:
    """The file's mtime, or None when it is outside what a datetime holds (tmpfs allows any)."""
    try:
        return datetime.fromtimestamp(st.st_mtime, UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _liveness_present(runtime_dir: Path, worker_name: str) -> bool:
    if worker_name in ("", ".", "..") or "/" in worker_name or "\x00" in worker_name:
        return False
    try:
        os.lstat(runtime_dir / worker_name / "sock")
    except (OSError, ValueError):
        return False
    return True


MAX_RUNS_LISTED: Final = 64
"""A runtime-managed Worker's ``runs`` entries looked at for a socket (bounds the work)."""


def _store_liveness_present(entry_dir: Path) -> bool:
    """A runtime-managed Worker's hint: some ``runs/<generation>/worker.sock`` exists."""
    try:
        with os.scandir(entry_dir / "runs") as runs:
            for count, run in enumerate(runs):
                if count >= MAX_RUNS_LISTED:
                    break
                try:
                    os.lstat(Path(run.path) / "worker.sock")
                except (OSError, ValueError):
                    continue
                return True
    except (OSError, ValueError):
        return False
    return False


def is_utf8_name(name: str) -> bool:
    """A file name as ``os`` gives it is valid UTF-8 (not carrying surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def entry_worker_id(name: str) -> str:
    """The worker id of the Worker directory ``name``.

    A name that is not UTF-8 (``os`` hands it over with surrogate escapes; yoi never writes
    one) is derived from its backslash-escaped text, so that it still gets a stable, valid id.
    """
    if is_utf8_name(name):
        return ids.local_worker_id(name)
    return ids.local_worker_id(os.fsencode(name).decode("utf-8", "backslashreplace"))


def evaluate_entry(
    name: str,
    options: LocalOptions,
    now: float | None = None,
    hosts: WorkspaceHosts | None = None,
) -> EntryResult:
    """Read ``<directory>/<name>/metadata.json`` into an :class:`EntryResult`. Never raises.

    One Worker directory must never stop the source from serving the others, so anything
    unforeseen becomes this entry's diagnostic (and a traceback in the operator log).
    ``hosts`` is the scan's :class:`WorkspaceHosts` (a fresh one when not given).
    """
    try:
        result = _evaluate_entry(name, options, now, hosts or WorkspaceHosts())
    except Exception:
        log.exception("local Worker entry could not be evaluated")
        result = _problem(
            name,
            entry_worker_id(name),
            ("failed",),
            METADATA_UNREADABLE,
            "local Worker metadata could not be read: internal error",
        )
    return replace(result, directory=options.directory)


def _evaluate_entry(
    name: str, options: LocalOptions, now: float | None, hosts: WorkspaceHosts
) -> EntryResult:
    worker_id = entry_worker_id(name)
    if not is_utf8_name(name):
        return _problem(
            name,
            worker_id,
            ("non-utf8-name",),
            METADATA_INVALID,
            "local Worker directory name is not valid UTF-8 and was not included",
        )
    entry_dir = options.directory / name
    try:
        if stat.S_ISLNK(os.lstat(entry_dir).st_mode):
            raise OSError(errno.ELOOP, "symbolic link")
    except OSError as exc:
        return _unreadable(name, worker_id, _io_reason(exc))
    path = entry_dir / METADATA_FILE
    try:
        data, st = read_regular_file(path, options.max_bytes)
    except FileTooLarge:
        return _problem(
            name,
            worker_id,
            ("too-large",),
            METADATA_INVALID,
            "local Worker metadata could not be parsed: larger than the size limit",
        )
    except OSError as exc:
        return _unreadable(name, worker_id, _io_reason(exc))
    except ValueError:
        return _unreadable(name, worker_id, "name", "invalid name")
    stat_key: tuple[object, ...] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    try:
        meta = decode_bounded(_DECODER.decode, data)
    except TooDeep:
        return _problem(
            name,
            worker_id,
            stat_key,
            METADATA_INVALID,
            "local Worker metadata could not be parsed: "
            f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
        )
    except msgspec.ValidationError as exc:
        _, at, tail = str(exc).rpartition(" - at `")
        where = tail.rstrip("`") if at else "$"
        return _problem(
            name,
            worker_id,
            stat_key,
            METADATA_INVALID,
            f"local Worker metadata could not be parsed: unexpected value at {where}",
        )
    except (msgspec.DecodeError, UnicodeDecodeError):
        return _problem(
            name,
            worker_id,
            stat_key,
            METADATA_INVALID,
            "local Worker metadata could not be parsed: malformed, truncated or non-UTF-8 JSON",
        )
    diagnostics: list[Diagnostic] = []
    worker_name = meta.worker_name
    if worker_name is None and meta.pod_name is not None:
        worker_name = meta.pod_name
        diagnostics.append(
            _diag(
                LEGACY_METADATA,
                "info",
                "local Worker metadata uses the legacy pod_name key",
                worker_id,
            )
        )
    if worker_name is None:
        return _problem(
            name,
            worker_id,
            stat_key,
            METADATA_INVALID,
            "local Worker metadata could not be parsed: worker_name is missing",
        )
    named = _workspace_id(meta.workspace_id)
    if named is None and meta.workspace_id is not None:
        return _problem(
            name,
            worker_id,
            stat_key,
            METADATA_INVALID,
            "local Worker metadata could not be parsed: workspace_id is not a workspace id",
        )
    root = ids.normalize_root(meta.workspace_root) if meta.workspace_root is not None else None
    if named is None and root is None:
        return _problem(
            name,
            worker_id,
            stat_key,
            WORKSPACE_ROOT_MISSING,
            "local Worker metadata did not include a workspace identity and was not included",
        )
    if options.bound_root is not None:
        bound = options.bound_root
        belongs = root == bound or (named is not None and named == hosts.workspace_id(bound))
        if not belongs:
            return _problem(
                name,
                worker_id,
                stat_key,
                WORKSPACE_NOT_VISIBLE,
                "local Worker metadata belongs to another workspace and was not included",
                severity="info",
                name_worker=False,
            )
        host_root: str | None = bound
    else:
        host_root = None if named is not None else root
    if host_root is not None:
        host_id, host_note = hosts.for_root(host_root)
    else:
        assert named is not None
        host_id, host_note = ids.local_host_id(named), None
    workspace_id = named if named is not None else ids.workspace_id_for_root(root or "")
    active = meta.active
    state = "active" if active is not None else "metadata_only"
    if active is None:
        status = "metadata_only"
    elif active.get("segment_id") is not None:
        status = "active:segment"
    else:
        status = "active:pending_segment"
    live: bool | None = None
    aged: bool | None = None
    if active is not None:
        if options.liveness_check:
            live = (
                _store_liveness_present(entry_dir)
                if options.runtime_managed
                else _liveness_present(options.runtime_dir, worker_name)
            )
            if not live:
                diagnostics.append(
                    _diag(
                        LIVENESS_MISSING,
                        "warning",
                        "local Worker claims to be active but its liveness hint is absent",
                        worker_id,
                    )
                )
        if options.max_age_seconds is not None:
            current = datetime.now(UTC).timestamp() if now is None else now
            aged = current - st.st_mtime > options.max_age_seconds
            if aged:
                diagnostics.append(
                    _diag(
                        METADATA_EXPIRED,
                        "warning",
                        "local Worker metadata is older than the configured maximum age",
                        worker_id,
                    )
                )
        if live is False or aged:
            state = "stale"
    role, profile = _role_and_profile(meta.resolved_manifest_snapshot)
    label = safe_display(worker_name) or worker_id
    naming = worker_naming(worker_id, label, profile, internal=False)
    worker = WorkerRecord(
        runtime_id=options.runtime_id,
        worker_id=worker_id,
        host_id=host_id,
        display_name=naming.display_name,
        label=label,
        role=role,
        profile=profile,
        singleton_key=naming.singleton_key,
        tags=naming.tags,
        workspace=worker_workspace("local_compatibility", workspace_id),
        state="metadata_only" if active is None else "active",
        status=status,
        last_seen_at=_modified_at(st),
        implementation=Implementation(IMPLEMENTATION_KIND, safe_display(name) or worker_id),
        capabilities=NO_CAPABILITIES,
        diagnostics=tuple(diagnostics),
        registry_state=state,
        stale=state == "stale",
    )
    volatile = active is not None and (options.liveness_check or aged is not None)
    fingerprint = (*stat_key, live, aged, host_id, host_note)
    return EntryResult(
        name, worker_id, fingerprint, worker, (), stat_key, volatile, host_root, host_note
    )


def _workspace_id(value: str | None) -> str | None:
    """A metadata ``workspace_id`` usable as a workspace id: what a caller can name in
    ``X-Yoi-Workspace`` (1 to 120 bytes of ``[A-Za-z0-9_:-]``; yoi's are UUIDs), so it can
    never carry a path."""
    return value if value is not None and ids.is_valid_identifier(value) else None


def _unreadable(name: str, worker_id: str, reason: str, detail: str | None = None) -> EntryResult:
    """The entry's metadata could not be read: ``reason`` goes into the fingerprint and,
    unless ``detail`` says it better, into the message."""
    return _problem(
        name,
        worker_id,
        ("unreadable", reason),
        METADATA_UNREADABLE,
        f"local Worker metadata could not be read: {detail or reason}",
    )


def _problem(
    name: str,
    worker_id: str,
    fingerprint: tuple[object, ...],
    code: str,
    message: str,
    *,
    severity: Severity = "warning",
    name_worker: bool = True,
) -> EntryResult:
    diag = _diag(code, severity, message, worker_id if name_worker else None)
    stat_key = fingerprint if len(fingerprint) == 4 else None
    return EntryResult(name, worker_id, fingerprint, None, (diag,), stat_key, stat_key is None)
