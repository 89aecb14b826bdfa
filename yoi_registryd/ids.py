"""Identifier validation and the upstream-compatible id derivation (contract section 1).

Ids are authority: a runtime is named by ``runtime_id`` and a worker by the pair
``runtime_id + worker_id``. Caller-supplied ids are validated before any lookup, and no id
is ever turned back into a path. Derived ids must be byte-identical to upstream yoi's, so a
backend that stored an upstream id still resolves it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final, Literal

from yoi_registryd.errors import InvalidIdentifier

MAX_ID_BYTES: Final = 120
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_:-]+")
"""What every runtime, worker and host id matches (bounded by ``MAX_ID_BYTES`` too)."""

IdKind = Literal["runtime_id", "worker_id", "host_id"]

LOCAL_WORKER_PREFIX: Final = "local-worker-"
LOCAL_HOST_PREFIX: Final = "local-"
EMBEDDED_HOST_PREFIX: Final = "embedded-"
REMOTE_HOST_PREFIX: Final = "remote-"


def is_valid_identifier(value: str) -> bool:
    """True when ``value`` is a well-formed runtime, worker or host id."""
    return (
        bool(value)
        and len(value.encode("utf-8")) <= MAX_ID_BYTES
        and ID_PATTERN.fullmatch(value) is not None
    )


def validate_identifier(value: str, kind: IdKind) -> str:
    """Return ``value`` unchanged, or raise ``InvalidIdentifier`` naming the parameter."""
    if not is_valid_identifier(value):
        raise InvalidIdentifier(kind)
    return value


def _sanitize(name: str) -> str:
    """Lowercase ASCII letters and digits, keep ``-`` and ``_``, replace everything else."""
    out = []
    for ch in name:
        if ch.isascii() and ch.isalnum():
            out.append(ch.lower())
        elif ch in "-_":
            out.append(ch)
        else:
            out.append("-")
    return "".join(out)


def derive_id(prefix: str, raw_name: str) -> str:
    """Derive a stable id from a native name that is not itself an id.

    ``prefix + body + "-" + digest``: the digest (first 16 hex chars of sha256 of the raw
    name) keeps apart names that sanitise to the same body (``foo.bar`` / ``foo-bar``).
    """
    digest = hashlib.sha256(raw_name.encode("utf-8")).hexdigest()[:16]
    body = _sanitize(raw_name).strip("-") or "id"
    room = max(MAX_ID_BYTES - len(prefix) - 17, 1)
    if len(body) > room:
        body = body[:room].strip("-") or "id"
    derived = f"{prefix}{body}-{digest}"
    if len(derived) > MAX_ID_BYTES:
        # Only a prefix longer than 101 bytes gets here; upstream cuts the prefix instead.
        derived = f"{prefix[: MAX_ID_BYTES - 17]}-{digest}"
    return derived


def local_worker_id(worker_name: str) -> str:
    """The id upstream gives a Worker of the local compatibility source."""
    return derive_id(LOCAL_WORKER_PREFIX, worker_name)


def local_host_id(workspace_id: str) -> str:
    """The id upstream gives the host of a local workspace."""
    return derive_id(LOCAL_HOST_PREFIX, workspace_id)


def normalize_root(root: str) -> str:
    """Lexical path comparison as upstream: ``\\`` -> ``/``, trailing ``/`` stripped."""
    normalized = root.replace("\\", "/").rstrip("/")
    return normalized or "/"


def workspace_id_for_root(root: str) -> str:
    """An opaque workspace id for a workspace root: a digest, never the path itself."""
    digest = hashlib.sha256(normalize_root(root).encode("utf-8", "surrogatepass")).hexdigest()
    return f"ws-{digest[:24]}"
