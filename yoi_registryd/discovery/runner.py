"""One supervised task per ``[[discovery]]`` entry, applying what its backend finds.

A backend reports complete sets of runtime descriptions (``found``), or records by key as
they change (``changed``: etcd's watch), or a failed refresh (``failed``). A set becomes remote
sources through :func:`yoi_registryd.reload.apply_sources`, the path a reload takes: new
runtimes start, vanished ones stop, changed ones restart and unchanged ones are not touched; a
change of a few keyed records goes through :func:`~yoi_registryd.reload.apply_source_changes`
on those runtimes only, so that one runtime added costs the same at 10,000 as at 100. A
failed refresh, or a backend that raises (restarted with the supervisor's backoff), keeps the
last good set: discovery never empties the registry because its backend is down; the set is
only marked stale after ``stale_after``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any, Final, Protocol, TypeAlias

import msgspec
import trio

from yoi_registryd.clock import utcnow
from yoi_registryd.config import DiscoveryConfig, RemoteSourceConfig, SourceConfig
from yoi_registryd.discovery.records import (
    DUPLICATE_RUNTIME_ID,
    RUNTIME_ID_IN_USE,
    TOO_MANY_RUNTIMES,
    Refusal,
    outcome,
    select,
)
from yoi_registryd.model import ErrorInfo
from yoi_registryd.reload import SourcePlan, apply_source_changes, apply_sources
from yoi_registryd.sources.base import SourceSpec
from yoi_registryd.supervisor import Supervisor, restart_backoff

log = logging.getLogger(__name__)

KeyedRecords: TypeAlias = Mapping[str, tuple[str, Any]]
"""Discovered records by a key unique in their backend, each with where it was found."""

MAX_REFUSALS_SHOWN: Final = 100
"""Refused records listed on ``/api/sources`` at most (all are counted)."""


class DiscoveryFailure(Exception):
    """A backend could not refresh; ``code`` is typed, ``message`` safe to serve."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DiscoveryReporter(Protocol):
    async def found(self, records: list[tuple[str, Any]]) -> None:
        """A complete set of records, each with where it was (for refusals)."""

    async def found_keyed(self, records: KeyedRecords) -> None:
        """A complete set of records by a key unique in the backend, which later
        :meth:`changed` calls name."""

    async def changed(self, put: KeyedRecords, deleted: Collection[str] = ()) -> None:
        """Keyed records ``put`` (added or changed) and ``deleted`` (gone)."""

    def failed(self, failure: DiscoveryFailure) -> None:
        """A refresh failed; the last good set stays."""


class Backend(Protocol):
    async def run(self, reporter: DiscoveryReporter) -> None:
        """Report sets until cancelled; raise :class:`DiscoveryFailure` to be restarted."""


def owner_of(name: str) -> str:
    return f"discovery:{name}"


class DiscoveryStatus(msgspec.Struct, frozen=True):
    """Wire shape of one discovery entry on ``GET /api/sources`` (``discovery``)."""

    name: str
    kind: str
    state: str
    """``running``, or ``backoff`` while its backend waits to be restarted."""
    stale: bool
    """No successful refresh for ``stale_after``: the runtimes listed are the last good set."""
    runtime_count: int
    last_refresh_at: datetime | None
    last_success_at: datetime | None
    last_error: ErrorInfo | None
    refreshes: int
    failures: int
    refused_count: int
    refused: list[Refusal]
    """The records the last good refresh refused, and why (at most 100)."""


@dataclasses.dataclass
class _Keyed:
    """The set of a backend reporting records by key, and what each record became."""

    records: dict[str, tuple[str, Any]]
    refusals: dict[str, Refusal] = dataclasses.field(default_factory=dict)
    """By key: the records refused on their own."""
    holders: dict[str, str] = dataclasses.field(default_factory=dict)
    """Runtime id -> the key of the record it runs from."""
    held: dict[str, str] = dataclasses.field(default_factory=dict)
    """Key -> the runtime id it runs (the inverse of ``holders``)."""
    plain: bool = False
    """No record is refused for another record's sake (a duplicate id, beyond
    ``max_runtimes``, an id another source holds): only then may a change be applied on
    its own, as it would be within the whole set."""

    def ordered(self) -> list[tuple[str, tuple[str, Any]]]:
        return [(key, self.records[key]) for key in sorted(self.records)]


class DiscoveryRunner:
    """Runs one entry's backend under supervision and applies its sets."""

    def __init__(
        self,
        entry: DiscoveryConfig,
        backend_factory: Callable[[], Backend],
        supervisor: Supervisor,
        nursery: trio.Nursery,
        make_spec: Callable[[SourceConfig], SourceSpec],
        rng: random.Random | None = None,
    ) -> None:
        self.entry = entry
        self.owner = owner_of(entry.name)
        self._backend_factory = backend_factory
        self._supervisor = supervisor
        self._nursery = nursery
        self._make_spec = make_spec
        self._rng = rng or random.Random()
        self._started_at = utcnow()
        self._refused: list[Refusal] = []
        """Every record the last good refresh refused (the status lists the first ones)."""
        self._status = DiscoveryStatus(
            name=entry.name,
            kind=entry.kind,
            state="running",
            stale=False,
            runtime_count=0,
            last_refresh_at=None,
            last_success_at=None,
            last_error=None,
            refreshes=0,
            failures=0,
            refused_count=0,
            refused=[],
        )
        """Kept as served, updated by each refresh; staleness is judged when it is read."""
        self._keyed: _Keyed | None = None
        self.refreshed = trio.Event()
        """Set (and replaced) after every refresh: for tests and waiters."""

    def status(self, now: datetime | None = None) -> DiscoveryStatus:
        """The entry as ``/api/sources`` serves it, stale or not at ``now``."""
        fresh_since = self._status.last_success_at or self._started_at
        stale = (now or utcnow()) - fresh_since > self.entry.stale_after
        return msgspec.structs.replace(self._status, stale=stale)

    async def found(self, records: list[tuple[str, Any]]) -> None:
        self._keyed = None
        await self._apply_set([outcome(self.entry, where, raw) for where, raw in records])

    async def found_keyed(self, records: KeyedRecords) -> None:
        self._keyed = _Keyed(dict(records))
        await self._apply_keyed(self._keyed)

    async def changed(self, put: KeyedRecords, deleted: Collection[str] = ()) -> None:
        """A change costs the records it touches, unless the set has (or the change would
        make) a record refused for another's sake: then the whole set is applied again, in
        key order, so that the outcome never depends on the order in which changes came."""
        keyed = self._keyed
        if keyed is None:
            await self.found_keyed(put)
            return
        for key in deleted:
            keyed.records.pop(key, None)
        keyed.records.update(put)
        if not (keyed.plain and await self._apply_change(keyed, put, deleted)):
            await self._apply_keyed(keyed)

    async def _apply_keyed(self, keyed: _Keyed) -> None:
        """Apply the whole keyed set in key order, and note what it refused and kept."""
        ordered = keyed.ordered()
        outcomes = [outcome(self.entry, where, raw) for _, (where, raw) in ordered]
        plan, kept = await self._apply_set(outcomes)
        keyed.refusals = {}
        keyed.holders = {}
        for (key, _), result in zip(ordered, outcomes, strict=True):
            if isinstance(result, Refusal):
                keyed.refusals[key] = result
            elif result.runtime_id in kept:
                keyed.holders.setdefault(result.runtime_id, key)
        keyed.held = {key: rid for rid, key in keyed.holders.items()}
        crowded = (DUPLICATE_RUNTIME_ID, TOO_MANY_RUNTIMES)
        keyed.plain = not plan.taken and all(r.code not in crowded for r in self._refused)

    async def _apply_change(
        self, keyed: _Keyed, put: KeyedRecords, deleted: Collection[str]
    ) -> bool:
        """Apply a change of a plain set on its own; False (nothing done) when it would
        refuse a record for another's sake."""
        touched = {*put, *deleted}
        outcomes = {key: outcome(self.entry, where, raw) for key, (where, raw) in put.items()}
        sources = {k: r for k, r in outcomes.items() if isinstance(r, RemoteSourceConfig)}
        ids = [source.runtime_id for source in sources.values()]
        freed = {keyed.held[key] for key in touched if key in keyed.held}
        running = self._supervisor.specs
        if (
            len(set(ids)) < len(ids)
            or any(rid in keyed.holders and keyed.holders[rid] not in touched for rid in ids)
            or len(keyed.holders) - len(freed) + len(ids) > self.entry.max_runtimes
            or any(rid in running and running[rid].owner != self.owner for rid in ids)
        ):
            return False
        specs = [self._spec(source) for source in sources.values()]
        with trio.CancelScope(shield=True):  # a change is applied whole, even on reload
            plan = await apply_source_changes(
                self._supervisor, self._nursery, specs, freed - set(ids), self.owner
            )
        for key in touched:
            keyed.refusals.pop(key, None)
            rid = keyed.held.pop(key, None)
            if rid is not None:
                del keyed.holders[rid]
        for key, result in outcomes.items():
            if isinstance(result, Refusal):
                keyed.refusals[key] = result
            else:
                keyed.holders[result.runtime_id] = key
                keyed.held[key] = result.runtime_id
        refused = [keyed.refusals[key] for key in sorted(keyed.refusals)]
        self._applied(len(keyed.holders), refused, plan)
        return True

    async def _apply_set(
        self, outcomes: list[RemoteSourceConfig | Refusal]
    ) -> tuple[SourcePlan, set[str]]:
        """Make the runtimes of a whole set the running ones; the plan and the ids kept."""
        sources, refused = select(self.entry, outcomes)
        specs = [self._spec(source) for source in sources]
        with trio.CancelScope(shield=True):  # a set is applied whole, even on reload
            plan = await apply_sources(self._supervisor, self._nursery, specs, self.owner)
        taken = set(plan.taken)
        for rid in plan.taken:
            refused.append(
                Refusal(rid, RUNTIME_ID_IN_USE, "another source already has this runtime id")
            )
        kept = {src.runtime_id for src in sources if src.runtime_id not in taken}
        self._applied(len(kept), refused, plan)
        return plan, kept

    def _applied(self, count: int, refused: list[Refusal], plan: SourcePlan) -> None:
        now = utcnow()
        self._refused = refused
        self._status = msgspec.structs.replace(
            self._status,
            refreshes=self._status.refreshes + 1,
            last_refresh_at=now,
            last_success_at=now,
            last_error=None,
            runtime_count=count,
            refused_count=len(refused),
            refused=refused[:MAX_REFUSALS_SHOWN],
        )
        if plan.start or plan.stop or plan.restart:
            log.info(
                "discovery %s: %d runtimes (%d started, %d stopped, %d restarted), %d refused",
                self.entry.name,
                count,
                len(plan.start),
                len(plan.stop),
                len(plan.restart),
                len(refused),
            )
        self._notify()

    def failed(self, failure: DiscoveryFailure) -> None:
        self._status = msgspec.structs.replace(
            self._status,
            refreshes=self._status.refreshes + 1,
            failures=self._status.failures + 1,
            last_refresh_at=utcnow(),
            last_error=ErrorInfo(failure.code, failure.message),
        )
        log.warning(
            "discovery %s: refresh failed, keeping the last good set: %s",
            self.entry.name,
            failure.message,
        )
        self._notify()

    def _spec(self, source: RemoteSourceConfig) -> SourceSpec:
        return dataclasses.replace(self._make_spec(source), owner=self.owner)

    def _notify(self) -> None:
        self.refreshed.set()
        self.refreshed = trio.Event()

    async def run(self) -> None:
        """Run the backend; restart it with the supervisor's backoff when it fails."""
        attempt = 0
        while True:
            started = trio.current_time()
            self._status = msgspec.structs.replace(self._status, state="running")
            try:
                await self._backend_factory().run(self)
                failure = DiscoveryFailure("discovery_exited", "the discovery backend ended")
            except DiscoveryFailure as exc:
                failure = exc
            except Exception as exc:
                log.exception("discovery %s: backend crashed", self.entry.name)
                failure = DiscoveryFailure(
                    "discovery_crashed", f"the discovery backend failed ({type(exc).__name__})"
                )
            self.failed(failure)
            backoff = restart_backoff(self._supervisor.config, self._rng, attempt)
            delay = backoff.next_delay(ran_for=trio.current_time() - started)
            attempt = backoff.attempt
            self._status = msgspec.structs.replace(self._status, state="backoff")
            await trio.sleep(delay)

    async def remove_all(self) -> None:
        """Stop every runtime this entry found (the entry was removed from the config)."""
        await apply_sources(self._supervisor, self._nursery, [], self.owner)
        self._status = msgspec.structs.replace(self._status, runtime_count=0)
        self._keyed = None
