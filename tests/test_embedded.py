"""The embedded runtime source over real HTTP: projection, live events, every operation."""

from __future__ import annotations

import uuid
from hashlib import sha256
from typing import Any

import httpx
import msgspec
import pytest
import trio

from tests.conftest import RunningDaemon, StartDaemon, wait_for
from tests.embedded_plugins import INSTANCES, ThirdPartyRuntime, embedded_source_toml
from tests.yoi_operation_types import input_result, lifecycle_result, refusal_code
from yoi_registryd.ids import derive_id
from yoi_registryd.runtimes import Intent, MemoryRuntime, Profile

RID = "emb-test"
HOST = derive_id("embedded-", RID)
WORKER = f"/api/runtimes/{RID}/workers"


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex


async def start_memory(
    start_daemon: StartDaemon, key: str, *extra: str, **options: Any
) -> tuple[RunningDaemon, MemoryRuntime]:
    """A daemon with the built-in memory runtime (tracked, so the test can reach it)."""
    toml = embedded_source_toml(
        runtime_id=RID,
        factory="tests.embedded_plugins:tracked_memory",
        options={"key": key, **options},
        stale_after="10m",  # heartbeats every 150 s: anything sooner came by subscription
    )
    d = await start_daemon(toml + "".join(extra))
    await wait_for(lambda: key in INSTANCES, message="the factory to run")
    runtime: MemoryRuntime = INSTANCES[key]

    async def observed() -> bool:
        body = await d.get_json(f"/api/runtimes/{RID}")
        return bool(body["registry_status"] == "available")

    await wait_for(observed, message="the first snapshot")
    return d, runtime


async def start_with_worker(
    start_daemon: StartDaemon, key: str, **options: Any
) -> tuple[RunningDaemon, MemoryRuntime]:
    """:func:`start_memory` with one running worker ``w``, already listed by the registry."""
    d, runtime = await start_memory(start_daemon, key, **options)
    runtime.spawn("w")
    await wait_listed(d, "w")
    return d, runtime


async def worker_state(d: RunningDaemon, worker_id: str) -> str | None:
    response = await d.client.get(f"{WORKER}/{worker_id}")
    if response.status_code == 404:
        return None
    return str(response.json()["state"])


async def wait_state(
    d: RunningDaemon, worker_id: str, state: str | None, message: str = "the worker's state"
) -> None:
    """Wait (2 s at most) until the registry shows ``worker_id`` in ``state`` (None: gone)."""

    async def shown() -> bool:
        return await worker_state(d, worker_id) == state

    await wait_for(shown, deadline_s=2, message=message)


async def wait_listed(
    d: RunningDaemon, worker_id: str, deadline_s: float = 5.0, message: str = ""
) -> None:
    """Wait until the registry lists ``worker_id`` in any state."""

    async def listed() -> bool:
        return await worker_state(d, worker_id) is not None

    await wait_for(listed, deadline_s, message=message or f"worker {worker_id!r}")


async def post_response(
    d: RunningDaemon, worker_id: str, op: str, body: object = None
) -> httpx.Response:
    content = b"" if body is None else msgspec.json.encode(body)
    return await d.client.post(f"{WORKER}/{worker_id}/{op}", content=content)


async def post(d: RunningDaemon, worker_id: str, op: str, body: object = None) -> Any:
    response = await post_response(d, worker_id, op, body)
    return response.status_code, response.json()


async def test_runtime_host_and_worker_projection(start_daemon: StartDaemon, key: str) -> None:
    d, runtime = await start_memory(start_daemon, key, display_name="Team runtime")
    runtime.spawn(
        "coder-1",
        display_name="coder",
        intent=Intent("role", "coder"),
        profile=Profile("named", "rust"),
    )
    await wait_listed(d, "coder-1", message="the worker")

    record = await d.get_json(f"/api/runtimes/{RID}")
    assert record["kind"] == "embedded_worker_runtime"
    assert record["label"] == "Team runtime"
    assert record["source"]["kind"] == "embedded_worker_runtime"
    assert record["host_ids"] == [HOST]
    caps = record["capabilities"]
    assert caps["can_stop_worker"] and caps["can_cancel_worker"] and caps["can_accept_input"]
    assert not caps["can_spawn_worker"]
    assert caps["workspace_scope"] == "backend_internal"  # yoi's, for an embedded runtime
    assert caps["registry_workspace_scope"] == "all_workspaces"
    assert record["status"] == "running"  # yoi's word for an observed runtime process

    hosts = await d.get_json("/api/hosts")
    assert [(h["host_id"], h["kind"]) for h in hosts["items"]] == [
        (HOST, "embedded-worker-runtime-host")
    ]
    worker = await d.get_json(f"{WORKER}/coder-1")
    assert worker["host_id"] == HOST
    assert (worker["label"], worker["role"], worker["profile"]) == ("coder", "coder", "rust")
    assert (worker["state"], worker["status"]) == ("running", "running")
    assert worker["implementation"]["kind"] == "embedded_worker_runtime"
    assert worker["workspace"] == {
        "visibility": "backend_internal",
        "identity": "runtime_registry_worker",
        "workspace_id": "",
        "registry_visibility": "runtime",
    }
    # yoi's display fields: the worker's own name; embedded workers are tagged internal.
    assert worker["display_name"] == "coder"
    assert worker["tags"] == ["internal", "profile:rust"]
    assert worker["capabilities"]["can_stop"] and worker["capabilities"]["can_cancel"]
    assert worker["capabilities"]["can_accept_input"]
    listed = await d.get_json(f"/api/hosts/{HOST}/workers")
    assert [w["worker_id"] for w in listed["items"]] == ["coder-1"]


async def test_runtime_events_reach_the_api_without_polling(
    start_daemon: StartDaemon, key: str
) -> None:
    d, runtime = await start_memory(start_daemon, key)
    # stale_after is 10 minutes, so the source's only timer fires every 150 s: each change
    # below is visible within the 2 s deadline only because the subscription carried it.
    runtime.spawn("w1", display_name="first")
    await wait_listed(d, "w1", deadline_s=2, message="spawn")
    runtime.rename("w1", "renamed")

    async def renamed() -> bool:
        return bool((await d.get_json(f"{WORKER}/w1"))["label"] == "renamed")

    await wait_for(renamed, deadline_s=2, message="rename")
    await runtime.cancel("w1")
    await wait_state(d, "w1", "cancelled", message="cancel")
    runtime.remove("w1")
    await wait_state(d, "w1", None, message="removal")
    runtime_record = await d.get_json(f"/api/runtimes/{RID}")
    assert runtime_record["worker_count"] == 0
    assert runtime_record["supervisor"]["restarts"] == 0


async def test_stop_over_http_is_idempotent_and_the_first_terminal_state_wins(
    start_daemon: StartDaemon, key: str
) -> None:
    d, runtime = await start_with_worker(start_daemon, key)

    status, ack = await post(d, "w", "stop", {"reason": "done"})
    assert status == 200, ack
    assert ack == {
        "state": "accepted",
        "runtime_id": RID,
        "worker_id": "w",
        "event_id": runtime.worker("w").last_event_id,
        "diagnostics": [],
        "operation": "stop",
        "worker_status": "stopped",
    }
    await wait_state(d, "w", "stopped", message="the stop to reach the registry")
    worker = await d.get_json(f"{WORKER}/w")
    assert not worker["capabilities"]["can_accept_input"]
    assert worker["capabilities"]["can_stop"] and worker["capabilities"]["can_cancel"]

    status, again = await post(d, "w", "stop")
    assert status == 200 and again == ack  # same status, same event: a safe retry
    status, cancel = await post(d, "w", "cancel", {"reason": "too late"})
    assert status == 200 and cancel["state"] == "accepted"
    assert cancel["worker_status"] == "stopped"  # the first terminal state won
    assert cancel["event_id"] == ack["event_id"]
    assert runtime.worker("w").status == "stopped"
    assert await worker_state(d, "w") == "stopped"


async def test_cancel_over_http_then_stop_keeps_cancelled(
    start_daemon: StartDaemon, key: str
) -> None:
    d, runtime = await start_with_worker(start_daemon, key)
    status, body = await post(d, "w", "cancel")
    assert status == 200 and body["worker_status"] == "cancelled"
    await wait_state(d, "w", "cancelled")
    status, again = await post(d, "w", "cancel")
    assert status == 200 and again == body
    status, stop = await post(d, "w", "stop")
    assert status == 200 and stop["worker_status"] == "cancelled"
    summary = runtime.summary()
    assert (summary.cancelled_worker_count, summary.stopped_worker_count) == (1, 0)


async def test_input_over_http_appends_to_the_transcript(
    start_daemon: StartDaemon, key: str
) -> None:
    d, runtime = await start_with_worker(start_daemon, key)
    acks = []
    # Without ``kind`` an input is the user's, as in yoi.
    for body in ({"content": "please rebase"}, {"kind": "system", "content": "budget: 10 min"}):
        result, raw = input_result(await post_response(d, "w", "input", body))
        assert (result.state, result.runtime_id, result.worker_id) == ("accepted", RID, "w")
        assert result.diagnostics == [] and raw["worker_status"] == "running"
        acks.append(result)
    assert [a.transcript_sequence for a in acks] == [0, 1]
    assert acks[0].event_id is not None and acks[1].event_id is not None
    assert acks[1].event_id > acks[0].event_id
    assert [(e.kind, e.content) for e in runtime.transcript("w")] == [
        ("user", "please rebase"),
        ("system", "budget: 10 min"),
    ]
    # The transcript stays in the runtime: the registry serves the worker, not its content.
    served = (await d.client.get(f"{WORKER}/w")).text
    assert "rebase" not in served and "budget" not in served

    # Blank input passes the registry's schema; the runtime refuses it, as in yoi: a 200
    # ``rejected`` with the runtime's reason.
    result, _ = input_result(await post_response(d, "w", "input", {"content": "  "}))
    assert (result.state, refusal_code(result)) == ("rejected", "invalid_request")
    status, bad = await post(d, "w", "input", {"kind": "user"})
    assert status == 400 and bad["code"] == "invalid_request"
    assert runtime.worker("w").transcript_len == 2


async def test_input_to_a_stopped_worker_is_rejected_worker_not_running(
    start_daemon: StartDaemon, key: str
) -> None:
    """The web console's flow: accepted while running, then rejected with a typed reason."""
    d, runtime = await start_with_worker(start_daemon, key)
    result, _ = input_result(await post_response(d, "w", "input", {"content": "hello"}))
    assert result.state == "accepted"
    status, _ = await post(d, "w", "stop")
    assert status == 200
    await wait_state(d, "w", "stopped")
    result, _ = input_result(await post_response(d, "w", "input", {"content": "hello?"}))
    assert (result.state, result.runtime_id, result.worker_id) == ("rejected", RID, "w")
    assert refusal_code(result) == "worker_not_running"
    assert result.event_id is None and result.transcript_sequence is None
    assert runtime.worker("w").transcript_len == 1


async def test_unknown_worker_is_404_for_every_operation(
    start_daemon: StartDaemon, key: str
) -> None:
    d, _ = await start_memory(start_daemon, key)
    await d.get_json(f"{WORKER}/nobody", status=404)
    for op, body in (("stop", None), ("cancel", None), ("input", {"kind": "user", "content": "x"})):
        status, error = await post(d, "nobody", op, body)
        assert status == 404, (op, error)
        assert error["code"] == "unknown_worker"


async def test_a_stopped_runtime_is_shown_stopped(start_daemon: StartDaemon, key: str) -> None:
    d, runtime = await start_with_worker(start_daemon, key)
    runtime.stop_runtime()

    async def runtime_stopped() -> bool:
        return bool((await d.get_json(f"/api/runtimes/{RID}"))["registry_status"] == "stopped")

    await wait_for(runtime_stopped, deadline_s=2)
    assert await worker_state(d, "w") == "stopped"


async def test_third_party_runtime_gets_only_the_capabilities_it_implements(
    start_daemon: StartDaemon, key: str
) -> None:
    """Loaded by ``module:attribute``; implements stop and input but not cancel."""
    d = await start_daemon(
        embedded_source_toml(
            runtime_id=RID,
            factory="tests.embedded_plugins:ThirdPartyRuntime",
            options={"key": key, "workers": ["alpha", "beta"]},
        )
    )
    await wait_listed(d, "alpha", message="the third-party runtime")
    runtime: ThirdPartyRuntime = INSTANCES[key]
    record = await d.get_json(f"/api/runtimes/{RID}")
    assert record["label"] == "Third-party runtime"
    caps = record["capabilities"]
    assert (caps["can_stop_worker"], caps["can_accept_input"]) == (True, True)
    assert caps["can_cancel_worker"] is False
    worker = await d.get_json(f"{WORKER}/alpha")
    assert worker["label"] == "Alpha"
    assert worker["capabilities"]["can_cancel"] is False

    cancel, raw = lifecycle_result(await post_response(d, "alpha", "cancel"))
    assert (cancel.state, refusal_code(cancel)) == ("unsupported", "operation_unsupported")
    assert raw["operation"] == "cancel"
    assert runtime.workers()[0].status == "running"

    # The registry's view lags (events held back): the worker ended in the runtime, the
    # registry still says running, so the runtime's own refusal is what the client gets.
    runtime.hold = True
    await runtime.stop("alpha")
    assert await worker_state(d, "alpha") == "running"
    result, _ = input_result(await post_response(d, "alpha", "input", {"content": "hi"}))
    assert (result.state, refusal_code(result)) == ("rejected", "worker_not_running")
    runtime.release()
    await wait_state(d, "alpha", "stopped")
    result, _ = input_result(await post_response(d, "beta", "input", {"content": "hi"}))
    assert (result.state, result.transcript_sequence) == ("accepted", 0)
    runtime.delete("beta")
    await wait_state(d, "beta", None)


async def test_workers_whose_ids_are_not_registry_ids_are_skipped_with_a_diagnostic(
    start_daemon: StartDaemon, key: str
) -> None:
    bad = "team/worker one"
    d = await start_daemon(
        embedded_source_toml(
            runtime_id=RID,
            factory="tests.embedded_plugins:ThirdPartyRuntime",
            options={"key": key, "workers": ["good", bad]},
        )
    )
    await wait_listed(d, "good")
    runtime: ThirdPartyRuntime = INSTANCES[key]
    record = await d.get_json(f"/api/runtimes/{RID}")
    assert record["registry_status"] == "degraded"
    assert [x["code"] for x in record["diagnostics"]] == ["embedded_worker_id_invalid"]
    listed = await d.client.get(WORKER)
    assert [w["worker_id"] for w in listed.json()["items"]] == ["good"]
    assert (
        "team" not in listed.text
        and "team" not in (await d.client.get(f"/api/runtimes/{RID}")).text
    )

    runtime.delete(bad)

    async def healthy() -> bool:
        body: dict[str, Any] = await d.get_json(f"/api/runtimes/{RID}")
        status: str = body["registry_status"]
        return status == "available" and body["diagnostics"] == []

    await wait_for(healthy, deadline_s=2, message="the diagnostic to clear")
    runtime.add("also bad!")
    runtime.add("fine-2")
    await wait_listed(d, "fine-2", deadline_s=2)
    assert (await d.get_json(f"/api/runtimes/{RID}"))["registry_status"] == "degraded"


async def test_a_runtime_bound_to_one_workspace(start_daemon: StartDaemon, key: str) -> None:
    d = await start_daemon(
        embedded_source_toml(
            runtime_id=RID,
            factory="tests.embedded_plugins:tracked_memory",
            options={"key": key},
            workspaces=["ws-demo"],
        )
    )
    await wait_for(lambda: key in INSTANCES)
    INSTANCES[key].spawn("w")
    await wait_listed(d, "w")
    worker = await d.get_json(f"{WORKER}/w")
    assert worker["workspace"] == {
        "visibility": "backend_internal",
        "identity": "runtime_registry_worker",
        "workspace_id": "ws-demo",
        "registry_visibility": "workspace",
    }
    record = await d.get_json(f"/api/runtimes/{RID}")
    assert record["capabilities"]["registry_workspace_scope"] == "current_workspace"


async def test_the_host_id_of_a_runtime_bound_to_one_workspace_is_yois(
    start_daemon: StartDaemon, key: str
) -> None:
    """yoi derives its embedded host's id from the workspace id (contract-v2 section 1.9,
    whose example this is); the worker ids stay the runtime's own."""
    workspace = "0192f0e8-4d84-7d6e-a000-000000000001"
    expected = "embedded-0192f0e8-4d84-7d6e-a000-000000000001-4c88672e399ef6a5"
    assert expected == "embedded-" + workspace + "-" + sha256(workspace.encode()).hexdigest()[:16]
    d = await start_daemon(
        embedded_source_toml(
            runtime_id=RID,
            factory="tests.embedded_plugins:tracked_memory",
            options={"key": key},
            workspaces=[workspace],
        )
    )
    await wait_for(lambda: key in INSTANCES)
    INSTANCES[key].spawn("w")
    await wait_listed(d, "w")
    assert (await d.get_json(f"{WORKER}/w"))["host_id"] == expected
    assert (await d.get_json(f"/api/runtimes/{RID}"))["host_ids"] == [expected]
    hosts = await d.get_json("/api/hosts", headers={"X-Yoi-Workspace": workspace})
    assert [h["host_id"] for h in hosts["items"]] == [expected]
    listed = await d.get_json(f"/api/hosts/{expected}/workers")
    assert [w["worker_id"] for w in listed["items"]] == ["w"]


async def test_options_never_reach_a_response(start_daemon: StartDaemon, key: str) -> None:
    canary = "canary-" + uuid.uuid4().hex
    d, _ = await start_with_worker(start_daemon, key, secret=canary)
    await post(d, "w", "input", {"kind": "user", "content": "x"})
    await post(d, "nobody", "stop")
    for path in (
        "/api/runtimes",
        f"/api/runtimes/{RID}",
        WORKER,
        f"{WORKER}/w",
        "/api/hosts",
        f"/api/hosts/{HOST}/workers",
        "/api/workers",
        f"{WORKER}/nobody",
    ):
        response = await d.client.get(path)
        assert canary not in response.text, path
        assert "tests.embedded_plugins" not in response.text, path


async def test_a_quiet_runtime_is_kept_fresh_by_heartbeats(
    start_daemon: StartDaemon, key: str
) -> None:
    """No events for several ``stale_after`` periods: the runtime never goes stale, and a
    change the runtime made without an event (its display name) is still picked up."""
    d = await start_daemon(
        embedded_source_toml(
            runtime_id=RID,
            factory="tests.embedded_plugins:ThirdPartyRuntime",
            options={"key": key},
            stale_after="300ms",
        )
    )
    await wait_listed(d, "alpha")
    first = await d.get_json(f"/api/runtimes/{RID}")
    statuses: set[str] = set()

    async def three_periods_later() -> bool:
        body = await d.get_json(f"/api/runtimes/{RID}")
        statuses.add(body["registry_status"])
        return trio.current_time() > started + 0.9 and body["last_seen_at"] > first["last_seen_at"]

    started = trio.current_time()
    await wait_for(three_periods_later, message="heartbeats across three stale_after periods")
    assert statuses == {"available"}
    runtime: ThirdPartyRuntime = INSTANCES[key]
    runtime.display_name = "Renamed quietly"

    async def relabelled() -> bool:
        return bool((await d.get_json(f"/api/runtimes/{RID}"))["label"] == "Renamed quietly")

    await wait_for(relabelled, deadline_s=2, message="the heartbeat to read the new name")
