"""Worker operations routed through the registry to remote runtimes, over real HTTP.

Two fake runtimes hold workers with the same ids, so every test also checks that an
operation reaches exactly the runtime named by ``runtime_id`` and no other. Polls are slow
(30 s) unless a test needs otherwise: any change seen within a test's deadline came from
the operation path, not from the poll loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import RunningDaemon, StartDaemon, wait_for
from tests.fake_runtime import FakeRuntime, FakeServer, remote_source_toml, start_fake
from tests.test_remote_source import TOKEN, token_file, wait_status, workers
from tests.yoi_operation_types import error_code, input_result, lifecycle_result, refusal_code

SLOW_POLL = {"poll_interval": "30s", "stale_after": "60s", "expire_after": "120s"}


class Pair:
    def __init__(self, d: RunningDaemon, server: FakeServer, a: FakeRuntime, b: FakeRuntime):
        self.d, self.server, self.a, self.b = d, server, a, b

    async def post(self, runtime_id: str, worker_id: str, op: str, **kwargs: Any) -> httpx.Response:
        return await self.d.client.post(
            f"/api/runtimes/{runtime_id}/workers/{worker_id}/{op}", **kwargs
        )


async def start_pair(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path, **extra: object
) -> Pair:
    a = FakeRuntime("upstream-a", token=TOKEN)
    b = FakeRuntime("upstream-b", token=TOKEN)
    for fake in (a, b):
        fake.add("w-1", "w-2")
    server = await start_fake(nursery, ("/a", a), ("/b", b))
    options = {"timeout": "1s", "token_file": token_file(tmp_path), **SLOW_POLL, **extra}
    d = await start_daemon(
        remote_source_toml("remote-a", server.url("/a"), **options)
        + remote_source_toml("remote-b", server.url("/b"), **options)
    )
    await wait_status(d, "remote-a", "available")
    await wait_status(d, "remote-b", "available")
    return Pair(d, server, a, b)


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A typed error in yoi's error shape, with our code beside it."""
    assert error_code(response, status) == code, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_state(d: RunningDaemon, runtime_id: str, worker_id: str, state: str) -> None:
    async def reached() -> bool:
        shown: str | None = (await workers(d, runtime_id)).get(worker_id, {}).get("state")
        return shown == state

    await wait_for(reached, deadline_s=3, message=f"{runtime_id}/{worker_id} {state}")


async def test_stop_cancel_input_reach_only_the_named_runtime(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    p = await start_pair(start_daemon, nursery, tmp_path)
    polls = p.a.count("workers")

    r = await p.post("remote-a", "w-1", "stop", json={"reason": "done"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "state": "accepted",
        "runtime_id": "remote-a",
        "worker_id": "w-1",
        "event_id": 1,
        "diagnostics": [],
        "operation": "stop",
        "worker_status": "stopped",
    }
    lifecycle_result(r)
    assert p.a.operations == [("stop", "w-1", {"reason": "done"})]
    assert p.b.operations == []
    assert p.a.auth_headers[-1] == f"Bearer {TOKEN}"
    await wait_state(p.d, "remote-a", "w-1", "stopped")  # at once, not after the 30 s poll
    assert (await workers(p.d, "remote-b"))["w-1"]["state"] == "running"
    assert (await workers(p.d, "remote-a"))["w-1"]["capabilities"]["can_accept_input"] is False

    r = await p.post("remote-b", "w-2", "cancel", content=b"")
    assert r.status_code == 200 and r.json()["worker_status"] == "cancelled", r.text
    assert p.b.operations == [("cancel", "w-2", {})]
    await wait_state(p.d, "remote-b", "w-2", "cancelled")

    r = await p.post("remote-b", "w-1", "input", json={"content": "hello"})  # kind: user
    result, raw = input_result(r)
    assert (result.state, result.transcript_sequence) == ("accepted", 1)
    assert (raw["operation"], raw["worker_status"]) == ("input", "running")
    assert p.b.workers["w-1"].transcript == [{"kind": "user", "content": "hello"}]
    assert p.a.workers["w-1"].transcript == []

    # A retried stop is idempotent: the first terminal state wins.
    r = await p.post("remote-a", "w-1", "stop")
    assert r.status_code == 200 and r.json()["worker_status"] == "stopped", r.text
    assert p.a.count("workers") >= polls  # (the source may re-poll after operations)


async def test_bad_requests_are_rejected_before_any_runtime_sees_them(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    p = await start_pair(start_daemon, nursery, tmp_path)
    cases: list[tuple[str, str, str, dict[str, Any], int, str]] = [
        ("remote-a", "w-1", "stop", {"json": {"reason": 5}}, 400, "invalid_request"),
        ("remote-a", "w-1", "cancel", {"content": b"{not json"}, 400, "invalid_request"),
        ("remote-a", "w-1", "input", {"content": b""}, 400, "invalid_request"),
        ("remote-a", "w-1", "input", {"json": {"kind": "user"}}, 400, "invalid_request"),
        (
            "remote-a",
            "w-1",
            "input",
            {"json": {"kind": "admin", "content": "x"}},
            400,
            "invalid_request",
        ),
        (
            "remote-a",
            "w-1",
            "input",
            {"json": {"kind": "user", "content": 5}},
            400,
            "invalid_request",
        ),
        ("remote-a", "bad.id", "stop", {}, 400, "invalid_identifier"),
        ("remote-a", "w-9", "stop", {}, 404, "unknown_worker"),
        ("remote-z", "w-1", "stop", {}, 404, "unknown_runtime"),
    ]
    for rid, wid, op, kwargs, status, code in cases:
        error_of(await p.post(rid, wid, op, **kwargs), status, code)
    assert p.a.operations == [] and p.b.operations == []
    assert [r for r in p.a.requests if r[2] == "operation"] == []


async def test_remote_404_is_unknown_worker_and_drops_the_worker(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    p = await start_pair(start_daemon, nursery, tmp_path)
    del p.a.workers["w-2"]  # gone on the runtime; the registry still shows it
    body = error_of(await p.post("remote-a", "w-2", "stop"), 404, "unknown_worker")
    assert (body["runtime_id"], body["worker_id"]) == ("remote-a", "w-2")

    async def dropped() -> bool:
        return "w-2" not in await workers(p.d, "remote-a")

    await wait_for(dropped, deadline_s=3)
    assert "w-2" in await workers(p.d, "remote-b")


async def test_remote_timeout_is_504_and_polls_keep_working(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    p = await start_pair(start_daemon, nursery, tmp_path, timeout="300ms", poll_interval="50ms")
    p.a.fault, p.a.fault_routes = "hang", frozenset({"operation"})
    body = error_of(await p.post("remote-a", "w-1", "stop"), 504, "runtime_timeout")
    assert body["runtime_id"] == "remote-a"
    polls = p.a.count("workers")
    await wait_for(lambda: p.a.count("workers") > polls + 2)
    assert (await p.d.get_json("/api/runtimes/remote-a"))["registry_status"] == "available"


async def test_unreachable_runtime_is_503_with_retry_after(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    p = await start_pair(start_daemon, nursery, tmp_path)
    await p.server.stop()
    r = await p.post("remote-a", "w-1", "stop")
    error_of(r, 503, "runtime_unavailable")
    assert int(r.headers["retry-after"]) >= 1
    # The failed operation makes the source look again at once: the registry learns too.
    await wait_status(p.d, "remote-a", "unavailable", "remote_runtime_network_error")
    r = await p.post("remote-a", "w-1", "stop")
    error_of(r, 503, "runtime_unavailable")
    assert "retry-after" in r.headers


async def test_refused_credentials_are_502_runtime_auth_failed(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    p = await start_pair(start_daemon, nursery, tmp_path)
    p.a.token = "rotated-elsewhere"
    body = error_of(await p.post("remote-a", "w-1", "cancel"), 502, "runtime_auth_failed")
    assert p.a.error_message not in body["message"]
    assert p.a.operations == []


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("error500", 502, "runtime_bad_response"), ("garbage", 502, "runtime_bad_response")],
)
async def test_runtime_failures_are_typed_and_never_echo_remote_text(
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    tmp_path: Path,
    fault: str,
    status: int,
    code: str,
) -> None:
    p = await start_pair(start_daemon, nursery, tmp_path)
    p.a.error_message = "secret remote detail 7f3a"
    p.a.fault, p.a.fault_routes = fault, frozenset({"operation"})
    r = await p.post("remote-a", "w-1", "stop")
    error_of(r, status, code)
    assert "7f3a" not in r.text


async def test_a_stopped_runtime_rejects_operations_runtime_stopped(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    p = await start_pair(start_daemon, nursery, tmp_path)
    p.a.status = "stopped"  # the registry has not polled since
    result, _ = lifecycle_result(await p.post("remote-a", "w-1", "stop"))
    assert (result.state, refusal_code(result)) == ("rejected", "runtime_stopped")
    await wait_status(p.d, "remote-a", "stopped")  # learnt at once, not after 30 s
    # Now the registry refuses before asking the runtime, with the same answer.
    asked = len(p.a.operations)
    result, _ = lifecycle_result(await p.post("remote-a", "w-1", "stop"))
    assert (result.state, refusal_code(result)) == ("rejected", "runtime_stopped")
    assert len(p.a.operations) == asked
    r = await p.post("remote-b", "w-1", "stop")
    assert r.status_code == 200 and r.json()["state"] == "accepted", r.text


async def test_input_to_a_worker_that_ended_is_rejected(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    p = await start_pair(start_daemon, nursery, tmp_path)
    result, _ = input_result(await p.post("remote-a", "w-1", "input", json={"content": "hi"}))
    assert result.state == "accepted"
    p.a.workers["w-1"].status = "stopped"  # ended on the runtime; the registry still says running
    r = await p.post("remote-a", "w-1", "input", json={"kind": "user", "content": "hi"})
    result, _ = input_result(r)
    assert (result.state, refusal_code(result)) == ("rejected", "worker_not_running")
    await wait_state(p.d, "remote-a", "w-1", "stopped")
    # Now the registry knows: an ended worker takes no input, and the runtime is not asked.
    asked = len(p.a.operations)
    result, _ = input_result(await p.post("remote-a", "w-1", "input", json={"content": "hi"}))
    assert (result.state, refusal_code(result)) == ("rejected", "worker_not_running")
    assert len(p.a.operations) == asked
