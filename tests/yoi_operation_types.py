"""Reading operation answers and errors with the yoi web client's types.

The types are in ``tests/web_client_types.py`` (contract-v2 sections 1.7.2 and 1.8.1),
written from the spec rather than imported from the daemon, so that a drift of the daemon's
own types fails here. Fields only the registry has (``operation``, ``worker_status``,
``code``, details) are allowed: clients ignore them.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import httpx
import msgspec

from tests.web_client_types import ErrorBody, WorkerInputResult, WorkerLifecycleResult


def input_result(response: httpx.Response) -> tuple[WorkerInputResult, dict[str, Any]]:
    """A 200 input answer, decoded strictly; also the raw body for our own fields."""
    assert response.status_code == 200, response.text
    return msgspec.json.decode(response.content, type=WorkerInputResult), response.json()


def lifecycle_result(response: httpx.Response) -> tuple[WorkerLifecycleResult, dict[str, Any]]:
    assert response.status_code == 200, response.text
    return msgspec.json.decode(response.content, type=WorkerLifecycleResult), response.json()


def refusal_code(result: WorkerInputResult | WorkerLifecycleResult) -> str:
    """The typed reason of a refused operation: its one warning diagnostic."""
    assert result.state != "accepted", result
    assert len(result.diagnostics) == 1, result
    assert result.diagnostics[0].severity == "warning", result
    return result.diagnostics[0].code


def error_code(response: httpx.Response, status: int) -> str:
    """A typed error in yoi's shape; returns our typed code."""
    assert response.status_code == status, response.text
    body = msgspec.json.decode(response.content, type=ErrorBody)
    assert body.error == HTTPStatus(status).phrase, body
    code = response.json()["code"]
    assert [d.code for d in body.diagnostics] == [code], body
    return str(code)
