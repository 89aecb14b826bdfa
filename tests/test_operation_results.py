"""The yoi web console's flow on every source kind, over loopback (issue 12's acceptance).

One daemon serves the three kinds of runtime at once: the local compatibility source (which
offers no operations), an embedded in-memory runtime and a remote fake runtime. Every answer
is decoded into yoi's own types (contract-v2 sections 1.7.2 and 1.8.1,
``tests/web_client_types.py``): the console sends ``{kind: "user", content}`` (or no
``kind``) and treats any ``state`` other than ``accepted`` as a failure to show.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import trio

from tests.conftest import (
    RunningDaemon,
    StartDaemon,
    copy_fixtures,
    local_source_toml,
    wait_for,
)
from tests.embedded_plugins import INSTANCES, embedded_source_toml
from tests.fake_runtime import FakeRuntime, remote_source_toml, start_fake
from tests.test_remote_operations import SLOW_POLL
from tests.test_remote_source import TOKEN, token_file
from tests.yoi_operation_types import error_code, input_result, lifecycle_result, refusal_code
from yoi_registryd.ids import local_worker_id

EMBEDDED, REMOTE, LOCAL = "emb", "far", "local-worker-runtime"


async def console_daemon(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path, *, with_local: bool
) -> tuple[RunningDaemon, FakeRuntime, str]:
    """A daemon with an embedded memory runtime (worker ``e-1``), an older remote fake
    (worker ``w-1``) and, ``with_local``, the fixtures' local runtime, once all are listed.
    Returns the daemon, the fake and the embedded runtime's key in ``INSTANCES``."""
    key = uuid.uuid4().hex
    far = FakeRuntime("far-upstream", token=TOKEN)  # an older runtime: user and system only
    far.add("w-1")
    server = await start_fake(nursery, ("/far", far))
    local = (
        local_source_toml(copy_fixtures(tmp_path / "data"), tmp_path / "run") if with_local else ""
    )
    d = await start_daemon(
        local
        + embedded_source_toml(
            runtime_id=EMBEDDED,
            factory="tests.embedded_plugins:tracked_memory",
            options={"key": key},
        )
        + remote_source_toml(
            REMOTE, server.url("/far"), token_file=token_file(tmp_path), **SLOW_POLL
        )
    )
    await wait_for(lambda: key in INSTANCES)
    INSTANCES[key].spawn("e-1")
    expected = {(EMBEDDED, "e-1"), (REMOTE, "w-1")}
    if with_local:
        expected.add((LOCAL, local_worker_id("coder")))

    async def all_listed() -> bool:
        body = await d.get_json("/api/workers")
        return {(w["runtime_id"], w["worker_id"]) for w in body["items"]} >= expected

    await wait_for(all_listed, deadline_s=5, message="a worker of every runtime")
    return d, far, key


async def test_the_console_flow_on_local_embedded_and_remote_runtimes(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    d, far, key = await console_daemon(start_daemon, nursery, tmp_path, with_local=True)

    def path(runtime_id: str, worker_id: str, operation: str) -> str:
        return f"/api/runtimes/{runtime_id}/workers/{worker_id}/{operation}"

    # Input to a running worker: accepted, with the runtime's integers.
    for runtime_id, worker_id in ((EMBEDDED, "e-1"), (REMOTE, "w-1")):
        for body in ({"kind": "user", "content": "hello"}, {"content": "again"}):
            response = await d.client.post(path(runtime_id, worker_id, "input"), json=body)
            result, _ = input_result(response)
            assert (result.state, result.runtime_id, result.worker_id) == (
                "accepted",
                runtime_id,
                worker_id,
            )
            assert result.diagnostics == []
            assert isinstance(result.event_id, int) and isinstance(result.transcript_sequence, int)
    assert [e.kind for e in INSTANCES[key].transcript("e-1")] == ["user", "user"]
    assert [t["kind"] for t in far.workers["w-1"].transcript] == ["user", "user"]

    # Stop it; input to the stopped worker is rejected with a typed reason.
    for runtime_id, worker_id in ((EMBEDDED, "e-1"), (REMOTE, "w-1")):
        stop, _ = lifecycle_result(
            await d.client.post(path(runtime_id, worker_id, "stop"), json={})
        )
        assert stop.state == "accepted"

        async def stopped(rid: str = runtime_id, wid: str = worker_id) -> bool:
            worker = await d.get_json(f"/api/runtimes/{rid}/workers/{wid}")
            return bool(worker["state"] == "stopped")

        await wait_for(stopped, deadline_s=5, message=f"{runtime_id} stopped")
        response = await d.client.post(path(runtime_id, worker_id, "input"), json={"content": "?"})
        result, _ = input_result(response)
        assert (result.state, refusal_code(result)) == ("rejected", "worker_not_running")

    # A runtime without input (nor stop, nor cancel): unsupported.
    coder = local_worker_id("coder")
    for operation, body in (("input", {"content": "hi"}), ("stop", {}), ("cancel", {})):
        response = await d.client.post(path(LOCAL, coder, operation), json=body)
        decoded = (input_result if operation == "input" else lifecycle_result)(response)[0]
        assert (decoded.state, refusal_code(decoded)) == ("unsupported", "operation_unsupported")

    # What is not about the operation is an error, in yoi's error shape with our code.
    assert error_code(await d.client.post(path(REMOTE, "w-9", "stop")), 404) == "unknown_worker"
    assert error_code(await d.client.post(path("nope", "w-1", "stop")), 404) == "unknown_runtime"
    assert error_code(await d.client.post(path(REMOTE, "a.b", "stop")), 400) == (
        "invalid_identifier"
    )
    response = await d.client.post(path(EMBEDDED, "e-1", "input"), json={"content": ""})
    assert error_code(response, 400) == "invalid_request"


async def test_todays_console_bodies_are_taken_and_the_kind_is_the_runtimes_call(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Today's console sends fields the registry has no use for (``ticket_assignment`` with
    stop, ``segments`` with input) and the newer input kinds: yoi's backend ignores unknown
    fields and passes the kind on, and so does the registry (contract-v2 section 1.7.1)."""
    d, far, key = await console_daemon(start_daemon, nursery, tmp_path, with_local=False)
    segments = {"segments": [{"kind": "text", "text": "hi"}], "future_field": True}
    for runtime_id, worker_id in ((EMBEDDED, "e-1"), (REMOTE, "w-1")):
        url = f"/api/runtimes/{runtime_id}/workers/{worker_id}/input"
        result, _ = input_result(await d.client.post(url, json={"content": "hi", **segments}))
        assert result.state == "accepted", result

    # The embedded memory runtime takes a notification; the older remote refuses the kind
    # itself, which is the runtime's refusal (200 rejected), not an error blamed on the caller.
    notify = {"kind": "notify", "content": "build finished"}
    url = f"/api/runtimes/{EMBEDDED}/workers/e-1/input"
    assert input_result(await d.client.post(url, json=notify))[0].state == "accepted"
    assert [e.kind for e in INSTANCES[key].transcript("e-1")][-1] == "notify"
    url = f"/api/runtimes/{REMOTE}/workers/w-1/input"
    refused, _ = input_result(await d.client.post(url, json=notify))
    assert refused.state == "rejected"
    assert [t["kind"] for t in far.workers["w-1"].transcript] == ["user"]

    # A kind of no yoi era is still the caller's mistake.
    bad = await d.client.post(url, json={"kind": "shout", "content": "x"})
    assert error_code(bad, 400) == "invalid_request"

    ticket = {"reason": "done", "ticket_assignment": {"ticket_id": "T-1", "operation_id": "o"}}
    for runtime_id, worker_id in ((EMBEDDED, "e-1"), (REMOTE, "w-1")):
        url = f"/api/runtimes/{runtime_id}/workers/{worker_id}/stop"
        stop, _ = lifecycle_result(await d.client.post(url, json=ticket))
        assert stop.state == "accepted", stop
