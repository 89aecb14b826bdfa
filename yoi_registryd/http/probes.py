"""Kubernetes-style health probes: ``/livez``, ``/readyz`` and ``/healthz`` (alias of livez).

The status code is the contract: 200 when every check passes, 503 otherwise. ``?verbose``
lists each check as ``[+]name ok`` or ``[-]name failed: reason``; ``?exclude=NAME`` (repeatable)
skips one. Checks read in-memory state only, so a probe stays cheap under load and needs no
token; the reasons name runtime ids and durations, never a path or endpoint.

Liveness asks "should this process be restarted?": the event loop answers (or no probe would
be served) and the registry actor takes a message from its channel. Readiness asks "should
traffic be sent here?": the listeners are up, every source has either completed its first
observation or used up its start-up grace, and the daemon is not shutting down. A source
that fails *after* its first observation does not make the daemon unready: the registry keeps
serving, and that runtime shows as ``unavailable`` or ``stale`` instead (a flapping runtime
must not take the whole registry out of a load balancer). For the same reason only the
sources known when the daemon first became ready are waited for: a runtime registered later
(found by ``[[discovery]]``, added by a reload) never makes a ready daemon unready, even
while it cannot be reached (readiness is about this daemon, not about every runtime).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

import trio

from yoi_registryd.errors import InvalidQuery
from yoi_registryd.http import views
from yoi_registryd.registry import ObservationStats, RegistryActor, Snapshot, startup_grace_left

ACTOR_PING_TIMEOUT: Final = 2.0
"""How long the registry actor may take to reach a probe message before it counts as stuck."""

ProbeKind = Literal["livez", "readyz"]


@dataclass
class Lifecycle:
    """What the daemon tells the probes about itself: listening yet, shutting down yet."""

    shutdown: trio.Event = field(default_factory=trio.Event)
    listening: bool = False
    ready_since: float | None = None
    """When every readiness check first passed (trio's clock); sources registered after it
    are not waited for."""

    @property
    def shutting_down(self) -> bool:
        return self.shutdown.is_set()


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ProbeQuery:
    verbose: bool = False
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ProbeResult:
    kind: ProbeKind
    checks: tuple[Check, ...]
    excluded: tuple[str, ...]
    unknown_excludes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def status(self) -> int:
        return 200 if self.ok else 503

    def render(self, verbose: bool) -> str:
        """The body, in the format Kubernetes components use."""
        if self.ok and not verbose:
            return "ok\n"
        lines = [
            f"[+]{c.name} ok" if c.ok else f"[-]{c.name} failed: {c.reason}" for c in self.checks
        ]
        lines.extend(f"[+]{name} excluded: ok" for name in self.excluded)
        if self.unknown_excludes:
            names = ", ".join(views.quoted_key(n) for n in self.unknown_excludes)
            lines.append(f"warn: some health checks cannot be excluded: no matches for {names}")
        lines.append(f"{self.kind} check {'passed' if self.ok else 'failed'}")
        return "\n".join(lines) + "\n"


def parse_probe_query(args: Iterable[tuple[str, str]]) -> ProbeQuery:
    """``verbose`` (any value, or none) and repeated ``exclude``; anything else is a 400."""
    verbose = False
    exclude: set[str] = set()
    for key, value in args:
        if key == "verbose":
            verbose = value.lower() not in ("0", "false")
        elif key == "exclude":
            exclude.add(value)
        else:
            raise InvalidQuery("probes take only 'verbose' and 'exclude'", "query")
    return ProbeQuery(verbose, frozenset(exclude))


async def _actor_check(actor: RegistryActor) -> Check:
    if not actor.running:
        return Check("registry-actor", False, "the registry actor is not running")
    if not await actor.ping(ACTOR_PING_TIMEOUT):
        return Check(
            "registry-actor",
            False,
            f"the registry actor did not take a message within {ACTOR_PING_TIMEOUT:g}s",
        )
    return Check("registry-actor", True)


def _awaited(stats: ObservationStats, now: float, ready_since: float | None) -> float | None:
    """Seconds of start-up grace left when readiness waits for this source, else ``None``:
    not observed yet, grace left, and registered before the daemon was first ready."""
    left = startup_grace_left(stats, now)
    if left is None or (ready_since is not None and stats.registered_at > ready_since):
        return None
    return left


def source_checks(snapshot: Snapshot, now: float, ready_since: float | None = None) -> list[Check]:
    """One check per source: first observation done, or its start-up grace has passed, or
    registered after the daemon was first ready (``ready_since``)."""
    checks: list[Check] = []
    for rid in snapshot.sorted_runtime_ids:
        left = _awaited(snapshot.runtimes[rid].stats, now, ready_since)
        name = f"source/{rid}"
        if left is None:
            checks.append(Check(name, True))
        else:
            reason = f"no first observation yet; start-up grace ends in {left:.1f}s"
            checks.append(Check(name, False, reason))
    return checks


def awaited_sources(
    snapshot: Snapshot,
    now: float,
    ready_since: float | None = None,
    among: Iterable[str] | None = None,
) -> dict[str, float]:
    """The sources readiness still waits for, each with its start-up grace left; of
    ``among`` only (default: every source), so that a caller waiting for readiness looks
    again only at the sources it still waits for."""
    runtimes = snapshot.runtimes
    awaited: dict[str, float] = {}
    for rid in runtimes if among is None else among:
        entry = runtimes.get(rid)
        if entry is not None and (left := _awaited(entry.stats, now, ready_since)) is not None:
            awaited[rid] = left
    return awaited


async def evaluate(
    kind: ProbeKind,
    actor: RegistryActor,
    lifecycle: Lifecycle,
    exclude: frozenset[str] = frozenset(),
) -> ProbeResult:
    """Run the checks of one probe (liveness checks are part of readiness too)."""
    checks = [Check("ping", True), await _actor_check(actor)]
    if kind == "readyz":
        checks.append(
            Check("listener", True)
            if lifecycle.listening
            else Check("listener", False, "the listeners are not serving yet")
        )
        checks.append(
            Check("shutdown", False, "the daemon is shutting down")
            if lifecycle.shutting_down
            else Check("shutdown", True)
        )
        now = trio.current_time()
        checks.extend(source_checks(actor.snapshot, now, lifecycle.ready_since))
        if lifecycle.ready_since is None and all(c.ok for c in checks):
            lifecycle.ready_since = now
    names = {c.name for c in checks}
    return ProbeResult(
        kind,
        tuple(c for c in checks if c.name not in exclude),
        tuple(sorted(names & exclude)),
        tuple(sorted(exclude - names)),
    )
