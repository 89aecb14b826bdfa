"""``GET /api/sources``: how each source is doing, like Prometheus's target health.

One item per configured source (one source feeds one runtime): its kind, the supervisor's
state of its task, whether its last observation worked, when it last looked and how long
that took, its last typed error, failures, restarts and next attempt, and its workers by
state. Built from the snapshot and the actor's own bookkeeping, so it is as safe as any
other projection: ids, times, counts and typed codes, never a path or endpoint.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime

import msgspec

from yoi_registryd.discovery.runner import DiscoveryStatus
from yoi_registryd.http import views
from yoi_registryd.model import (
    ErrorInfo,
    ObservationMode,
    RuntimeStatus,
    SourceKind,
    SupervisorState,
)
from yoi_registryd.policy import SEES_ALL, Visibility
from yoi_registryd.registry import (
    Health,
    RuntimeEntry,
    Snapshot,
    runtime_health,
    startup_grace_left,
)


class SourceStatus(msgspec.Struct, frozen=True):
    """Wire shape of one item of ``GET /api/sources``."""

    runtime_id: str
    label: str | None
    kind: SourceKind
    state: SupervisorState
    """The supervisor's view of the source task: starting, running, backoff, stopped."""
    health: Health
    runtime_status: RuntimeStatus
    ready: bool
    """First observation done, or start-up grace over: this source does not hold readiness."""
    last_observation_at: datetime | None
    last_observation_duration_seconds: float | None
    last_success_at: datetime | None
    last_error: ErrorInfo | None
    """The last failed observation (typed code and safe message)."""
    last_crash: ErrorInfo | None
    """Why the source task last stopped and was restarted."""
    consecutive_failures: int
    restarts: int
    next_attempt_at: datetime | None
    observations: int
    errors: dict[str, int]
    """Failed observations by typed error code."""
    worker_count: int
    workers_by_state: dict[str, int]
    mode: ObservationMode | None = None
    """How a remote source follows its runtime: ``subscription`` (the runtime's event
    subscription) or ``polling``; null for sources with only one way, or before it is known."""


class SourceList(views.ListEnvelope[SourceStatus], kw_only=True):
    """The sources, and what each ``[[discovery]]`` entry found (for an unrestricted view:
    what a discovery refused names runtimes the caller might not see)."""

    discovery: list[DiscoveryStatus] = msgspec.field(default_factory=list)


def _visible_counts(entry: RuntimeEntry, view: Visibility) -> tuple[int, dict[str, int], bool]:
    """Worker count and counts by state of what ``view`` may see; True if it hid some."""
    if not view.restricted:
        return entry.record.worker_count, dict(entry.workers_by_state), False
    counts = Counter(w.registry_state for w in entry.workers.values() if view.worker_visible(w))
    total = sum(counts.values())
    return total, dict(sorted(counts.items())), total != len(entry.workers)


def source_status(
    entry: RuntimeEntry, now: float, view: Visibility = SEES_ALL
) -> tuple[SourceStatus, bool]:
    """One source as ``view`` sees it, and whether workers were left out of its counts."""
    record, stats = entry.record, entry.stats
    supervisor = record.supervisor
    worker_count, by_state, hid = _visible_counts(entry, view)
    status = SourceStatus(
        runtime_id=record.runtime_id,
        label=record.label,
        kind=record.source.kind,
        state=supervisor.state,
        health=runtime_health(record),
        runtime_status=record.registry_status,
        ready=startup_grace_left(stats, now) is None,
        last_observation_at=stats.last_attempt_at,
        last_observation_duration_seconds=stats.last_duration,
        last_success_at=record.last_seen_at,
        last_error=record.last_error,
        last_crash=supervisor.last_error,
        consecutive_failures=record.consecutive_failures,
        restarts=supervisor.restarts,
        next_attempt_at=supervisor.next_attempt_at,
        observations=stats.successes,
        errors=dict(stats.errors),
        worker_count=worker_count,
        workers_by_state=by_state,
        mode=stats.mode,
    )
    return status, hid


def sources_page(
    snapshot: Snapshot,
    query: views.ListQuery,
    now: float,
    view: Visibility = SEES_ALL,
    workspace_id: str | None = None,
    discovery: list[DiscoveryStatus] | None = None,
) -> views.Rendered:
    """The sources of the runtimes ``view`` may see, with only visible workers counted."""
    after = views.resume_after(query)
    filtered = False

    def items() -> Iterator[SourceStatus]:
        nonlocal filtered
        for rid in snapshot.sorted_runtime_ids:
            if after is not None and rid <= after:
                continue
            entry = snapshot.runtimes[rid]
            if not view.runtime_visible(entry.record):
                filtered = True
                continue
            status, hid = source_status(entry, now, view)
            filtered = filtered or hid
            yield status

    page, cursor = views.take_page(items(), query, lambda s: (s.runtime_id,))
    env = views.envelope(page, query, cursor, [], workspace_id)
    found = [] if view.restricted or discovery is None else discovery
    body = views.encode(
        SourceList(
            workspace_id=env.workspace_id,
            limit=env.limit,
            items=env.items,
            diagnostics=env.diagnostics,
            next_cursor=env.next_cursor,
            discovery=found,
        )
    )
    return views.Rendered(body, filtered)
