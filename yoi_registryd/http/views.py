"""Projection of a Snapshot into the wire bodies of the backend API (contract section 4).

Pure functions from (snapshot, validated query, visibility) to encoded JSON bytes, plus a
small cache so that a body is encoded once per revision and view rather than once per
request. Records are safe by construction (see ``yoi_registryd.model``); this module only
selects, orders and pages them.

Visibility (``yoi_registryd.policy``) is applied *before* paging: items the acting workspace
may not see are skipped as if absent, so ``limit``, ``next_cursor`` and counts only ever
concern visible items, and a page reports (``Rendered.filtered``) whether the policy hid
anything in its range.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Generic, NamedTuple, TypeVar, cast

import msgspec

from yoi_registryd.errors import (
    HostNotVisible,
    InvalidQuery,
    RuntimeNotVisible,
    WorkerNotVisible,
)
from yoi_registryd.http.cursors import CURSOR_REFUSED, MAX_CURSOR_CHARS, UNBOUND, ListCursors
from yoi_registryd.model import (
    Diagnostic,
    HostRecord,
    RuntimeRecord,
    WorkerDetail,
    WorkerRecord,
)
from yoi_registryd.policy import SEES_ALL, Visibility
from yoi_registryd.registry import RuntimeEntry, Snapshot

DEFAULT_LIMIT: Final = 200
MAX_LIMIT: Final = 1000
_LIMIT_DIGITS: Final = len(str(MAX_LIMIT))
MAX_ENVELOPE_DIAGNOSTICS: Final = 64
LIST_SOURCE: Final = "worker_runtime_registry"

T = TypeVar("T")
V = TypeVar("V")


NO_WORKSPACE: Final = ""
"""The envelope's ``workspace_id`` when the caller acts for no one workspace."""


class ListEnvelope(msgspec.Struct, Generic[T], kw_only=True):
    """Every list response: yoi's envelope (its fields in its order) plus an opaque
    ``next_cursor``."""

    workspace_id: str
    """The acting workspace the list was filtered for (``X-Yoi-Workspace``, the
    ``/api/w/{workspace_id}`` path, or the one workspace a client is allowed);
    ``""`` when the caller acts for no one workspace and sees every workspace's items."""
    limit: int
    items: list[T]
    source: str = LIST_SOURCE
    diagnostics: list[Diagnostic]
    next_cursor: str | None


RuntimeList = ListEnvelope[RuntimeRecord]
HostList = ListEnvelope[HostRecord]
WorkerList = ListEnvelope[WorkerRecord]

_encoder: Final = msgspec.json.Encoder()


def encode(value: object) -> bytes:
    return _encoder.encode(value)


class Rendered(NamedTuple):
    """An encoded body, and whether the policy hid something from it."""

    body: bytes
    filtered: bool = False


class _Filter:
    """Applies a visibility to a stream of items and remembers whether it hid any."""

    __slots__ = ("hid", "view")

    def __init__(self, view: Visibility) -> None:
        self.view = view
        self.hid = False

    def keep(self, visible: bool) -> bool:
        if not visible:
            self.hid = True
        return visible

    def workers(self, workers: Iterator[WorkerRecord]) -> Iterator[WorkerRecord]:
        if not self.view.restricted:
            return workers
        return (w for w in workers if self.keep(self.view.worker_visible(w)))


# -- lookups under a visibility ----------------------------------------------------------


def visible_entry(snapshot: Snapshot, runtime_id: str, view: Visibility) -> RuntimeEntry:
    entry = snapshot.runtime(runtime_id)
    if not view.runtime_visible(entry.record):
        raise RuntimeNotVisible(runtime_id)
    return entry


def visible_worker(
    snapshot: Snapshot, runtime_id: str, worker_id: str, view: Visibility
) -> WorkerRecord:
    visible_entry(snapshot, runtime_id, view)
    worker = snapshot.worker(runtime_id, worker_id)
    if not view.worker_visible(worker):
        raise WorkerNotVisible(runtime_id, worker_id)
    return worker


def visible_host(
    snapshot: Snapshot, host_id: str, view: Visibility
) -> tuple[RuntimeEntry, HostRecord]:
    entry, host = snapshot.host(host_id)
    if not (view.runtime_visible(entry.record) and view.host_visible(host)):
        raise HostNotVisible(host_id)
    return entry, host


def _visible_diagnostics(entry: RuntimeEntry, view: Visibility) -> tuple[Diagnostic, ...]:
    """A runtime's diagnostics without those about workers the view may not see."""
    diagnostics = entry.record.diagnostics
    if not view.restricted:
        return diagnostics
    workers = entry.workers
    return tuple(
        d
        for d in diagnostics
        if d.worker_id is None
        or (worker := workers.get(d.worker_id)) is None
        or view.worker_visible(worker)
    )


def visible_runtime(entry: RuntimeEntry, view: Visibility) -> tuple[RuntimeRecord, bool]:
    """The runtime record as ``view`` sees it: hosts, worker count and diagnostics of what it
    may not see are left out. True when something was."""
    record = entry.record
    if not view.restricted:
        return record, False
    hidden = sum(1 for w in entry.workers.values() if not view.worker_visible(w))
    hosts = {h.host_id for h in entry.hosts if view.host_visible(h)}
    host_ids = tuple(h for h in record.host_ids if h in hosts)
    diagnostics = _visible_diagnostics(entry, view)
    if not hidden and host_ids == record.host_ids and diagnostics == record.diagnostics:
        return record, False
    trimmed = msgspec.structs.replace(
        record,
        host_ids=host_ids,
        worker_count=max(0, record.worker_count - hidden),
        diagnostics=diagnostics,
    )
    return trimmed, True


def runtime_detail(snapshot: Snapshot, runtime_id: str, view: Visibility = SEES_ALL) -> Rendered:
    record, trimmed = visible_runtime(visible_entry(snapshot, runtime_id, view), view)
    return Rendered(encode(record), trimmed)


def worker_detail(
    snapshot: Snapshot, runtime_id: str, worker_id: str, view: Visibility = SEES_ALL
) -> Rendered:
    return Rendered(encode(WorkerDetail.of(visible_worker(snapshot, runtime_id, worker_id, view))))


# -- query parsing ---------------------------------------------------------------------


class ListQuery(msgspec.Struct, frozen=True):
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    cursors: ListCursors = UNBOUND
    """Seals and opens this list's cursors for the caller (``http/cursors.py``)."""

    def bound(self, cursors: ListCursors) -> ListQuery:
        return msgspec.structs.replace(self, cursors=cursors)


def parse_list_query(args: Iterable[tuple[str, str]]) -> ListQuery:
    """Validate ``limit`` and ``cursor``; reject unknown or repeated parameters."""
    values: dict[str, str] = {}
    for key, value in args:
        if key not in ("limit", "cursor"):
            raise InvalidQuery(f"unknown query parameter {quoted_key(key)}", "query")
        if key in values:
            raise InvalidQuery(f"query parameter {key!r} is repeated", key)
        values[key] = value
    limit = DEFAULT_LIMIT
    if "limit" in values:
        text = values["limit"]
        # The length first: int() of thousands of digits raises (and costs) before the range
        # could refuse it.
        if len(text) > _LIMIT_DIGITS or not text.isascii() or not text.isdigit():
            raise InvalidQuery(f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
        if not 1 <= int(text) <= MAX_LIMIT:
            raise InvalidQuery(f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
        limit = int(text)
    cursor = values.get("cursor")
    if cursor is not None and (not cursor or len(cursor) > MAX_CURSOR_CHARS):
        raise InvalidQuery(CURSOR_REFUSED, "cursor")
    return ListQuery(limit, cursor)


def reject_query(args: Iterable[tuple[str, str]]) -> None:
    """For routes that take no query parameters."""
    for key, _ in args:
        raise InvalidQuery(f"unknown query parameter {quoted_key(key)}", "query")


def quoted_key(key: str) -> str:
    """A parameter name, shortened and made printable, for an error message."""
    printable = "".join(ch if ch.isprintable() else "?" for ch in key[:64])
    return repr(printable)


# -- pages -----------------------------------------------------------------------------


def take_page(
    items: Iterator[T], query: ListQuery, key: Callable[[T], tuple[str, ...]]
) -> tuple[list[T], str | None]:
    """The first ``query.limit`` items, and the cursor after the last when more follow."""
    page: list[T] = []
    for item in items:
        if len(page) == query.limit:
            return page, query.cursors.seal(key(page[-1]))
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


def resume_after(query: ListQuery) -> str | None:
    """The id a one-part cursor resumes after (lists within one runtime, runtimes)."""
    return query.cursors.open(query.cursor, 1)[0] if query.cursor else None


def _after_pair(query: ListQuery) -> tuple[str, str] | None:
    """The ``(runtime_id, id)`` a two-part cursor resumes after (registry-wide lists)."""
    if not query.cursor:
        return None
    runtime_id, item_id = query.cursors.open(query.cursor, 2)
    return runtime_id, item_id


def _registry_wide_key(worker: WorkerRecord) -> tuple[str, ...]:
    return (worker.runtime_id, worker.worker_id)


def _in_runtime_key(worker: WorkerRecord) -> tuple[str, ...]:
    return (worker.worker_id,)


class PageRequest(NamedTuple):
    """One page of a list as one caller asks for it: which page, what the caller may see,
    and the acting workspace its envelope names (None: no one workspace)."""

    query: ListQuery
    view: Visibility = SEES_ALL
    workspace_id: str | None = None


def _page(
    items: Iterator[T],
    key: Callable[[T], tuple[str, ...]],
    ask: PageRequest,
    seen: _Filter,
    diagnostics: list[Diagnostic],
) -> Rendered:
    """Encode one page of ``items`` (filtered through ``seen``, which is read only once the
    page is taken); ``key`` gives the cursor of the last item."""
    page, cursor = take_page(items, ask.query, key)
    body = envelope(page, ask.query, cursor, diagnostics, ask.workspace_id)
    return Rendered(encode(body), seen.hid)


def _workers_page(
    workers: Iterator[WorkerRecord],
    key: Callable[[WorkerRecord], tuple[str, ...]],
    ask: PageRequest,
    diagnostics: list[Diagnostic],
) -> Rendered:
    """One page of the ``workers`` the view may see; ``key`` gives the cursor of the last."""
    seen = _Filter(ask.view)
    return _page(seen.workers(workers), key, ask, seen, diagnostics)


def envelope(
    page: list[T],
    query: ListQuery,
    cursor: str | None,
    diagnostics: list[Diagnostic],
    workspace_id: str | None,
) -> ListEnvelope[T]:
    """The list envelope of one page; ``workspace_id`` None: no one acting workspace."""
    return ListEnvelope(
        workspace_id=workspace_id or NO_WORKSPACE,
        limit=query.limit,
        items=page,
        diagnostics=_cap(diagnostics),
        next_cursor=cursor,
    )


def runtimes_page(snapshot: Snapshot, ask: PageRequest) -> Rendered:
    """The runtimes the view may see (each trimmed to what it may see), by runtime_id."""
    after = resume_after(ask.query)
    ids = snapshot.sorted_runtime_ids
    view = ask.view
    seen = _Filter(view)

    def records() -> Iterator[RuntimeRecord]:
        for rid in ids:
            if after is not None and rid <= after:
                continue
            entry = snapshot.runtimes[rid]
            if not seen.keep(view.runtime_visible(entry.record)):
                continue
            record, trimmed = visible_runtime(entry, view)
            seen.hid |= trimmed
            yield record

    return _page(records(), lambda r: (r.runtime_id,), ask, seen, [])


def hosts_page(snapshot: Snapshot, ask: PageRequest) -> Rendered:
    """The hosts the view may see, by ``(runtime_id, host_id)``."""
    after = _after_pair(ask.query)
    view = ask.view
    seen = _Filter(view)

    def hosts() -> Iterator[HostRecord]:
        for rid in snapshot.sorted_runtime_ids:
            if after is not None and rid < after[0]:
                continue
            entry = snapshot.runtimes[rid]
            runtime_visible = view.runtime_visible(entry.record)
            for host in sorted(entry.hosts, key=lambda h: h.host_id):
                if after is not None and (rid, host.host_id) <= after:
                    continue
                if seen.keep(runtime_visible and view.host_visible(host)):
                    yield host

    return _page(hosts(), lambda h: (h.runtime_id, h.host_id), ask, seen, [])


def workers_page(snapshot: Snapshot, ask: PageRequest) -> Rendered:
    """All workers the view may see, ordered by ``(runtime_id, worker_id)``."""
    diagnostics: list[Diagnostic] = []
    for rid in snapshot.sorted_runtime_ids:
        entry = snapshot.runtimes[rid]
        if ask.view.runtime_visible(entry.record):
            diagnostics.extend(_visible_diagnostics(entry, ask.view))
    workers = snapshot.iter_workers_after(_after_pair(ask.query))
    return _workers_page(workers, _registry_wide_key, ask, diagnostics)


def runtime_workers_page(
    entry: RuntimeEntry, ask: PageRequest, host: HostRecord | None = None
) -> Rendered:
    """One runtime's workers the view may see, by worker_id; ``host``: only those on that
    host, with the host's own diagnostics before the runtime's."""
    workers = entry.iter_workers_after(resume_after(ask.query))
    diagnostics = list(_visible_diagnostics(entry, ask.view))
    if host is not None:
        workers = (w for w in workers if w.host_id == host.host_id)
        diagnostics = [*host.diagnostics, *diagnostics]
    return _workers_page(workers, _in_runtime_key, ask, diagnostics)


# -- the per-revision body cache ----------------------------------------------------------


class BodyCache:
    """Encoded bodies of the current revision, keyed by view; emptied when it moves on."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._revision = -1
        self._bodies: OrderedDict[tuple[object, ...], object] = OrderedDict()
        self._max = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, revision: int, key: tuple[object, ...], build: Callable[[], V]) -> V:
        """The value cached under ``key`` at ``revision``; built (and kept) if absent. One
        cache holds one kind of value per key: callers keep their keys apart."""
        if revision != self._revision:
            self._bodies.clear()
            self._revision = revision
        body = self._bodies.get(key)
        if body is not None:
            self.hits += 1
            self._bodies.move_to_end(key)
            return cast(V, body)
        self.misses += 1
        body = build()
        self._bodies[key] = body
        if len(self._bodies) > self._max:
            self._bodies.popitem(last=False)
        return body
