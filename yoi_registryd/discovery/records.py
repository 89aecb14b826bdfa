"""What a discovery backend found, turned into remote source configurations.

A backend yields runtime descriptions (``runtime_id``, ``base_url``, ``label``,
``workspace_id``). Each becomes a :class:`~yoi_registryd.config.RemoteSourceConfig` built
from the discovery entry (its credentials, never the record's) and is checked as a
configured remote source is; a record that fails is refused with a typed reason and the
rest are kept. Reasons never repeat a URL.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from yoi_registryd.config import DiscoveryConfig, RemoteSourceConfig
from yoi_registryd.ids import is_valid_identifier


class RuntimeDescription(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One runtime as a backend describes it."""

    runtime_id: str
    base_url: str
    label: str | None = None
    workspace_id: str | None = None


class Refusal(msgspec.Struct, frozen=True):
    """A record discovery did not turn into a runtime, and why (a typed code)."""

    record: str
    """Where the record was: its runtime id when it has a valid one, else its position."""
    code: str
    message: str


INVALID_RECORD: Final = "invalid_record"
INVALID_RUNTIME_ID: Final = "invalid_runtime_id"
INVALID_DESCRIPTION: Final = "invalid_description"
DUPLICATE_RUNTIME_ID: Final = "duplicate_runtime_id"
WORKSPACE_MISMATCH: Final = "workspace_mismatch"
RUNTIME_ID_IN_USE: Final = "runtime_id_in_use"
TOO_MANY_RUNTIMES: Final = "too_many_runtimes"
TEMPLATE_FAILED: Final = "template_failed"


def describe(raw: Any, where: str) -> RuntimeDescription | Refusal:
    """Decode one record of a backend (a mapping) or refuse it (a backend that could not
    make a record of what it found passes its :class:`Refusal` through)."""
    if isinstance(raw, Refusal):
        return raw
    try:
        return msgspec.convert(raw, RuntimeDescription)
    except msgspec.ValidationError as exc:
        # msgspec's message names the field, never the value.
        return Refusal(where, INVALID_RECORD, str(exc))


def outcome(entry: DiscoveryConfig, where: str, raw: Any) -> RemoteSourceConfig | Refusal:
    """One record on its own: its remote source, or why it is refused."""
    described = describe(raw, where)
    if isinstance(described, Refusal):
        return described
    return _to_source(entry, described, where)


def to_sources(
    entry: DiscoveryConfig, found: list[tuple[str, Any]]
) -> tuple[list[RemoteSourceConfig], list[Refusal]]:
    """The remote sources of the records ``found`` (each with where it was), and the refused."""
    return select(entry, [outcome(entry, where, raw) for where, raw in found])


def select(
    entry: DiscoveryConfig, outcomes: list[RemoteSourceConfig | Refusal]
) -> tuple[list[RemoteSourceConfig], list[Refusal]]:
    """What a whole set keeps, in order: the first record of each runtime id, up to
    ``max_runtimes``; the others are refused."""
    sources: dict[str, RemoteSourceConfig] = {}
    refused: list[Refusal] = []
    for result in outcomes:
        if isinstance(result, Refusal):
            refused.append(result)
        elif result.runtime_id in sources:
            refused.append(
                Refusal(result.runtime_id, DUPLICATE_RUNTIME_ID, "listed more than once")
            )
        elif len(sources) >= entry.max_runtimes:
            refused.append(
                Refusal(result.runtime_id, TOO_MANY_RUNTIMES, f"more than {entry.max_runtimes}")
            )
        else:
            sources[result.runtime_id] = result
    return list(sources.values()), refused


def _to_source(
    entry: DiscoveryConfig, d: RuntimeDescription, where: str
) -> RemoteSourceConfig | Refusal:
    if not is_valid_identifier(d.runtime_id):
        return Refusal(where, INVALID_RUNTIME_ID, "runtime_id is not a valid id ([A-Za-z0-9_:-])")
    if d.workspace_id is not None:
        if not is_valid_identifier(d.workspace_id):
            return Refusal(d.runtime_id, INVALID_DESCRIPTION, "workspace_id is not a valid id")
        if entry.workspace_id is not None and d.workspace_id != entry.workspace_id:
            return Refusal(
                d.runtime_id,
                WORKSPACE_MISMATCH,
                "workspace_id differs from the discovery entry's workspace_id",
            )
    workspaces = () if d.workspace_id is None else (d.workspace_id,)
    source = entry.remote_template(d.runtime_id, d.base_url, d.label, workspaces)
    problems = source.validate("record")
    if problems:
        return Refusal(d.runtime_id, INVALID_DESCRIPTION, "; ".join(problems))
    return source
