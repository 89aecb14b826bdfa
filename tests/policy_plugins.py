"""A custom policy and custom audit sinks, loaded by the daemon the way an operator's would be
(``[policy] custom = "tests.policy_plugins:read_only_policy"``,
``[audit] sink = "tests.policy_plugins:memory_sink"``).

Sinks record what they received in :data:`SINKS` under their ``key`` option, so a test can
read what the daemon it started wrote.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import trio

from yoi_registryd.audit import AuditContext, AuditRecord
from yoi_registryd.model import HostRecord, RuntimeRecord, WorkerRecord
from yoi_registryd.policy import (
    DefaultPolicy,
    PolicyContext,
    Principal,
    RequestFacts,
    Visibility,
)

SINKS: dict[str, MemorySink] = {}


class _WithoutRole:
    """The default view, minus workers of one role."""

    def __init__(self, inner: Visibility, role: str) -> None:
        self.inner = inner
        self.role = role
        self.key: Hashable = ("without-role", role, inner.key)
        self.restricted = True

    def runtime_visible(self, runtime: RuntimeRecord) -> bool:
        return self.inner.runtime_visible(runtime)

    def host_visible(self, host: HostRecord) -> bool:
        return self.inner.host_visible(host)

    def worker_visible(self, worker: WorkerRecord) -> bool:
        return worker.role != self.role and self.inner.worker_visible(worker)


class ReadOnlyPolicy:
    """Workspace visibility as the default, but: the clients named in ``read_only`` may not
    POST, and workers whose role is ``hidden_role`` are visible to no one."""

    def __init__(self, context: PolicyContext) -> None:
        self.default = DefaultPolicy(context)
        self.read_only = frozenset(filter(None, context.options.get("read_only", "").split(",")))
        self.hidden_role = context.options.get("hidden_role", "")
        self.asked: list[RequestFacts] = []

    def allows(self, request: RequestFacts) -> bool:
        self.asked.append(request)
        return not (request.method == "POST" and request.principal.client in self.read_only)

    def view(self, principal: Principal) -> Visibility:
        return _WithoutRole(self.default.view(principal), self.hidden_role)


def read_only_policy(context: PolicyContext) -> ReadOnlyPolicy:
    return ReadOnlyPolicy(context)


def exploding_policy(context: PolicyContext) -> ExplodingPolicy:
    return ExplodingPolicy(context)


class ExplodingPolicy(ReadOnlyPolicy):
    """A policy with a bug: the daemon must refuse (500), never let the request through."""

    def allows(self, request: RequestFacts) -> bool:
        raise RuntimeError("policy bug")


def not_a_policy(context: PolicyContext) -> object:
    return object()


NOT_CALLABLE = 42


class MemorySink:
    """Keeps every batch in memory. ``gate``: while not set, ``write`` waits (a slow disk).
    ``failures``: the next writes that raise (a failing disk)."""

    def __init__(self, context: AuditContext) -> None:
        self.context = context
        self.batches: list[list[AuditRecord]] = []
        self.gate: trio.Event | None = None
        self.failures = int(context.options.get("failures", "0"))
        self.reopened = 0
        self.closed = False
        self.writes_started = 0

    @property
    def records(self) -> list[AuditRecord]:
        return [r for batch in self.batches for r in batch]

    async def write(self, records: Sequence[AuditRecord]) -> None:
        self.writes_started += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failures > 0:
            self.failures -= 1
            raise OSError("disk on fire")
        self.batches.append(list(records))

    async def reopen(self) -> None:
        self.reopened += 1

    async def aclose(self) -> None:
        self.closed = True


def memory_sink(context: AuditContext) -> MemorySink:
    sink = MemorySink(context)
    SINKS[context.options["key"]] = sink
    return sink
