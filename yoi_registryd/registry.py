"""The RegistryActor, the only writer of registry state, and the Snapshots it publishes.

Sources send messages (``yoi_registryd.messages``) over one bounded channel. The actor
applies them, derives each runtime's status (including staleness, on its own timer), bumps
a monotonic revision and publishes an immutable :class:`Snapshot`. HTTP handlers read the
current snapshot without locks and see one consistent state for a whole request.

Snapshots share structure: a change to one runtime rebuilds that runtime's entry only, and
both the map of entries and each runtime's worker set are persistent maps (HAMTs, see
``yoi_registryd.worker_set``), so a change to ``k`` workers costs ``O(k log n)``: not
proportional to the runtime, nor to the registry.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

import immutables
import msgspec
import trio

from yoi_registryd.clock import utcnow
from yoi_registryd.errors import UnknownHost, UnknownRuntime, UnknownWorker
from yoi_registryd.messages import (
    LivenessProbe,
    ObservationFailed,
    ObservationSucceeded,
    RuntimeDescriptor,
    RuntimeObserved,
    SourceMessage,
    SourceRegistered,
    SourceRemoved,
    SupervisorChanged,
    WorkersChanged,
)
from yoi_registryd.model import (
    Diagnostic,
    ErrorInfo,
    HostRecord,
    HostSpec,
    ObservationMode,
    RuntimeRecord,
    RuntimeStatus,
    SourceInfo,
    SourceKind,
    SupervisorInfo,
    WorkerRecord,
)
from yoi_registryd.vocabulary import (
    RUNTIME_KINDS,
    host_status,
    placeholder_capabilities,
    runtime_status,
)
from yoi_registryd.worker_set import EMPTY_WORKERS, WorkerSet

log = logging.getLogger(__name__)


STALE_DIAGNOSTIC: Final = Diagnostic(
    code="runtime_stale",
    severity="warning",
    message="no successful observation within stale_after; showing the last known state",
)


class ObservationStats(msgspec.Struct, frozen=True):
    """How a runtime's source has been observing: for probes, metrics and ``/api/sources``.

    Internal bookkeeping, not a wire record: it holds no id, path or text beyond typed
    error codes.
    """

    registered_at: float
    """Monotonic time (trio clock) the source was registered: start of its start-up grace."""
    stale_after: float
    """The source's ``stale_after`` in seconds; also how long it may take for its first
    observation before readiness stops waiting (its start-up grace)."""
    observed: bool = False
    """At least one observation succeeded since the source was first registered."""
    last_attempt_at: datetime | None = None
    """When the last observation (successful or failed) was reported."""
    last_duration: float | None = None
    """How long the last observation took, when the source reported it."""
    successes: int = 0
    errors: tuple[tuple[str, int], ...] = ()
    """Failed observations by typed error code, sorted by code."""
    mode: ObservationMode | None = None
    """How the source follows the runtime (remote sources: subscription or polling)."""


Health = Literal["up", "down", "unknown"]
"""A source's health, as Prometheus words a target's (``/api/sources``, ``/metrics``)."""
UP_STATUSES: Final[frozenset[RuntimeStatus]] = frozenset({"available", "degraded", "stopped"})
"""Statuses in which the runtime's last observation succeeded and is still fresh."""


def runtime_health(record: RuntimeRecord) -> Health:
    """``up``: last observation worked and is fresh; ``unknown``: never tried; else ``down``."""
    if record.registry_status in UP_STATUSES:
        return "up"
    if record.registry_status == "unknown":
        return "unknown"
    return "down"


def startup_grace_left(stats: ObservationStats, now: float) -> float | None:
    """Seconds of start-up grace left while a source has not observed yet, else ``None``.

    The grace is the source's ``stale_after``: by then a runtime that never answered would be
    reported as stale anyway, so readiness stops waiting for it.
    """
    if stats.observed:
        return None
    left = stats.registered_at + stats.stale_after - now
    return left if left > 0 else None


class RuntimeEntry:
    """One runtime as published: its record, hosts and workers. Never mutated."""

    __slots__ = ("hosts", "record", "revision", "stats", "workers")

    def __init__(
        self,
        record: RuntimeRecord,
        hosts: tuple[HostRecord, ...],
        workers: Mapping[str, WorkerRecord],
        *,
        revision: int = 0,
        stats: ObservationStats | None = None,
    ) -> None:
        self.record = record
        self.hosts = hosts
        self.workers = workers if isinstance(workers, WorkerSet) else WorkerSet.of(workers.values())
        self.revision = revision
        """The registry revision at which this entry was published (its last change)."""
        self.stats = stats or ObservationStats(registered_at=0.0, stale_after=0.0)

    @property
    def workers_by_state(self) -> Mapping[str, int]:
        """Worker counts by ``state`` (kept up to date change by change)."""
        return self.workers.by_state

    def iter_workers_after(self, worker_id: str | None) -> Iterator[WorkerRecord]:
        """Workers in id order, strictly after ``worker_id`` (from the start if None)."""
        return self.workers.after(worker_id)


class Snapshot:
    """An immutable, consistent view of the whole registry at one revision."""

    __slots__ = ("_host_owners", "_sorted_runtime_ids", "revision", "runtimes")

    def __init__(
        self,
        revision: int,
        runtimes: Mapping[str, RuntimeEntry],
        *,
        sorted_runtime_ids: list[str] | None = None,
        host_owners: dict[str, str] | None = None,
    ) -> None:
        self.revision = revision
        self.runtimes = runtimes
        self._sorted_runtime_ids = sorted_runtime_ids
        """Carried over from the previous snapshot while no runtime came or went."""
        self._host_owners = host_owners
        """Host id -> the runtime listing it first; carried over while no host id moved."""

    @property
    def sorted_runtime_ids(self) -> list[str]:
        if self._sorted_runtime_ids is None:
            self._sorted_runtime_ids = sorted(self.runtimes)
        return self._sorted_runtime_ids

    @property
    def host_owners(self) -> dict[str, str]:
        if self._host_owners is None:
            owners: dict[str, str] = {}
            for rid in self.sorted_runtime_ids:
                for host_id in self.runtimes[rid].record.host_ids:
                    owners.setdefault(host_id, rid)
            self._host_owners = owners
        return self._host_owners

    def runtime(self, runtime_id: str) -> RuntimeEntry:
        try:
            return self.runtimes[runtime_id]
        except KeyError:
            raise UnknownRuntime(runtime_id) from None

    def worker(self, runtime_id: str, worker_id: str) -> WorkerRecord:
        entry = self.runtime(runtime_id)
        try:
            return entry.workers[worker_id]
        except KeyError:
            raise UnknownWorker(runtime_id, worker_id) from None

    def host(self, host_id: str) -> tuple[RuntimeEntry, HostRecord]:
        rid = self.host_owners.get(host_id)
        if rid is not None:
            entry = self.runtimes[rid]
            for host in entry.hosts:
                if host.host_id == host_id:
                    return entry, host
        raise UnknownHost(host_id)

    def iter_workers_after(
        self, position: tuple[str, str] | None, runtime_ids: list[str] | None = None
    ) -> Iterator[WorkerRecord]:
        """All workers ordered by ``(runtime_id, worker_id)``, strictly after ``position``."""
        ids = self.sorted_runtime_ids if runtime_ids is None else runtime_ids
        start = 0 if position is None else bisect.bisect_left(ids, position[0])
        for i in range(start, len(ids)):
            rid = ids[i]
            after = position[1] if position is not None and rid == position[0] else None
            yield from self.runtimes[rid].iter_workers_after(after)


EMPTY_SNAPSHOT: Final = Snapshot(0, immutables.Map())

_REORDER_AT_MOST: Final = 64
"""Runtime ids come or go at most this many at once for the order to be patched in place
(a copy and a bisection each); more, and the next reader sorts them all again."""


def _reordered(ids: list[str] | None, came: list[str], gone: list[str]) -> list[str] | None:
    """The sorted runtime ids ``ids`` with ``came`` added and ``gone`` removed (a new list:
    older snapshots keep theirs), or None (sorted when first read) when ``ids`` was never
    sorted or too many changed. One runtime added to 10,000 costs a copy of the list, not a
    sort of it."""
    if not came and not gone:
        return ids
    if ids is None or len(came) + len(gone) > _REORDER_AT_MOST:
        return None
    ordered = ids.copy()
    for rid in gone:
        at = bisect.bisect_left(ordered, rid)
        if at < len(ordered) and ordered[at] == rid:
            del ordered[at]
    for rid in came:
        bisect.insort(ordered, rid)
    return ordered


@dataclass(slots=True)
class _RuntimeState:
    """The actor's private, mutable bookkeeping for one runtime."""

    runtime_id: str
    source_kind: SourceKind
    expire_after: float | None
    descriptor: RuntimeDescriptor
    stats: ObservationStats
    """Kept as published (replaced, never mutated): the entry takes it as it is."""
    supervisor: SupervisorInfo = field(default_factory=lambda: SupervisorInfo(state="starting"))
    hosts: tuple[HostSpec, ...] = ()
    workers: WorkerSet = field(default_factory=lambda: EMPTY_WORKERS)
    workers_stale: bool = False
    diagnostics: immutables.Map[str, tuple[Diagnostic, ...]] = field(default_factory=immutables.Map)
    diagnostics_flat: tuple[Diagnostic, ...] | None = None
    """``diagnostics`` in subject order, flattened; None once they change (rebuilt at publish)."""
    status: RuntimeStatus = "unknown"
    expired: bool = False
    last_ok_mono: float | None = None
    last_seen_at: datetime | None = None
    last_transition_at: datetime | None = None
    last_error: ErrorInfo | None = None
    consecutive_failures: int = 0
    registered_wall: datetime = field(default_factory=lambda: utcnow())
    """When the source was registered: a host's ``observed_at`` until it is first seen."""
    timer_at: float | None = None
    """When this runtime's entry in the actor's timer heap falls due (None: no entry)."""

    def next_deadline(self) -> float:
        """When time alone next changes this runtime: it goes stale, or its workers expire."""
        if self.last_ok_mono is None:
            return math.inf
        deadline = math.inf
        if self.status != "stale":
            deadline = self.last_ok_mono + self.stats.stale_after
        if self.expire_after is not None and not self.expired:
            deadline = min(deadline, self.last_ok_mono + self.expire_after)
        return deadline


def _or(reported: float | None, known: float | None) -> float | None:
    """A duration the message reported, else the one already known."""
    return known if reported is None else reported


def _derive_status(st: _RuntimeState, now_mono: float) -> RuntimeStatus:
    """The runtime status state machine, from the facts the actor holds."""
    if not st.stats.observed:
        if st.consecutive_failures or st.supervisor.state == "backoff":
            return "unavailable"
        return "unknown"
    assert st.last_ok_mono is not None
    if now_mono - st.last_ok_mono >= st.stats.stale_after:
        return "stale"
    if st.consecutive_failures or st.supervisor.state == "backoff":
        return "unavailable"
    if st.descriptor.stopped:
        return "stopped"
    if st.descriptor.degraded:
        return "degraded"
    return "available"


BAD_STATUSES: Final[frozenset[RuntimeStatus]] = frozenset({"degraded", "unavailable", "stale"})


def status_reason(st: _RuntimeState, status: RuntimeStatus, now_mono: float) -> str:
    """Why a runtime has ``status``, in words safe to log (typed codes and safe messages)."""
    if status == "stale" and st.last_ok_mono is not None:
        return f"nothing succeeded for {now_mono - st.last_ok_mono:.0f}s"
    if status == "unavailable":
        if st.last_error is not None:
            return f"{st.last_error.code}: {st.last_error.message}"
        crash = st.supervisor.last_error
        if crash is not None:
            return f"the source task failed: {crash.code}: {crash.message}"
        return f"the source task is {st.supervisor.state}"
    if status == "degraded":
        problems = sorted(
            {
                f"{d.code}: {d.message}"
                for items in st.diagnostics.values()
                for d in items
                if d.severity != "info"
            }
        )
        if len(problems) > 3:
            problems[3:] = [f"and {len(problems) - 3} more"]
        return "; ".join(problems) or "the runtime reports a problem"
    return ""


def log_status_change(st: _RuntimeState, status: RuntimeStatus, now_mono: float) -> None:
    """One line per transition: WARNING with the reason when it gets worse, INFO otherwise."""
    if status in BAD_STATUSES:
        reason = status_reason(st, status, now_mono)
        log.warning("runtime %s: %s -> %s: %s", st.runtime_id, st.status, status, reason)
    else:
        log.info("runtime %s: %s -> %s", st.runtime_id, st.status, status)


def _diagnostic_codes(
    diagnostics: Mapping[str, tuple[Diagnostic, ...]],
) -> dict[tuple[str, str], tuple[Diagnostic, list[str]]]:
    """``(code, severity)`` -> one of its diagnostics and the subjects that have it."""
    found: dict[tuple[str, str], tuple[Diagnostic, list[str]]] = {}
    for subject, items in diagnostics.items():
        for d in items:
            found.setdefault((d.code, d.severity), (d, []))[1].append(d.worker_id or subject)
    return found


def log_diagnostic_changes(
    runtime_id: str,
    before: Mapping[str, tuple[Diagnostic, ...]],
    after: Mapping[str, tuple[Diagnostic, ...]],
) -> None:
    """Log a diagnostic code once when it appears on a runtime and once when it clears, not on
    every rescan that reports it again. Messages are safe to serve, so safe to log."""
    if before == after:
        return
    old, new = _diagnostic_codes(before), _diagnostic_codes(after)
    for key in sorted(new.keys() - old.keys()):
        diagnostic, subjects = new[key]
        where = ", ".join(sorted(s for s in subjects if s)[:3])
        more = f" (+{len(subjects) - 3} more)" if len(subjects) > 3 else ""
        level = logging.INFO if diagnostic.severity == "info" else logging.WARNING
        log.log(
            level,
            "runtime %s: %s %s%s: %s",
            runtime_id,
            diagnostic.severity,
            diagnostic.code,
            f" on {where}{more}" if where else "",
            diagnostic.message,
        )
    for key in sorted(old.keys() - new.keys()):
        log.info("runtime %s: %s cleared", runtime_id, key[0])


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


class RegistryActor:
    """Owns registry state. Run :meth:`run` in the daemon's nursery; read :attr:`snapshot`.

    Sources get a clone of :attr:`send_channel`. The channel is bounded: a source that
    produces faster than the actor applies waits (backpressure) instead of losing updates.
    """

    def __init__(self, channel_capacity: int = 1024) -> None:
        self.send_channel, self._receive = trio.open_memory_channel[SourceMessage](channel_capacity)
        self.snapshot: Snapshot = EMPTY_SNAPSHOT
        self._states: dict[str, _RuntimeState] = {}
        self._entries: immutables.Map[str, RuntimeEntry] = immutables.Map()
        self._dirty: set[str] = set()
        self._removed: set[str] = set()
        self._timers: list[tuple[float, str]] = []
        """Heap of ``(when, runtime_id)``: see :meth:`_schedule`."""
        self._changed = trio.Event()
        self.heartbeat_at: float = 0.0
        """Monotonic time of the actor's last loop turn (for liveness probes)."""
        self.running = False
        """True while :meth:`run` is executing (for liveness probes)."""
        self.channel_capacity = channel_capacity
        self.channel_peak = 0
        """The most messages ever queued at once: how close sources came to backpressure."""
        self.publish_count = 0
        self.publish_seconds_total = 0.0
        """Wall time spent building and publishing snapshots (for metrics)."""

    @property
    def channel_depth(self) -> int:
        """Messages queued for the actor right now."""
        return self._receive.statistics().current_buffer_used

    async def wait_for_change(self, after_revision: int) -> Snapshot:
        """Return the first snapshot with a revision greater than ``after_revision``."""
        while self.snapshot.revision <= after_revision:
            await self._changed.wait()
        return self.snapshot

    async def ping(self, within: float) -> bool:
        """True when the actor reaches a message sent now within ``within`` seconds: it is
        alive and not stuck (``heartbeat_at`` alone cannot tell, as the actor sleeps until a
        message or a deadline)."""
        probe = LivenessProbe(trio.Event())
        with trio.move_on_after(within):
            await self.send_channel.send(probe)
            await probe.answered.wait()
            return True
        return False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        try:
            task_status.started()
            await self._loop()
        finally:
            self.running = False

    async def _loop(self) -> None:
        receive = self._receive
        while True:
            deadline = self._next_deadline()
            msg: SourceMessage | None = None
            with trio.move_on_at(deadline):
                msg = await receive.receive()
            self.heartbeat_at = trio.current_time()
            if msg is not None:
                depth = receive.statistics().current_buffer_used + 1
                if depth > self.channel_peak:
                    self.channel_peak = depth
                self._apply(msg)
                # Drain what is already queued so a burst becomes one revision.
                while True:
                    try:
                        self._apply(receive.receive_nowait())
                    except trio.WouldBlock:
                        break
            self._apply_time(trio.current_time())
            self._publish()

    # -- applying messages -------------------------------------------------------------

    def _apply(self, msg: SourceMessage) -> None:
        if isinstance(msg, LivenessProbe):
            msg.answered.set()
            return
        if isinstance(msg, SourceRegistered):
            self._register(msg)
            return
        st = self._states.get(msg.runtime_id)
        if st is None:
            return  # a late message from a source that was removed
        if isinstance(msg, SourceRemoved):
            del self._states[msg.runtime_id]
            self._removed.add(msg.runtime_id)
            self._dirty.discard(msg.runtime_id)
            return
        self._dirty.add(st.runtime_id)
        if isinstance(msg, SupervisorChanged):
            st.supervisor = msg.supervisor
        elif isinstance(msg, RuntimeObserved):
            st.descriptor = msg.runtime
            st.hosts = msg.hosts
            st.workers = WorkerSet.of(msg.workers)
            st.workers_stale = False
            diagnostics = immutables.Map({k: v for k, v in msg.diagnostics.items() if v})
            log_diagnostic_changes(st.runtime_id, st.diagnostics, diagnostics)
            st.diagnostics = diagnostics
            st.diagnostics_flat = None
            self._succeeded(st, msg.duration)
        elif isinstance(msg, WorkersChanged):
            if msg.runtime is not None:
                st.descriptor = msg.runtime
            if msg.hosts is not None:
                st.hosts = msg.hosts
            if msg.upserts or msg.removals:
                st.workers = st.workers.changed(msg.upserts, msg.removals)
            if msg.diagnostics:
                with st.diagnostics.mutate() as diags:
                    for subject, items in msg.diagnostics.items():
                        if items:
                            diags[subject] = items
                        elif subject in diags:
                            del diags[subject]
                    diagnostics = diags.finish()
                log_diagnostic_changes(st.runtime_id, st.diagnostics, diagnostics)
                st.diagnostics = diagnostics
                st.diagnostics_flat = None
            self._succeeded(st, msg.duration)
        elif isinstance(msg, ObservationSucceeded):
            self._succeeded(st, msg.duration)
        elif isinstance(msg, ObservationFailed):
            st.last_error = msg.error
            st.consecutive_failures += 1
            errors = dict(st.stats.errors)
            errors[msg.error.code] = errors.get(msg.error.code, 0) + 1
            st.stats = msgspec.structs.replace(
                st.stats,
                errors=tuple(sorted(errors.items())),
                last_attempt_at=utcnow(),
                last_duration=_or(msg.duration, st.stats.last_duration),
            )

    def _register(self, msg: SourceRegistered) -> None:
        old = self._states.get(msg.runtime_id)
        descriptor = (
            old.descriptor
            if old is not None
            else RuntimeDescriptor(
                label=msg.label,
                kind=RUNTIME_KINDS[msg.source_kind],
                capabilities=placeholder_capabilities(msg.source_kind),
            )
        )
        # A restart of the same source keeps what was known (reload of a changed source).
        stats = ObservationStats(trio.current_time(), msg.stale_after.total_seconds())
        if old is not None:
            stats = msgspec.structs.replace(
                old.stats, registered_at=stats.registered_at, stale_after=stats.stale_after
            )
        st = _RuntimeState(
            runtime_id=msg.runtime_id,
            source_kind=msg.source_kind,
            expire_after=_seconds(msg.expire_after),
            descriptor=descriptor,
            stats=stats,
        )
        if old is not None:
            st.hosts, st.workers, st.diagnostics = old.hosts, old.workers, old.diagnostics
            st.last_ok_mono, st.last_seen_at = old.last_ok_mono, old.last_seen_at
            st.workers_stale = old.workers_stale
            st.registered_wall = old.registered_wall
        self._states[msg.runtime_id] = st
        self._removed.discard(msg.runtime_id)
        self._dirty.add(msg.runtime_id)

    def _succeeded(self, st: _RuntimeState, duration: float | None) -> None:
        st.expired = False
        st.last_ok_mono = trio.current_time()
        st.last_seen_at = utcnow()
        st.consecutive_failures = 0
        st.stats = msgspec.structs.replace(
            st.stats,
            observed=True,
            last_attempt_at=st.last_seen_at,
            successes=st.stats.successes + 1,
            mode=st.descriptor.mode,
            last_duration=_or(duration, st.stats.last_duration),
        )
        if st.workers_stale:
            st.workers = st.workers.marked_stale(False)
            st.workers_stale = False

    # -- time --------------------------------------------------------------------------

    # Runtimes change status by messages (they are then dirty) or by time alone (staleness,
    # expiry). The timer heap holds, per runtime, at most one live entry: the earliest time
    # at which time alone may change it. Each loop turn therefore derives the status of
    # the dirty runtimes and of those whose time came, never of every runtime: a change
    # costs the same with 10 runtimes as with 1,000. Entries whose runtime was removed,
    # re-registered or rescheduled are skipped when they surface (``timer_at`` differs).

    def _schedule(self, st: _RuntimeState) -> None:
        deadline = st.next_deadline()
        if deadline < math.inf and (st.timer_at is None or deadline < st.timer_at):
            heapq.heappush(self._timers, (deadline, st.runtime_id))
            st.timer_at = deadline

    def _next_deadline(self) -> float:
        timers = self._timers
        while timers:
            when, rid = timers[0]
            st = self._states.get(rid)
            if st is not None and st.timer_at == when:
                return when
            heapq.heappop(timers)  # superseded
        return math.inf

    def _apply_time(self, now: float) -> None:
        """Derive the status at ``now`` of every runtime that a message changed or whose
        time came: staleness and expiry happen here."""
        due = set(self._dirty)
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, rid = heapq.heappop(timers)
            st = self._states.get(rid)
            if st is not None and st.timer_at == when:
                st.timer_at = None
                due.add(rid)
        for rid in due:
            st = self._states[rid]
            self._apply_status(rid, st, now)
            self._schedule(st)

    def _apply_status(self, rid: str, st: _RuntimeState, now: float) -> None:
        """Staleness, expiry and status transitions of one runtime at ``now``."""
        status = _derive_status(st, now)
        if status == "stale" and not st.workers_stale:
            st.workers = st.workers.marked_stale(True)
            st.workers_stale = True
            self._dirty.add(rid)
        if (
            st.expire_after is not None
            and st.last_ok_mono is not None
            and not st.expired
            and now - st.last_ok_mono >= st.expire_after
        ):
            st.expired = True
            if st.workers:
                st.workers = EMPTY_WORKERS
            self._dirty.add(rid)
        if status != st.status:
            log_status_change(st, status, now)
            st.status = status
            st.last_transition_at = utcnow()
            self._dirty.add(rid)

    # -- publishing --------------------------------------------------------------------

    def _publish(self) -> None:
        if not self._dirty and not self._removed:
            return
        started = time.perf_counter()
        previous = self.snapshot
        revision = previous.revision + 1
        # While no host id moves, the previous snapshot's host owners still hold; its
        # runtime order is carried over, with the ids that came or went put in their place.
        same_hosts = True
        gone: list[str] = []
        came: list[str] = []
        with self._entries.mutate() as entries:
            for rid in self._removed:
                if rid in entries:
                    del entries[rid]
                    gone.append(rid)
                    same_hosts = False
            for rid in self._dirty:
                st = self._states[rid]
                old = entries.get(rid)
                entry = self._build_entry(st, revision)
                entries[rid] = entry
                if old is None:
                    came.append(rid)
                    same_hosts = False
                elif old.record.host_ids != entry.record.host_ids:
                    same_hosts = False
            self._entries = entries.finish()
        self._removed.clear()
        self._dirty.clear()
        self.snapshot = Snapshot(
            revision,
            self._entries,
            sorted_runtime_ids=_reordered(previous._sorted_runtime_ids, came, gone),
            host_owners=previous._host_owners if same_hosts else None,
        )
        self._changed.set()
        self._changed = trio.Event()
        self.publish_count += 1
        self.publish_seconds_total += time.perf_counter() - started

    def _build_entry(self, st: _RuntimeState, revision: int) -> RuntimeEntry:
        if st.diagnostics_flat is None:
            st.diagnostics_flat = tuple(
                d for subject in sorted(st.diagnostics) for d in st.diagnostics[subject]
            )
        diagnostics = st.diagnostics_flat
        if st.status == "stale":
            diagnostics = (STALE_DIAGNOSTIC, *diagnostics)
        yoi_host_status = host_status(st.source_kind, st.status)
        hosts = tuple(
            HostRecord(
                runtime_id=st.runtime_id,
                host_id=h.host_id,
                label=h.label,
                kind=h.kind,
                status=yoi_host_status,
                observed_at=st.last_seen_at or st.registered_wall,
                last_seen_at=st.last_seen_at,
                capabilities=h.capabilities,
                diagnostics=h.diagnostics,
                registry_status=st.status,
            )
            for h in st.hosts
        )
        d = st.descriptor
        record = RuntimeRecord(
            runtime_id=st.runtime_id,
            label=d.label or st.runtime_id,
            kind=d.kind,
            status=runtime_status(st.source_kind, st.status),
            source=SourceInfo(kind=st.source_kind, note=d.note or ""),
            host_ids=tuple(h.host_id for h in st.hosts),
            capabilities=d.capabilities,
            diagnostics=diagnostics,
            registry_status=st.status,
            worker_count=len(st.workers),
            last_seen_at=st.last_seen_at,
            last_transition_at=st.last_transition_at,
            last_error=st.last_error,
            consecutive_failures=st.consecutive_failures,
            supervisor=st.supervisor,
        )
        return RuntimeEntry(record, hosts, st.workers, revision=revision, stats=st.stats)
