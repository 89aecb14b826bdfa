"""Worker operations routed through the registry to the runtime that owns the worker.

The registry does not run workers: ``stop``, ``cancel`` and ``input`` go to exactly one
runtime, chosen by ``runtime_id + worker_id``. A source whose runtime supports operations
registers a handler for its runtime while it runs (``Reporter.operations``); the router
checks the id, the snapshot and the capabilities before calling it.

Answers are yoi's (contract-v2 section 1.7.2): a ``WorkerLifecycleResult`` or
``WorkerInputResult`` whose ``state`` is ``accepted``, ``unsupported`` or ``rejected``. A
refusal of the operation itself, by the registry or the runtime, is not an HTTP error: it
answers 200 with the typed reason as a diagnostic (``operation_unsupported``,
``worker_not_running``, ...), because yoi's web console reads ``state``. What is not about
the operation (a bad id or body, an unknown or invisible runtime or worker, a runtime that
cannot be reached or answers nonsense) stays a typed error (``yoi_registryd.errors``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Final, Literal, Protocol

import msgspec

from yoi_registryd.errors import InvalidRequest, RuntimeUnavailable, WorkerNotVisible
from yoi_registryd.json_depth import MAX_JSON_DEPTH, TooDeep, decode_bounded
from yoi_registryd.model import Diagnostic, WorkerRecord
from yoi_registryd.registry import Snapshot
from yoi_registryd.runtimes.protocol import InputKind

Operation = Literal["stop", "cancel", "input"]
OperationState = Literal["accepted", "unsupported", "rejected"]

MAX_BODY_BYTES = 1024 * 1024

# The typed reasons of a refusal, served as the code of the result's diagnostic.
OPERATION_UNSUPPORTED: Final = "operation_unsupported"
"""The runtime does not offer the operation at all (state ``unsupported``)."""
WORKER_NOT_RUNNING: Final = "worker_not_running"
"""The worker has ended: it takes no input (and an ended worker of a runtime that does not
answer stop or cancel idempotently takes neither)."""
RUNTIME_STOPPED: Final = "runtime_stopped"
"""The runtime says it is stopped and takes no operations."""
OPERATION_REJECTED: Final = "operation_rejected"
"""The runtime refused the operation for a reason of its own (e.g. busy)."""
REQUEST_REJECTED: Final = "invalid_request"
"""The runtime refused the request as invalid (e.g. input it finds empty or too long)."""


class OperationRefused(Exception):
    """The runtime, or the registry on its behalf, declined the operation itself.

    Raised by the router and by source handlers; answered 200 with ``state`` and the
    reason as a warning diagnostic. Messages name only ids.
    """

    def __init__(self, state: Literal["unsupported", "rejected"], code: str, message: str) -> None:
        super().__init__(message)
        self.state: Literal["unsupported", "rejected"] = state
        self.code = code
        self.message = message

    def diagnostic(self) -> Diagnostic:
        return Diagnostic(code=self.code, severity="warning", message=self.message)


def unsupported(runtime_id: str, operation: str) -> OperationRefused:
    return OperationRefused(
        "unsupported",
        OPERATION_UNSUPPORTED,
        f"runtime {runtime_id!r} does not support {operation!r}",
    )


def worker_not_running(runtime_id: str, worker_id: str, operation: str) -> OperationRefused:
    return OperationRefused(
        "rejected",
        WORKER_NOT_RUNNING,
        f"worker {worker_id!r} of runtime {runtime_id!r} is not running and takes no {operation}",
    )


def runtime_stopped(runtime_id: str) -> OperationRefused:
    return OperationRefused("rejected", RUNTIME_STOPPED, f"runtime {runtime_id!r} is stopped")


def rejected(runtime_id: str, worker_id: str, operation: str) -> OperationRefused:
    return OperationRefused(
        "rejected",
        OPERATION_REJECTED,
        f"runtime {runtime_id!r} refused {operation!r} for worker {worker_id!r}",
    )


def request_rejected(runtime_id: str, operation: str) -> OperationRefused:
    return OperationRefused(
        "rejected",
        REQUEST_REJECTED,
        f"runtime {runtime_id!r} rejected the {operation} request as invalid",
    )


# Operation bodies ignore fields they do not know, as yoi's backend does (no
# ``deny_unknown_fields``): today's console may send ``ticket_assignment`` with stop or cancel
# and ``segments`` with input, which the registry has no use for. The body's size and nesting
# depth are bounded before it is decoded.


class StopRequest(msgspec.Struct, frozen=True):
    reason: str | None = None


class CancelRequest(msgspec.Struct, frozen=True):
    reason: str | None = None


class InputRequest(msgspec.Struct, frozen=True):
    content: Annotated[str, msgspec.Meta(min_length=1)]
    """Non-empty: runtimes refuse empty input, so the registry refuses it first (400)."""
    kind: InputKind = "user"
    """As in yoi, ``user`` when absent; which kinds a runtime accepts is the runtime's call."""


OperationRequest = StopRequest | CancelRequest | InputRequest

REQUEST_TYPES: Final[dict[Operation, type[OperationRequest]]] = {
    "stop": StopRequest,
    "cancel": CancelRequest,
    "input": InputRequest,
}


class OperationAck(msgspec.Struct, frozen=True):
    """What a handler returns once the runtime accepted an operation."""

    runtime_id: str
    worker_id: str
    operation: Operation
    status: str
    """The worker's status after the operation, as the runtime reports it."""
    event_id: int | None = None
    transcript_sequence: int | None = None


class WorkerLifecycleResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to stop and cancel: yoi's ``WorkerLifecycleResult``, then ours."""

    state: OperationState
    runtime_id: str
    worker_id: str
    event_id: int | msgspec.UnsetType = msgspec.UNSET
    """The runtime's event that recorded the operation, when it names one."""
    diagnostics: tuple[Diagnostic, ...] = ()
    """Why an operation was not accepted: one warning with the typed reason."""
    operation: Operation
    worker_status: str | msgspec.UnsetType = msgspec.UNSET
    """The worker's status after an accepted operation, as the runtime reports it."""


class WorkerInputResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to input: yoi's ``WorkerInputResult``, then ours."""

    state: OperationState
    runtime_id: str
    worker_id: str
    transcript_sequence: int | msgspec.UnsetType = msgspec.UNSET
    """Where the input sits in the worker's transcript, when the runtime says."""
    event_id: int | msgspec.UnsetType = msgspec.UNSET
    diagnostics: tuple[Diagnostic, ...] = ()
    operation: Literal["input"] = "input"
    worker_status: str | msgspec.UnsetType = msgspec.UNSET


OperationResult = WorkerLifecycleResult | WorkerInputResult

RESULT_TYPES: Final[dict[Operation, type[OperationResult]]] = {
    "stop": WorkerLifecycleResult,
    "cancel": WorkerLifecycleResult,
    "input": WorkerInputResult,
}
"""The answer each operation gets, accepted or refused."""


def _unset_if_none(value: int | None) -> int | msgspec.UnsetType:
    return msgspec.UNSET if value is None else value


def accepted_result(ack: OperationAck) -> OperationResult:
    """The result of an operation the runtime accepted."""
    if ack.operation == "input":
        return WorkerInputResult(
            state="accepted",
            runtime_id=ack.runtime_id,
            worker_id=ack.worker_id,
            transcript_sequence=_unset_if_none(ack.transcript_sequence),
            event_id=_unset_if_none(ack.event_id),
            worker_status=ack.status,
        )
    return WorkerLifecycleResult(
        state="accepted",
        runtime_id=ack.runtime_id,
        worker_id=ack.worker_id,
        event_id=_unset_if_none(ack.event_id),
        operation=ack.operation,
        worker_status=ack.status,
    )


def refused_result(
    runtime_id: str, worker_id: str, operation: Operation, refusal: OperationRefused
) -> OperationResult:
    """The result of an operation declined by the registry or the runtime."""
    diagnostics = (refusal.diagnostic(),)
    if operation == "input":
        return WorkerInputResult(
            state=refusal.state, runtime_id=runtime_id, worker_id=worker_id, diagnostics=diagnostics
        )
    return WorkerLifecycleResult(
        state=refusal.state,
        runtime_id=runtime_id,
        worker_id=worker_id,
        diagnostics=diagnostics,
        operation=operation,
    )


class RuntimeOperations(Protocol):
    """Implemented by sources whose runtime can act on workers.

    Handlers raise :class:`OperationRefused` when the runtime declines the operation, and
    typed registry errors (``UnknownWorker``, ``RuntimeUnavailable``, ...) for the rest;
    anything else is an internal error.
    """

    async def stop(self, worker_id: str, request: StopRequest) -> OperationAck: ...

    async def cancel(self, worker_id: str, request: CancelRequest) -> OperationAck: ...

    async def input(self, worker_id: str, request: InputRequest) -> OperationAck: ...


_WORKER_CAPABILITY: Final[dict[Operation, str]] = {
    "stop": "can_stop",
    "cancel": "can_cancel",
    "input": "can_accept_input",
}
_RUNTIME_CAPABILITY: Final[dict[Operation, str]] = {
    "stop": "can_stop_worker",
    "cancel": "can_cancel_worker",
    "input": "can_accept_input",
}


def decode_request(operation: Operation, body: bytes) -> OperationRequest:
    """Validate an operation body: unknown fields and wrong types are ``invalid_request``."""
    request_type = REQUEST_TYPES[operation]
    if not body.strip():
        if operation == "input":
            raise InvalidRequest("input needs a JSON body {content, kind?}")
        return request_type()  # type: ignore[call-arg]
    try:
        return decode_bounded(lambda data: msgspec.json.decode(data, type=request_type), body)
    except TooDeep:
        raise InvalidRequest(
            f"invalid {operation} request: JSON nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid {operation} request: {exc}") from None
    except msgspec.DecodeError:
        raise InvalidRequest(f"invalid {operation} request: the body is not valid JSON") from None


class OperationRouter:
    """Maps each runtime id to the handler its running source registered."""

    def __init__(self) -> None:
        self._handlers: dict[str, RuntimeOperations] = {}

    @contextmanager
    def register(self, runtime_id: str, handler: RuntimeOperations) -> Iterator[None]:
        self._handlers[runtime_id] = handler
        try:
            yield
        finally:
            if self._handlers.get(runtime_id) is handler:
                del self._handlers[runtime_id]

    async def dispatch(
        self,
        snapshot: Snapshot,
        runtime_id: str,
        worker_id: str,
        operation: Operation,
        request: OperationRequest,
        visible: bool = True,
    ) -> OperationResult:
        """Route one operation; a refusal is a result, anything else a typed error.

        The checks run in this order: the runtime and the worker exist and are visible; the
        runtime is not stopped (``runtime_stopped``) and offers the operation
        (``operation_unsupported``); the worker can take it now (``worker_not_running``);
        the runtime's source is running and the runtime is reachable (else the error
        ``runtime_unavailable``). Only then is the runtime asked.
        """
        entry = snapshot.runtime(runtime_id)
        worker: WorkerRecord = snapshot.worker(runtime_id, worker_id)
        if not visible:
            raise WorkerNotVisible(runtime_id, worker_id)
        try:
            if entry.record.registry_status == "stopped":
                raise runtime_stopped(runtime_id)
            if not getattr(entry.record.capabilities, _RUNTIME_CAPABILITY[operation]):
                raise unsupported(runtime_id, operation)
            if not getattr(worker.capabilities, _WORKER_CAPABILITY[operation]):
                raise worker_not_running(runtime_id, worker_id, operation)
            handler = self._handlers.get(runtime_id)
            if handler is None or entry.record.registry_status in (
                "unavailable",
                "stale",
                "unknown",
            ):
                raise RuntimeUnavailable(runtime_id)
            if isinstance(request, InputRequest):
                ack = await handler.input(worker_id, request)
            elif isinstance(request, CancelRequest):
                ack = await handler.cancel(worker_id, request)
            else:
                ack = await handler.stop(worker_id, request)
        except OperationRefused as refusal:
            return refused_result(runtime_id, worker_id, operation, refusal)
        return accepted_result(ack)
