"""Read one on-disk yoi Worker directory into a safe record or a diagnostic (contract section 2).

Pure and synchronous: the local source runs it in a worker thread. Any bytes in give a
record or a diagnostic out, never an exception. Nothing read here that is sensitive
(session ids, workspace roots, children's socket paths, the manifest) is ever copied into
what it returns; diagnostic messages never name a path, a file or a session.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from yoi_registryd.ids import derive_id, local_worker_id
from yoi_registryd.json_depth import MAX_JSON_DEPTH, TooDeep, decode_bounded
from yoi_registryd.model import (
    Diagnostic,
    Implementation,
    Severity,
    WorkerCapabilities,
    WorkerRecord,
    WorkspaceInfo,
)

log = logging.getLogger(__name__)

METADATA_FILE: Final = "metadata.json"
LOCAL_HOST_PREFIX: Final = "local-"
IMPLEMENTATION_KIND: Final = "local_pod"
MAX_DISPLAY_CHARS: Final = 80

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

NO_CAPABILITIES: Final = WorkerCapabilities()


def safe_display(value: object) -> str | None:
    """Display strings: drop control characters, ``/`` and ``\\``; first 80 chars; "" -> None."""
    if not isinstance(value, str):
        return None
    kept = "".join(
        ch for ch in value if ch not in "/\\" and not (ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0)
    )
    return kept[:MAX_DISPLAY_CHARS] or None


def normalize_root(root: str) -> str:
    """Lexical path comparison as upstream: ``\\`` -> ``/``, trailing ``/`` stripped."""
    normalized = root.replace("\\", "/").rstrip("/")
    return normalized or "/"


def workspace_id_for_root(root: str) -> str:
    """An opaque workspace id for a workspace root: a digest, never the path itself."""
    digest = hashlib.sha256(normalize_root(root).encode("utf-8", "surrogatepass")).hexdigest()
    return f"ws-{digest[:24]}"


def local_host_id(workspace_id: str) -> str:
    return derive_id(LOCAL_HOST_PREFIX, workspace_id)


def _diag(code: str, severity: Severity, message: str, worker_id: str | None) -> Diagnostic:
    return Diagnostic(code=code, severity=severity, message=message, worker_id=worker_id)


class _Metadata(msgspec.Struct):
    """The keys we read; unknown keys are ignored, as upstream does."""

    worker_name: str | None = None
    pod_name: str | None = None
    active: dict[str, Any] | None = None
    workspace_root: str | None = None
    resolved_manifest_snapshot: Any = None


_DECODER: Final = msgspec.json.Decoder(_Metadata)


@dataclass(frozen=True, slots=True)
class LocalOptions:
    """What evaluating one Worker directory depends on, besides the directory itself."""

    runtime_id: str
    pods_dir: Path
    runtime_dir: Path
    bound_root: str | None
    liveness_check: bool
    max_age_seconds: float | None
    max_bytes: int


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

    def unchanged(self, options: LocalOptions) -> bool:
        """True when re-reading cannot give another result: a cheap ``lstat`` decides."""
        return not self.volatile and self.stat_key == metadata_stat_key(self.name, options)


def metadata_stat_key(name: str, options: LocalOptions) -> tuple[object, ...] | None:
    try:
        st = os.lstat(options.pods_dir / name / METADATA_FILE)
    except (OSError, ValueError):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_regular_file(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """Read a regular file without following a symlink or blocking on a FIFO."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file")
        if st.st_size > max_bytes:
            raise _TooLarge()
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise _TooLarge()
        return data, st
    finally:
        os.close(fd)


class _TooLarge(Exception):
    pass


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
        return local_worker_id(name)
    return local_worker_id(os.fsencode(name).decode("utf-8", "backslashreplace"))


def evaluate_entry(name: str, options: LocalOptions, now: float | None = None) -> EntryResult:
    """Read ``<pods>/<name>/metadata.json`` into an :class:`EntryResult`. Never raises.

    One Worker directory must never stop the source from serving the others, so anything
    unforeseen becomes this entry's diagnostic (and a traceback in the operator log).
    """
    try:
        return _evaluate_entry(name, options, now)
    except Exception:
        log.exception("local Worker entry could not be evaluated")
        return _problem(
            name,
            entry_worker_id(name),
            ("failed",),
            METADATA_UNREADABLE,
            "local Worker metadata could not be read: internal error",
        )


def _evaluate_entry(name: str, options: LocalOptions, now: float | None) -> EntryResult:
    worker_id = entry_worker_id(name)
    if not is_utf8_name(name):
        return _problem(
            name,
            worker_id,
            ("non-utf8-name",),
            METADATA_INVALID,
            "local Worker directory name is not valid UTF-8 and was not included",
        )
    entry_dir = options.pods_dir / name
    try:
        if stat.S_ISLNK(os.lstat(entry_dir).st_mode):
            raise OSError(errno.ELOOP, "symbolic link")
    except OSError as exc:
        return _unreadable(name, worker_id, _io_reason(exc))
    path = entry_dir / METADATA_FILE
    try:
        data, st = _read_regular_file(path, options.max_bytes)
    except _TooLarge:
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
    if meta.workspace_root is None:
        return _problem(
            name,
            worker_id,
            stat_key,
            WORKSPACE_ROOT_MISSING,
            "local Worker metadata did not include a workspace identity and was not included",
        )
    root = normalize_root(meta.workspace_root)
    if options.bound_root is not None and root != options.bound_root:
        return _problem(
            name,
            worker_id,
            stat_key,
            WORKSPACE_NOT_VISIBLE,
            "local Worker metadata belongs to another workspace and was not included",
            severity="info",
            name_worker=False,
        )
    workspace_id = workspace_id_for_root(root)
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
            live = _liveness_present(options.runtime_dir, worker_name)
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
    worker = WorkerRecord(
        runtime_id=options.runtime_id,
        worker_id=worker_id,
        host_id=local_host_id(workspace_id),
        label=safe_display(worker_name),
        role=role,
        profile=profile,
        workspace=WorkspaceInfo(visibility="workspace", identity=workspace_id),
        state=state,
        status=status,
        last_seen_at=_modified_at(st),
        implementation=Implementation(IMPLEMENTATION_KIND, safe_display(name)),
        capabilities=NO_CAPABILITIES,
        diagnostics=tuple(diagnostics),
    )
    volatile = active is not None and (options.liveness_check or aged is not None)
    return EntryResult(name, worker_id, (*stat_key, live, aged), worker, (), stat_key, volatile)


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
