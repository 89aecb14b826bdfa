"""The worker operations on quart: stop, cancel and input, and their workspace-scoped twins.

The handler checks what HTTP alone knows (ids, no query, the body's schema, visibility to
the acting workspace) and hands the rest to ``operations.OperationRouter``.
"""

from __future__ import annotations

from functools import partial
from typing import Final

from quart import Response, request
from quart_trio import QuartTrio

from yoi_registryd.http import reads, views
from yoi_registryd.http.handling import access, no_query, respond
from yoi_registryd.http.state import ApiState
from yoi_registryd.ids import validate_identifier
from yoi_registryd.operations import Operation, decode_request

OPERATIONS: Final[tuple[Operation, ...]] = ("stop", "cancel", "input")


def operation_template(operation: Operation) -> str:
    return f"{reads.WORKER}/{operation}"


def register(app: QuartTrio, state: ApiState) -> None:
    """Each operation (endpoint ``<operation>_worker``), then each one's scoped twin."""
    for operation in OPERATIONS:
        app.add_url_rule(
            operation_template(operation),
            f"{operation}_worker",
            partial(operate, state, operation),
            methods=["POST"],
        )
    for operation in OPERATIONS:
        app.add_url_rule(
            reads.scoped(operation_template(operation)),
            f"scoped_{operation}_worker",
            partial(operate, state, operation),
            methods=["POST"],
        )


async def operate(
    state: ApiState,
    operation: Operation,
    runtime_id: str,
    worker_id: str,
    workspace_id: str | None = None,
) -> Response:
    """One operation on one worker; ``workspace_id``: a scoped twin's (the middleware made
    it the acting workspace)."""
    validate_identifier(runtime_id, "runtime_id")
    validate_identifier(worker_id, "worker_id")
    no_query()
    body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    op_request = decode_request(operation, body)
    snapshot = state.actor.snapshot
    view = access().view
    views.visible_entry(snapshot, runtime_id, view)
    worker = snapshot.runtime(runtime_id).workers.get(worker_id)
    visible = worker is None or view.worker_visible(worker)
    result = await state.router.dispatch(
        snapshot, runtime_id, worker_id, operation, op_request, visible=visible
    )
    return respond(views.encode(result), state.actor.snapshot.revision)
