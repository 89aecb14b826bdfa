"""Projection of a Snapshot into the wire bodies of the backend API (contract section 4).

Pure functions from (snapshot, validated query) to encoded JSON bytes, plus a small cache so
that a body is encoded once per revision and view rather than once per request. Records
are safe by construction (see ``yoi_registryd.model``); this module only selects, orders and
pages them.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Generic, TypeVar

import msgspec

from yoi_registryd.errors import InvalidQuery
from yoi_registryd.model import Diagnostic, HostRecord, RuntimeRecord, WorkerRecord
from yoi_registryd.registry import RuntimeEntry, Snapshot

DEFAULT_LIMIT: Final = 200
MAX_LIMIT: Final = 1000
MAX_ENVELOPE_DIAGNOSTICS: Final = 64
LIST_SOURCE: Final = "worker_runtime_registry"

T = TypeVar("T")


class ListEnvelope(msgspec.Struct, Generic[T]):
    """Every list response: upstream's envelope plus an opaque ``next_cursor``."""

    items: list[T]
    diagnostics: list[Diagnostic]
    limit: int
    next_cursor: str | None
    source: str = LIST_SOURCE
    workspace_id: str | None = None


RuntimeList = ListEnvelope[RuntimeRecord]
HostList = ListEnvelope[HostRecord]
WorkerList = ListEnvelope[WorkerRecord]

_encoder: Final = msgspec.json.Encoder()
_cursor_decoder: Final = msgspec.json.Decoder(list[str])


def encode(value: object) -> bytes:
    return _encoder.encode(value)


# -- cursors ---------------------------------------------------------------------------


def encode_cursor(*position: str) -> str:
    """An opaque cursor: the sort key of the last item served."""
    raw = _encoder.encode(list(position))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, parts: int) -> tuple[str, ...]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = _cursor_decoder.decode(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (binascii.Error, msgspec.DecodeError, msgspec.ValidationError, UnicodeEncodeError):
        raise InvalidQuery("cursor is not one this registry issued", "cursor") from None
    if len(position) != parts:
        raise InvalidQuery("cursor does not belong to this list", "cursor")
    return tuple(position)


# -- query parsing ---------------------------------------------------------------------


class ListQuery(msgspec.Struct, frozen=True):
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


def parse_list_query(args: Iterable[tuple[str, str]]) -> ListQuery:
    """Validate ``limit`` and ``cursor``; reject unknown or repeated parameters."""
    values: dict[str, str] = {}
    for key, value in args:
        if key not in ("limit", "cursor"):
            raise InvalidQuery(f"unknown query parameter {_quoted(key)}", "query")
        if key in values:
            raise InvalidQuery(f"query parameter {key!r} is repeated", key)
        values[key] = value
    limit = DEFAULT_LIMIT
    if "limit" in values:
        text = values["limit"]
        if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise InvalidQuery(f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
        limit = int(text)
    cursor = values.get("cursor")
    if cursor is not None and (not cursor or len(cursor) > 1024):
        raise InvalidQuery("cursor is not one this registry issued", "cursor")
    return ListQuery(limit, cursor)


def reject_query(args: Iterable[tuple[str, str]]) -> None:
    """For routes that take no query parameters."""
    for key, _ in args:
        raise InvalidQuery(f"unknown query parameter {_quoted(key)}", "query")


def _quoted(key: str) -> str:
    """A parameter name, shortened and made printable, for an error message."""
    printable = "".join(ch if ch.isprintable() else "?" for ch in key[:64])
    return repr(printable)


# -- pages -----------------------------------------------------------------------------


def _take(
    items: Iterator[T], limit: int, key: Callable[[T], tuple[str, ...]]
) -> tuple[list[T], str | None]:
    page: list[T] = []
    for item in items:
        if len(page) == limit:
            return page, encode_cursor(*key(page[-1]))
        page.append(item)
    return page, None


def _cap(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    if len(diagnostics) <= MAX_ENVELOPE_DIAGNOSTICS:
        return diagnostics
    omitted = len(diagnostics) - MAX_ENVELOPE_DIAGNOSTICS + 1
    head = diagnostics[: MAX_ENVELOPE_DIAGNOSTICS - 1]
    head.append(
        Diagnostic(
            "diagnostics_truncated",
            "info",
            f"{omitted} more diagnostics are not listed here; see each runtime's detail",
        )
    )
    return head


def _runtime_diagnostics(entries: Iterable[RuntimeEntry]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for entry in entries:
        out.extend(entry.record.diagnostics)
    return _cap(out)


def runtimes_page(snapshot: Snapshot, query: ListQuery) -> bytes:
    after = decode_cursor(query.cursor, 1)[0] if query.cursor else None
    ids = snapshot.sorted_runtime_ids
    records = (snapshot.runtimes[rid].record for rid in ids if after is None or rid > after)
    items, cursor = _take(records, query.limit, lambda r: (r.runtime_id,))
    return encode(RuntimeList(items, [], query.limit, cursor))


def hosts_page(snapshot: Snapshot, query: ListQuery) -> bytes:
    after = decode_cursor(query.cursor, 2) if query.cursor else None

    def hosts() -> Iterator[HostRecord]:
        for rid in snapshot.sorted_runtime_ids:
            if after is not None and rid < after[0]:
                continue
            for host in sorted(snapshot.runtimes[rid].hosts, key=lambda h: h.host_id):
                if after is not None and (rid, host.host_id) <= after:
                    continue
                yield host

    items, cursor = _take(hosts(), query.limit, lambda h: (h.runtime_id, h.host_id))
    return encode(HostList(items, [], query.limit, cursor))


def workers_page(snapshot: Snapshot, query: ListQuery) -> bytes:
    """All workers, ordered by ``(runtime_id, worker_id)``."""
    after = decode_cursor(query.cursor, 2) if query.cursor else None
    position = (after[0], after[1]) if after else None
    items, cursor = _take(
        snapshot.iter_workers_after(position), query.limit, lambda w: (w.runtime_id, w.worker_id)
    )
    diagnostics = _runtime_diagnostics(snapshot.runtimes[r] for r in snapshot.sorted_runtime_ids)
    return encode(WorkerList(items, diagnostics, query.limit, cursor))


def runtime_workers_page(entry: RuntimeEntry, query: ListQuery) -> bytes:
    after = decode_cursor(query.cursor, 1)[0] if query.cursor else None
    items, cursor = _take(entry.iter_workers_after(after), query.limit, lambda w: (w.worker_id,))
    return encode(WorkerList(items, _cap(list(entry.record.diagnostics)), query.limit, cursor))


def host_workers_page(entry: RuntimeEntry, host: HostRecord, query: ListQuery) -> bytes:
    after = decode_cursor(query.cursor, 1)[0] if query.cursor else None
    workers = (w for w in entry.iter_workers_after(after) if w.host_id == host.host_id)
    items, cursor = _take(workers, query.limit, lambda w: (w.worker_id,))
    diagnostics = _cap([*host.diagnostics, *entry.record.diagnostics])
    return encode(WorkerList(items, diagnostics, query.limit, cursor))


# -- the per-revision body cache ----------------------------------------------------------


class BodyCache:
    """Encoded bodies of the current revision, keyed by view; emptied when it moves on."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._revision = -1
        self._bodies: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._max = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, revision: int, key: tuple[object, ...], build: Callable[[], bytes]) -> bytes:
        if revision != self._revision:
            self._bodies.clear()
            self._revision = revision
        body = self._bodies.get(key)
        if body is not None:
            self.hits += 1
            self._bodies.move_to_end(key)
            return body
        self.misses += 1
        body = build()
        self._bodies[key] = body
        if len(self._bodies) > self._max:
            self._bodies.popitem(last=False)
        return body
