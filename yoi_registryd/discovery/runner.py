"""One supervised task per ``[[discovery]]`` entry, applying what its backend finds.

A backend reports complete sets of runtime descriptions (``found``) or a failed refresh
(``failed``). A set becomes remote sources through :func:`yoi_registryd.reload.apply_sources`,
the path a reload takes: new runtimes start, vanished ones stop, changed ones restart and
unchanged ones are not touched. A failed refresh, or a backend that raises (restarted with
the supervisor's backoff), keeps the last good set: discovery never empties the registry
because its backend is down; the set is only marked stale after ``stale_after``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, Protocol

import msgspec
import trio

from yoi_registryd.clock import utcnow
from yoi_registryd.config import DiscoveryConfig, RemoteSourceConfig, SourceConfig
from yoi_registryd.discovery.records import RUNTIME_ID_IN_USE, Refusal, to_sources
from yoi_registryd.model import ErrorInfo
from yoi_registryd.reload import apply_sources
from yoi_registryd.sources.base import SourceSpec
from yoi_registryd.supervisor import Supervisor, restart_backoff

log = logging.getLogger(__name__)

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
class _State:
    started_at: datetime = dataclasses.field(default_factory=utcnow)
    state: str = "running"
    runtime_ids: tuple[str, ...] = ()
    last_refresh_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: ErrorInfo | None = None
    refreshes: int = 0
    failures: int = 0
    refused: list[Refusal] = dataclasses.field(default_factory=list)


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
        self._state = _State()
        self.changed = trio.Event()
        """Set (and replaced) after every refresh: for tests and waiters."""

    def status(self, now: datetime | None = None) -> DiscoveryStatus:
        s = self._state
        now = now or utcnow()
        fresh_since = s.last_success_at or s.started_at
        return DiscoveryStatus(
            name=self.entry.name,
            kind=self.entry.kind,
            state=s.state,
            stale=now - fresh_since > self.entry.stale_after,
            runtime_count=len(s.runtime_ids),
            last_refresh_at=s.last_refresh_at,
            last_success_at=s.last_success_at,
            last_error=s.last_error,
            refreshes=s.refreshes,
            failures=s.failures,
            refused_count=len(s.refused),
            refused=s.refused[:MAX_REFUSALS_SHOWN],
        )

    @property
    def runtime_ids(self) -> tuple[str, ...]:
        return self._state.runtime_ids

    async def found(self, records: list[tuple[str, Any]]) -> None:
        sources, refused = to_sources(self.entry, records)
        specs = [self._spec(source) for source in sources]
        with trio.CancelScope(shield=True):  # a set is applied whole, even on reload
            plan = await apply_sources(self._supervisor, self._nursery, specs, self.owner)
        taken = set(plan.taken)
        for rid in plan.taken:
            refused.append(
                Refusal(rid, RUNTIME_ID_IN_USE, "another source already has this runtime id")
            )
        s = self._state
        s.refreshes += 1
        s.last_refresh_at = s.last_success_at = utcnow()
        s.last_error = None
        kept = (src.runtime_id for src in sources if src.runtime_id not in taken)
        s.runtime_ids = tuple(sorted(kept))
        s.refused = refused
        if plan.start or plan.stop or plan.restart:
            log.info(
                "discovery %s: %d runtimes (%d started, %d stopped, %d restarted), %d refused",
                self.entry.name,
                len(s.runtime_ids),
                len(plan.start),
                len(plan.stop),
                len(plan.restart),
                len(refused),
            )
        self._notify()

    def failed(self, failure: DiscoveryFailure) -> None:
        s = self._state
        s.refreshes += 1
        s.failures += 1
        s.last_refresh_at = utcnow()
        s.last_error = ErrorInfo(failure.code, failure.message)
        log.warning(
            "discovery %s: refresh failed, keeping the last good set: %s",
            self.entry.name,
            failure.message,
        )
        self._notify()

    def _spec(self, source: RemoteSourceConfig) -> SourceSpec:
        return dataclasses.replace(self._make_spec(source), owner=self.owner)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def run(self) -> None:
        """Run the backend; restart it with the supervisor's backoff when it fails."""
        attempt = 0
        while True:
            started = trio.current_time()
            self._state.state = "running"
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
            self._state.state = "backoff"
            await trio.sleep(delay)

    async def remove_all(self) -> None:
        """Stop every runtime this entry found (the entry was removed from the config)."""
        await apply_sources(self._supervisor, self._nursery, [], self.owner)
        self._state.runtime_ids = ()
