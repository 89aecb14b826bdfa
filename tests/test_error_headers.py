"""One rule for the headers of an error answer, whichever layer refuses (``errors.render_error``).

Over real HTTP: refusals by authentication, by the operator check of ``/metrics``, by the path
guard and by the app all carry ``X-Registry-Index`` and ``X-Request-Id``, plus the headers of
their kind (``WWW-Authenticate``, ``Allow``) and nothing of another kind. The connection
cap's answer, sent before any request is read, is checked by its bytes.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from tests.conftest import StartDaemon
from tests.test_auth import bearer, digest
from yoi_registryd.errors import (
    RequestHeadTooLarge,
    TooManyConnections,
    TooManyWatches,
    Unauthenticated,
    render_error,
)

KIND_HEADERS = ("www-authenticate", "allow", "retry-after")


def assert_rule(response: httpx.Response, status: int, code: str, *kind: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["x-registry-index"].isdigit(), code
    assert response.headers["x-request-id"], code
    present = {name for name in KIND_HEADERS if name in response.headers}
    assert present == set(kind), (code, present)


async def test_every_layer_refuses_with_the_same_headers(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(16)
    d = await start_daemon(
        f"""
sources = []
[[clients]]
name = "alpha"
token_sha256 = "{digest(token)}"
workspaces = ["alpha"]
[audit]
path = "{tmp_path / "audit.jsonl"}"
"""
    )
    alpha = bearer(token)
    # Authentication (security middleware), before the app.
    assert_rule(await d.client.get("/api/runtimes"), 401, "unauthenticated", "www-authenticate")
    # The operator check of /metrics (security middleware), before the app.
    assert_rule(await d.client.get("/metrics", headers=alpha), 403, "forbidden")
    # The path guard, after admission, before routing.
    assert_rule(await d.client.get("/api/runtimes/a%2Fb", headers=alpha), 400, "invalid_identifier")
    # The app: a typed error, and werkzeug's own refusals.
    assert_rule(await d.client.get("/api/runtimes/nope", headers=alpha), 404, "unknown_runtime")
    assert_rule(await d.client.get("/api/nothing", headers=alpha), 404, "not_found")
    assert_rule(
        await d.client.delete("/api/runtimes", headers=alpha), 405, "method_not_allowed", "allow"
    )


def test_only_a_refused_connection_goes_without_the_revision() -> None:
    """``revision`` None is the connection cap's alone (``http/server.py``)."""
    refused = dict(render_error(TooManyConnections(), None).headers)
    assert b"x-registry-index" not in refused
    assert refused[b"retry-after"] == b"1"
    for error in (RequestHeadTooLarge(), TooManyWatches(), Unauthenticated("no token")):
        status, headers, body = render_error(error, 7)
        names = [name for name, _ in headers]
        assert names[:3] == [b"content-type", b"content-length", b"x-registry-index"]
        assert dict(headers)[b"x-registry-index"] == b"7"
        assert dict(headers)[b"content-length"] == b"%d" % len(body)
        assert status == error.status
