"""The contract between the daemon and a worker runtime that lives inside its process.

An embedded runtime is called directly: no endpoint, token or socket. The daemon reads a
summary and the current workers once, then follows an async subscription of change events,
so a change reaches the registry as soon as the runtime makes it (no polling). Operations
(stop, cancel, input) are optional: a runtime offers exactly the ones it implements, and
the registry advertises a capability only for those.

The shapes follow the yoi worker-runtime domain model (contract section 3): a worker is
``running``, ``stopped`` or ``cancelled``, and the first terminal state wins. Events carry
whole worker summaries, not deltas, so applying one twice, or after a snapshot that already
contains it, changes nothing: that is what lets the daemon resubscribe and resynchronise
from a full snapshot without losing or double-counting a change.

``summary()`` and ``workers()`` are synchronous and called on the daemon's event loop: they
must not block. Operations are ``async``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

import msgspec

WorkerStatus = Literal["running", "stopped", "cancelled"]

InputKind = Literal["user", "system", "notify", "compact", "list_rewind_targets", "register_peer"]
"""Input kinds of every yoi era (contract-v2 section 1.7.1): ``user`` and ``system`` until July,
``user``, ``notify``, ``compact``, ``list_rewind_targets`` and ``register_peer`` since. The
registry passes the kind on; a runtime that does not take it refuses the input."""


class Intent(msgspec.Struct, frozen=True):
    """Why a worker exists (upstream's intent, tagged by ``kind``); ``value`` names the
    role of a ``role`` intent or summarises a ``task``."""

    kind: Literal["assistant", "task", "role"] = "assistant"
    value: str | None = None


class Profile(msgspec.Struct, frozen=True):
    """Which profile a worker runs (upstream's profile selector, tagged by ``kind``)."""

    kind: Literal["runtime_default", "builtin", "named"] = "runtime_default"
    value: str | None = None


class WorkerSummary(msgspec.Struct, frozen=True, gc=False):
    """One worker as the runtime reports it: the whole state, never a delta. Not tracked by
    the cycle collector: frozen, of strings, numbers and frozen records, it cannot be part
    of a cycle, and a runtime may hold very many."""

    worker_id: str
    status: WorkerStatus
    display_name: str | None = None
    intent: Intent = Intent()
    profile: Profile = Profile()
    transcript_len: int = 0
    last_event_id: int = 0
    updated_at: datetime | None = None


class RuntimeSummary(msgspec.Struct, frozen=True):
    """The runtime as a whole (upstream's ``RuntimeSummary``, without the limits)."""

    display_name: str | None
    backend: str
    status: Literal["running", "stopped"]
    worker_count: int
    active_worker_count: int
    stopped_worker_count: int
    cancelled_worker_count: int


class RuntimeChange(msgspec.Struct, frozen=True):
    """One batch from a subscription: upserted workers, removed ids, a new summary.

    ``runtime`` is set only when something runtime-wide changed (its status or name), so
    that following the stream costs work proportional to the change, not to the runtime.
    """

    workers: tuple[WorkerSummary, ...] = ()
    removed: tuple[str, ...] = ()
    runtime: RuntimeSummary | None = None


class LifecycleAck(msgspec.Struct, frozen=True):
    """Answer to stop or cancel: the status that won and the event that recorded it."""

    worker_id: str
    status: WorkerStatus
    event_id: int


class InputAck(msgspec.Struct, frozen=True):
    """Answer to input: the worker's status and where the input sits in its transcript."""

    worker_id: str
    status: WorkerStatus
    event_id: int
    transcript_sequence: int


# -- errors a runtime raises --------------------------------------------------------------


class EmbeddedRuntimeError(Exception):
    """Base of the refusals a runtime raises from an operation.

    The daemon maps each to a typed registry error with a message of its own; the text of
    these exceptions goes to the operator log only.
    """


class WorkerNotFound(EmbeddedRuntimeError):
    def __init__(self, worker_id: str) -> None:
        super().__init__(f"worker {worker_id!r} was not found")
        self.worker_id = worker_id


class WorkerNotRunning(EmbeddedRuntimeError):
    """Input was sent to a worker that already reached a terminal state."""

    def __init__(self, worker_id: str, status: WorkerStatus) -> None:
        super().__init__(f"worker {worker_id!r} is {status}, not running")
        self.worker_id = worker_id
        self.status = status


class RuntimeStopped(EmbeddedRuntimeError):
    def __init__(self) -> None:
        super().__init__("the runtime is stopped")


class InputRejected(EmbeddedRuntimeError):
    """The input itself is unacceptable (empty, too long, ...)."""


class SubscriptionOverflow(EmbeddedRuntimeError):
    """Raised by a subscription that fell behind and dropped events.

    The subscriber must resubscribe and resynchronise from a full snapshot; the daemon
    does so at once, without restarting the source.
    """

    def __init__(self) -> None:
        super().__init__("the subscription fell behind and was dropped")


# -- the protocol ------------------------------------------------------------------------


@runtime_checkable
class EmbeddedRuntime(Protocol):
    """What every embedded runtime offers: a summary, its workers, a subscription."""

    def summary(self) -> RuntimeSummary: ...

    def workers(self) -> Iterable[WorkerSummary]: ...

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[RuntimeChange]]:
        """Changes from the moment of entry. Enter before reading the snapshot, so that a
        change made in between is delivered (and harmlessly re-applied) rather than lost.
        The iterator raises :class:`SubscriptionOverflow` when it fell behind."""
        ...


@runtime_checkable
class SupportsStop(Protocol):
    async def stop(self, worker_id: str, reason: str | None = None) -> LifecycleAck:
        """Stop a worker; on a terminal worker, answer the status that won (idempotent)."""
        ...


@runtime_checkable
class SupportsCancel(Protocol):
    async def cancel(self, worker_id: str, reason: str | None = None) -> LifecycleAck:
        """Cancel a worker; on a terminal worker, answer the status that won (idempotent)."""
        ...


@runtime_checkable
class SupportsInput(Protocol):
    async def input(self, worker_id: str, kind: InputKind, content: str) -> InputAck:
        """Append input to a running worker's transcript; raise WorkerNotRunning otherwise."""
        ...


@runtime_checkable
class SupportsRun(Protocol):
    """A runtime with work of its own (timers, a demo clock): the daemon runs ``run`` in
    the source's task group for as long as the source runs."""

    async def run(self) -> None: ...
