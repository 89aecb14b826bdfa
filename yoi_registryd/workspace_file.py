"""A yoi workspace's own id, from ``<workspace_root>/.yoi/workspace.toml`` (contract-v2 1.9).

yoi names a workspace by a UUIDv7 kept in that file, and derives a local host's id from it
(``local-`` + the id, by ``ids.derive_id``). The file is read as yoi reads it: exactly the
keys ``workspace_id`` (a UUIDv7 in canonical lowercase form), ``created_at`` (RFC 3339,
UTC, ending in ``Z``) and ``display_name`` (not blank, no control characters), plus yoi's
optional ``[ticket]`` table; anything else makes the file invalid. The registry never
creates it (yoi does, when its backend first opens the workspace) and never serves it.
"""

from __future__ import annotations

import tomllib
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

from yoi_registryd.files import FileTooLarge, read_regular_file

WORKSPACE_FILE: Final = Path(".yoi") / "workspace.toml"
MAX_WORKSPACE_FILE_BYTES: Final = 64 * 1024
_REQUIRED: Final = frozenset({"workspace_id", "created_at", "display_name"})
_OPTIONAL: Final = frozenset({"ticket"})

Problem = Literal["missing", "unreadable", "invalid"]


@dataclass(frozen=True, slots=True)
class WorkspaceIdentity:
    """What a workspace root's identity file says: its id, or why there is none."""

    workspace_id: str | None
    problem: Problem | None = None


def read_workspace_identity(root: str) -> WorkspaceIdentity:
    """The id in ``<root>/.yoi/workspace.toml``, or the problem with it. Never raises."""
    path = Path(root)
    if not path.is_absolute():
        return WorkspaceIdentity(None, "missing")
    try:
        data, _ = read_regular_file(path / WORKSPACE_FILE, MAX_WORKSPACE_FILE_BYTES)
    except FileNotFoundError:
        return WorkspaceIdentity(None, "missing")
    except (OSError, ValueError, FileTooLarge):
        return WorkspaceIdentity(None, "unreadable")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return WorkspaceIdentity(None, "invalid")
    workspace_id = _validated_id(document)
    if workspace_id is None:
        return WorkspaceIdentity(None, "invalid")
    return WorkspaceIdentity(workspace_id)


def _validated_id(document: dict[str, object]) -> str | None:
    keys = set(document)
    if not keys >= _REQUIRED or keys - _REQUIRED - _OPTIONAL:
        return None
    if "ticket" in document and not isinstance(document["ticket"], dict):
        return None
    workspace_id = document["workspace_id"]
    if not (
        is_canonical_uuid7(workspace_id)
        and _is_utc_rfc3339(document["created_at"])
        and _is_display_name(document["display_name"])
    ):
        return None
    assert isinstance(workspace_id, str)
    return workspace_id


def is_canonical_uuid7(value: object) -> bool:
    """A UUID of version 7 written exactly in its canonical lowercase hyphenated form."""
    if not isinstance(value, str):
        return False
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 7 and str(parsed) == value


def _is_utc_rfc3339(value: object) -> bool:
    if not isinstance(value, str) or not value.endswith("Z") or "T" not in value:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_display_name(value: object) -> bool:
    return (
        isinstance(value, str)
        and bool(value.strip())
        and not any(unicodedata.category(ch) == "Cc" for ch in value)
    )
