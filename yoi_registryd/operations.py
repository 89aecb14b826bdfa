"""Worker operations routed through the registry to the runtime that owns the worker.

The registry does not run workers: ``stop``, ``cancel`` and ``input`` go to exactly one
runtime, chosen by ``runtime_id + worker_id``. A source whose runtime supports operations
registers a handler for its runtime while it runs (``Reporter.operations``); the router
checks the id, the snapshot and the capabilities before calling it, so every refusal is a
typed error decided in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal, Protocol

import msgspec

from yoi_registryd.errors import (
    InvalidRequest,
    OperationUnsupported,
    RuntimeUnavailable,
    WorkerNotVisible,
)
from yoi_registryd.model import WorkerRecord
from yoi_registryd.registry import Snapshot

Operation = Literal["stop", "cancel", "input"]

MAX_BODY_BYTES = 1024 * 1024


class StopRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    reason: str | None = None


class CancelRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    reason: str | None = None


class InputRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    kind: Literal["user", "system"]
    content: Annotated[str, msgspec.Meta(min_length=1)]
    """Non-empty: runtimes refuse empty input, so the registry refuses it first (400)."""


OperationRequest = StopRequest | CancelRequest | InputRequest

_REQUEST_TYPES: dict[Operation, type[OperationRequest]] = {
    "stop": StopRequest,
    "cancel": CancelRequest,
    "input": InputRequest,
}


class OperationAck(msgspec.Struct, frozen=True):
    """What the registry answers after the runtime accepted an operation."""

    runtime_id: str
    worker_id: str
    operation: Operation
    status: str
    """The worker's status after the operation, as the runtime reports it."""
    event_id: str | None = None
    transcript_sequence: int | None = None


class RuntimeOperations(Protocol):
    """Implemented by sources whose runtime can act on workers.

    Handlers raise typed registry errors (``UnknownWorker``, ``RuntimeUnavailable``, ...)
    for refusals; anything else is an internal error.
    """

    async def stop(self, worker_id: str, request: StopRequest) -> OperationAck: ...

    async def cancel(self, worker_id: str, request: CancelRequest) -> OperationAck: ...

    async def input(self, worker_id: str, request: InputRequest) -> OperationAck: ...


_CAPABILITY: dict[Operation, str] = {
    "stop": "can_stop",
    "cancel": "can_cancel",
    "input": "can_accept_input",
}


def decode_request(operation: Operation, body: bytes) -> OperationRequest:
    """Validate an operation body: unknown fields and wrong types are ``invalid_request``."""
    request_type = _REQUEST_TYPES[operation]
    if not body.strip():
        if operation == "input":
            raise InvalidRequest("input needs a JSON body {kind, content}")
        return request_type()  # type: ignore[call-arg]
    try:
        return msgspec.json.decode(body, type=request_type)
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
    ) -> OperationAck:
        entry = snapshot.runtime(runtime_id)
        worker: WorkerRecord = snapshot.worker(runtime_id, worker_id)
        if not visible:
            raise WorkerNotVisible(runtime_id, worker_id)
        if not getattr(worker.capabilities, _CAPABILITY[operation]):
            raise OperationUnsupported(runtime_id, operation)
        handler = self._handlers.get(runtime_id)
        if handler is None or entry.record.status in ("unavailable", "stale", "unknown"):
            raise RuntimeUnavailable(runtime_id)
        if isinstance(request, InputRequest):
            return await handler.input(worker_id, request)
        if isinstance(request, CancelRequest):
            return await handler.cancel(worker_id, request)
        return await handler.stop(worker_id, request)
