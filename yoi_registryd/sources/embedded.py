"""The embedded runtime source: a worker runtime inside the daemon's process, followed live.

The runtime is built by a factory the configuration names (``module:attribute`` or an entry
point in the group ``yoi_registryd.runtimes``), with the source's ``options`` as keyword
arguments. The source subscribes before it reads the full snapshot, then turns every batch
of change events into one ``WorkersChanged`` delta, so a change is visible on the API as soon
as the actor publishes it, with work proportional to the change (never to the runtime's
size). A subscription that falls behind (:class:`SubscriptionOverflow`) is replaced at once
by a new one and a full snapshot; a subscription that fails or ends hands the source to the
supervisor, which restarts it with backoff, and the restart resynchronises the same way.
Nothing is dropped in either case, because events carry whole worker summaries.

The runtime object outlives source restarts (a restart resubscribes to the same runtime, so
an in-memory runtime keeps its workers); the factory is retried until it succeeds.

Worker operations the runtime implements are routed to it. Capabilities, per worker:

* ``can_stop`` / ``can_cancel``: true whenever the runtime implements the operation, also on
  a terminal worker. Both are idempotent: on a terminal worker they answer 200 with the
  status that won (the first terminal state), so a client that lost a response can retry.
* ``can_accept_input``: true only while the worker is ``running``. Input to a terminal
  worker is answered ``rejected`` with the reason ``worker_not_running``, whether the
  registry knew it had ended or the runtime refused it.
"""

from __future__ import annotations

import inspect
import logging
import pkgutil
import sys
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from importlib import metadata
from types import TracebackType
from typing import Final, TypeVar

import trio

from yoi_registryd import errors, operations
from yoi_registryd.config import EmbeddedSourceConfig
from yoi_registryd.ids import EMBEDDED_HOST_PREFIX, derive_id, is_valid_identifier
from yoi_registryd.messages import RuntimeDescriptor
from yoi_registryd.model import (
    Capabilities,
    Diagnostic,
    HostSpec,
    Implementation,
    SourceKind,
    WorkerCapabilities,
    WorkerRecord,
)
from yoi_registryd.operations import (
    CancelRequest,
    InputRequest,
    Operation,
    OperationAck,
    StopRequest,
)
from yoi_registryd.runtimes import protocol
from yoi_registryd.sources.base import Reporter, Source, SourceError, SourceSpec
from yoi_registryd.vocabulary import (
    RUNTIME_KINDS,
    WORKSPACE_SCOPES,
    machine_arch,
    machine_os,
    safe_display,
    worker_naming,
    worker_state,
    worker_workspace,
)

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "yoi_registryd.runtimes"
RUNTIME_KIND: Final = RUNTIME_KINDS["embedded_worker_runtime"]
HOST_KIND: Final = "embedded-worker-runtime-host"
IMPLEMENTATION: Final = Implementation(
    "embedded_worker_runtime", "backend-internal worker-runtime Worker"
)
NOTE: Final = (
    "backend-internal embedded worker-runtime Runtime exposed only through runtime_id plus "
    "worker_id projections"
)

# Typed codes of the source's failures (served as the runtime's last_error).
FACTORY_NOT_FOUND: Final = "embedded_factory_not_found"
FACTORY_INVALID: Final = "embedded_factory_invalid"
FACTORY_FAILED: Final = "embedded_factory_failed"
RUNTIME_INVALID: Final = "embedded_runtime_invalid"
SNAPSHOT_FAILED: Final = "embedded_snapshot_failed"
SUBSCRIPTION_FAILED: Final = "embedded_subscription_failed"
SUBSCRIPTION_CLOSED: Final = "embedded_subscription_closed"
RUNTIME_TASK_FAILED: Final = "embedded_runtime_task_failed"
WORKER_ID_INVALID: Final = "embedded_worker_id_invalid"

INVALID_IDS_SUBJECT: Final = "embedded:invalid-worker-ids"
"""Diagnostics subject for the workers skipped because their ids are not registry ids."""

_OPERATIONS: Final[tuple[tuple[Operation, type], ...]] = (
    ("stop", protocol.SupportsStop),
    ("cancel", protocol.SupportsCancel),
    ("input", protocol.SupportsInput),
)

T = TypeVar("T")


# -- loading the runtime ------------------------------------------------------------------


def _load(load: Callable[[], object], module_name: str, named: str) -> object:
    """``load()`` (a lookup of ``module:attribute``), its failures typed: the module or the
    attribute not found, or the module's own code failing while it is imported."""
    try:
        return load()
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise SourceError(
                FACTORY_NOT_FOUND, f"the runtime factory {named}: module not found"
            ) from exc
        raise _import_failed(named, exc) from exc
    except AttributeError as exc:
        # Raised by the lookup when the module imported; by the module's code when it did not.
        if module_name not in sys.modules:
            raise _import_failed(named, exc) from exc
        raise SourceError(
            FACTORY_NOT_FOUND, f"the runtime factory {named}: attribute not found"
        ) from None
    except Exception as exc:
        raise _import_failed(named, exc) from exc


def _failure(subject: str, code: str, what: str, exc: BaseException) -> SourceError:
    """A typed failure whose served message names only the exception's type.

    Code of the runtime's (and its factory's, which is handed the options) raised this, so
    its text may hold anything, a secret option included: at WARNING the log says what
    failed and the type; the text and traceback go to DEBUG only.
    """
    kind = type(exc).__name__
    log.warning("%s: %s (%s); run with --log-level debug for details", subject, what, kind)
    log.debug("%s: %s", subject, what, exc_info=exc)
    return SourceError(code, f"{what} ({kind})")


class _TypedFailures:
    """``with _TypedFailures(subject, code, what):`` around a call into the runtime's code turns
    any exception it raises into the typed failure of :func:`_failure`."""

    def __init__(self, subject: str, code: str, what: str) -> None:
        self.subject, self.code, self.what = subject, code, what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception):
            raise _failure(self.subject, self.code, self.what, exc) from exc


def _import_failed(named: str, exc: Exception) -> SourceError:
    return _failure(
        "embedded source", FACTORY_FAILED, f"importing the runtime factory {named} failed", exc
    )


def _entry_point_target(name: str) -> object:
    named = f"entry point {name!r}"
    found = metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    values = {ep.value for ep in found}
    if not values:
        raise SourceError(
            FACTORY_NOT_FOUND, f"no entry point {name!r} in the group {ENTRY_POINT_GROUP}"
        )
    if len(values) > 1:
        raise SourceError(
            FACTORY_INVALID,
            f"the entry point {name!r} in the group {ENTRY_POINT_GROUP} is defined "
            f"{len(values)} times with different targets",
        )
    entry_point = next(iter(found))
    target = entry_point.pattern.match(entry_point.value)
    if target is None or not target["attr"]:
        raise SourceError(FACTORY_INVALID, f"the {named} does not name module:attribute")
    return _load(entry_point.load, target["module"], named)


def load_factory(config: EmbeddedSourceConfig) -> Callable[..., object]:
    """The callable the configuration names; a typed :class:`SourceError` if there is none."""
    if config.factory is not None:
        factory = config.factory
        named = repr(factory)
        target = _load(lambda: pkgutil.resolve_name(factory), factory.partition(":")[0], named)
    elif config.entry_point is not None:
        target = _entry_point_target(config.entry_point)
        named = f"entry point {config.entry_point!r}"
    else:  # validation rules this out
        raise SourceError(FACTORY_NOT_FOUND, "no runtime factory is configured")
    if not callable(target):
        raise SourceError(FACTORY_INVALID, f"the runtime factory {named} is not callable")
    return target


async def _maybe_await(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


class RuntimeHolder:
    """Builds the runtime on first use (retried on every start until it works) and keeps it
    for later restarts of the same configured source."""

    def __init__(self, config: EmbeddedSourceConfig) -> None:
        self.config = config
        self.runtime: protocol.EmbeddedRuntime | None = None

    async def get(self) -> protocol.EmbeddedRuntime:
        if self.runtime is not None:
            return self.runtime
        factory = load_factory(self.config)
        subject = f"embedded source {self.config.runtime_id}"
        with _TypedFailures(subject, FACTORY_FAILED, "the runtime factory failed"):
            runtime = await _maybe_await(factory(**self.config.options))
        if not isinstance(runtime, protocol.EmbeddedRuntime):
            raise SourceError(
                RUNTIME_INVALID,
                "the runtime factory returned an object without summary(), workers() and "
                "subscribe()",
            )
        self.runtime = runtime
        return runtime


# -- projection ---------------------------------------------------------------------------


def _role(intent: protocol.Intent) -> str | None:
    if intent.kind == "role":
        return safe_display(intent.value)
    return intent.kind


def _profile(profile: protocol.Profile) -> str | None:
    if profile.kind == "runtime_default":
        return None
    return safe_display(profile.value)


class _Projection:
    """Turns the runtime's shapes into registry records; fixed per runtime object."""

    def __init__(self, config: EmbeddedSourceConfig, operations: frozenset[Operation]) -> None:
        self.config = config
        self.runtime_id = config.runtime_id
        self.operations = operations
        bound = config.workspaces
        # yoi derives its embedded runtime's host id from the workspace's id
        # (contract-v2 section 1.9): so does a runtime bound to one workspace. A runtime
        # serving any workspace has no workspace to name its host after: the runtime does.
        self.host_id = derive_id(
            EMBEDDED_HOST_PREFIX, bound[0] if len(bound) == 1 else config.runtime_id
        )
        self.workspace = worker_workspace(
            "embedded_worker_runtime", bound[0] if len(bound) == 1 else None
        )
        self.capabilities = Capabilities(
            can_list_hosts=True,
            can_list_workers=True,
            can_get_worker=True,
            can_stop_worker="stop" in operations,
            can_accept_input="input" in operations,
            local_pod_inspection="not_applicable",
            workspace_scope=WORKSPACE_SCOPES["embedded_worker_runtime"],
            os=machine_os(),
            arch=machine_arch(),
            can_cancel_worker="cancel" in operations,
            registry_workspace_scope="current_workspace" if bound else "all_workspaces",
        )
        self.hosts = (
            HostSpec(
                host_id=self.host_id,
                label="Embedded worker-runtime host",
                kind=HOST_KIND,
                capabilities=self.capabilities,
            ),
        )
        can_stop, can_cancel = "stop" in operations, "cancel" in operations
        self._worker_capabilities = {
            "running": WorkerCapabilities(
                can_accept_input="input" in operations, can_stop=can_stop, can_cancel=can_cancel
            ),
            "terminal": WorkerCapabilities(can_stop=can_stop, can_cancel=can_cancel),
        }

    def descriptor(self, summary: protocol.RuntimeSummary, degraded: bool) -> RuntimeDescriptor:
        return RuntimeDescriptor(
            label=self.config.label or safe_display(summary.display_name) or self.runtime_id,
            kind=RUNTIME_KIND,
            capabilities=self.capabilities,
            note=NOTE,
            stopped=summary.status == "stopped",
            degraded=degraded,
        )

    def record(self, worker: protocol.WorkerSummary) -> WorkerRecord:
        requested = safe_display(worker.display_name)
        profile = _profile(worker.profile)
        naming = worker_naming(worker.worker_id, requested, profile, internal=True)
        state = worker_state(worker.status)
        return WorkerRecord(
            runtime_id=self.runtime_id,
            worker_id=worker.worker_id,
            host_id=self.host_id,
            display_name=naming.display_name,
            label=requested or worker.worker_id,
            role=_role(worker.intent),
            profile=profile,
            singleton_key=naming.singleton_key,
            tags=naming.tags,
            workspace=self.workspace,
            state=state,
            status=state,
            last_seen_at=worker.updated_at,
            implementation=IMPLEMENTATION,
            capabilities=self._worker_capabilities[
                "running" if worker.status == "running" else "terminal"
            ],
            registry_state=worker.status,
        )


# -- operations ---------------------------------------------------------------------------


class EmbeddedOperations:
    """Routes registry operations to the runtime and maps its refusals to typed reasons.

    The registry is not told of the result here: the runtime publishes the change, and the
    subscription carries it to the registry at once.
    """

    def __init__(self, runtime_id: str, runtime: protocol.EmbeddedRuntime) -> None:
        self.runtime_id = runtime_id
        self.runtime = runtime

    async def _call(
        self, operation: Operation, worker_id: str, call: Callable[[], object]
    ) -> object:
        rid = self.runtime_id
        try:
            return await _maybe_await(call())
        except protocol.WorkerNotFound:
            raise errors.UnknownWorker(rid, worker_id) from None
        except protocol.WorkerNotRunning:
            raise operations.worker_not_running(rid, worker_id, operation) from None
        except protocol.RuntimeStopped:
            raise operations.runtime_stopped(rid) from None
        except protocol.InputRejected as exc:
            log.info("embedded runtime %s rejected input (%s)", rid, type(exc).__name__)
            raise operations.request_rejected(rid, operation) from None
        except protocol.EmbeddedRuntimeError as exc:
            log.info("embedded runtime %s refused %s (%s)", rid, operation, type(exc).__name__)
            raise operations.rejected(rid, worker_id, operation) from None

    async def _lifecycle(
        self, operation: Operation, worker_id: str, reason: str | None
    ) -> OperationAck:
        method = getattr(self.runtime, operation, None)
        if method is None:
            raise operations.unsupported(self.runtime_id, operation)
        ack = await self._call(operation, worker_id, lambda: method(worker_id, reason))
        if not isinstance(ack, protocol.LifecycleAck):
            raise TypeError(f"{operation} returned {type(ack).__name__}, not protocol.LifecycleAck")
        return OperationAck(self.runtime_id, worker_id, operation, ack.status, ack.event_id)

    async def stop(self, worker_id: str, request: StopRequest) -> OperationAck:
        return await self._lifecycle("stop", worker_id, request.reason)

    async def cancel(self, worker_id: str, request: CancelRequest) -> OperationAck:
        return await self._lifecycle("cancel", worker_id, request.reason)

    async def input(self, worker_id: str, request: InputRequest) -> OperationAck:
        if not isinstance(self.runtime, protocol.SupportsInput):
            raise operations.unsupported(self.runtime_id, "input")
        runtime = self.runtime
        ack = await self._call(
            "input", worker_id, lambda: runtime.input(worker_id, request.kind, request.content)
        )
        if not isinstance(ack, protocol.InputAck):
            raise TypeError(f"input returned {type(ack).__name__}, not protocol.InputAck")
        return OperationAck(
            self.runtime_id,
            worker_id,
            "input",
            ack.status,
            event_id=ack.event_id,
            transcript_sequence=ack.transcript_sequence,
        )


# -- the source ---------------------------------------------------------------------------


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to hand the supervisor: a typed SourceError when there is one."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    return next((e for e in leaves if isinstance(e, SourceError)), leaves[0])


class EmbeddedRuntimeSource:
    """Follows one embedded runtime by subscription and routes its operations."""

    source_kind: SourceKind = EmbeddedSourceConfig.source_kind

    @classmethod
    def spec(cls, config: EmbeddedSourceConfig) -> SourceSpec:
        """Every (re)start builds a new source over the same runtime object."""
        return SourceSpec.of(
            config, embedded_source_factory(config), label=config.label or config.runtime_id
        )

    def __init__(self, config: EmbeddedSourceConfig, holder: RuntimeHolder | None = None) -> None:
        self.config = config
        self.runtime_id = config.runtime_id
        self.holder = holder or RuntimeHolder(config)
        self._subject = f"embedded source {config.runtime_id}"
        self.resyncs = 0
        """Full resynchronisations after a subscription fell behind (for tests and logs)."""
        self._invalid_ids: set[str] = set()
        self._descriptor: RuntimeDescriptor | None = None
        self._send_lock = trio.Lock()

    async def run(self, reporter: Reporter) -> None:
        try:
            runtime = await self.holder.get()
            await self._run(reporter, runtime)
        except SourceError as exc:
            await reporter.failed(exc.code, exc.message)
            raise

    async def _run(self, reporter: Reporter, runtime: protocol.EmbeddedRuntime) -> None:
        operations = frozenset(op for op, kind in _OPERATIONS if isinstance(runtime, kind))
        projection = _Projection(self.config, operations)
        handler = EmbeddedOperations(self.runtime_id, runtime) if operations else None
        try:
            with reporter.operations(handler) if handler is not None else nullcontext():
                async with trio.open_nursery() as nursery:
                    if isinstance(runtime, protocol.SupportsRun):
                        nursery.start_soon(self._run_runtime_task, runtime)
                    nursery.start_soon(self._heartbeat, reporter, runtime, projection)
                    await self._follow(reporter, runtime, projection)
        except ExceptionGroup as group:
            raise _first_failure(group) from None

    async def _run_runtime_task(self, runtime: protocol.SupportsRun) -> None:
        with _TypedFailures(self._subject, RUNTIME_TASK_FAILED, "the runtime's own task failed"):
            await runtime.run()

    async def _follow(
        self, reporter: Reporter, runtime: protocol.EmbeddedRuntime, projection: _Projection
    ) -> None:
        while True:
            try:
                async with runtime.subscribe() as events:
                    # Subscribed first: whatever changes from here on is delivered, and
                    # re-applying a change the snapshot already holds is harmless.
                    await self._resync(reporter, runtime, projection)
                    async for change in events:
                        await self._apply(reporter, runtime, projection, change)
            except protocol.SubscriptionOverflow:
                self.resyncs += 1
                log.info(
                    "embedded source %s: the subscription fell behind; resynchronising",
                    self.runtime_id,
                )
                continue
            except SourceError:
                raise
            except Exception as exc:
                raise _failure(
                    self._subject, SUBSCRIPTION_FAILED, "the runtime's subscription failed", exc
                ) from exc
            raise SourceError(SUBSCRIPTION_CLOSED, "the runtime ended its subscription")

    def _summary(self, runtime: protocol.EmbeddedRuntime) -> protocol.RuntimeSummary:
        with _TypedFailures(self._subject, SNAPSHOT_FAILED, "the runtime could not be read"):
            return runtime.summary()

    def _invalid_diagnostics(self) -> tuple[Diagnostic, ...]:
        count = len(self._invalid_ids)
        if not count:
            return ()
        return (
            Diagnostic(
                WORKER_ID_INVALID,
                "warning",
                f"{count} workers of this runtime have ids that are not valid registry ids "
                "(1 to 120 bytes of [A-Za-z0-9_:-]) and are not listed",
            ),
        )

    async def _resync(
        self, reporter: Reporter, runtime: protocol.EmbeddedRuntime, projection: _Projection
    ) -> None:
        """Report the whole runtime: the first observation, and after any lost events."""
        async with self._send_lock:
            summary = self._summary(runtime)
            what = "the runtime's workers could not be read"
            with _TypedFailures(self._subject, SNAPSHOT_FAILED, what):
                workers = tuple(runtime.workers())
            records: list[WorkerRecord] = []
            self._invalid_ids = set()
            for worker in workers:
                if is_valid_identifier(worker.worker_id):
                    records.append(projection.record(worker))
                else:
                    self._invalid_ids.add(worker.worker_id)
            self._descriptor = projection.descriptor(summary, bool(self._invalid_ids))
            diagnostics = {INVALID_IDS_SUBJECT: self._invalid_diagnostics()}
            await reporter.observed(self._descriptor, projection.hosts, tuple(records), diagnostics)
            log.info(
                "embedded source %s: %d workers (full snapshot)", self.runtime_id, len(records)
            )

    async def _apply(
        self,
        reporter: Reporter,
        runtime: protocol.EmbeddedRuntime,
        projection: _Projection,
        change: protocol.RuntimeChange,
    ) -> None:
        """One batch of events -> one delta; work proportional to the batch."""
        upserts: list[WorkerRecord] = []
        removals: list[str] = []
        invalid_before = len(self._invalid_ids)
        for worker in change.workers:
            if is_valid_identifier(worker.worker_id):
                upserts.append(projection.record(worker))
            else:
                self._invalid_ids.add(worker.worker_id)
        for worker_id in change.removed:
            if is_valid_identifier(worker_id):
                removals.append(worker_id)
            else:
                self._invalid_ids.discard(worker_id)
        invalid_changed = len(self._invalid_ids) != invalid_before
        if change.runtime is None and not invalid_changed:
            # The common case: workers only. No descriptor, so no ordering to keep with the
            # heartbeat, and no lock (taking one costs a scheduling round per event).
            await reporter.changed(upserts=tuple(upserts), removals=tuple(removals))
            return
        async with self._send_lock:
            # Read afresh under the lock, so descriptors reach the registry in order.
            descriptor = projection.descriptor(self._summary(runtime), bool(self._invalid_ids))
            new_descriptor = descriptor if descriptor != self._descriptor else None
            self._descriptor = descriptor
            await reporter.changed(
                upserts=tuple(upserts),
                removals=tuple(removals),
                diagnostics=(
                    {INVALID_IDS_SUBJECT: self._invalid_diagnostics()} if invalid_changed else None
                ),
                runtime=new_descriptor,
            )

    async def _heartbeat(
        self, reporter: Reporter, runtime: protocol.EmbeddedRuntime, projection: _Projection
    ) -> None:
        """A quiet runtime is still observed: read its summary every quarter of
        ``stale_after`` so that the registry neither marks it stale nor misses a stop."""
        interval = self.config.stale_after.total_seconds() / 4
        while True:
            await trio.sleep(interval)
            async with self._send_lock:
                if self._descriptor is None:
                    continue  # the first snapshot is not reported yet
                descriptor = projection.descriptor(self._summary(runtime), bool(self._invalid_ids))
                changed, self._descriptor = descriptor != self._descriptor, descriptor
                await reporter.changed(runtime=descriptor if changed else None)


def embedded_source_factory(config: EmbeddedSourceConfig) -> Callable[[], Source]:
    """What the supervisor calls on every (re)start: a fresh source over a shared holder, so
    that the runtime object outlives restarts of its source."""
    holder = RuntimeHolder(config)
    return lambda: EmbeddedRuntimeSource(config, holder)
