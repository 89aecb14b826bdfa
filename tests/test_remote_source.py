"""The remote runtime source over real HTTP: the real daemon polls fake runtimes on loopback.

Covers the projection of remote workers, every runtime state transition (unknown ->
available -> unavailable -> stale -> expired -> available, stopped, degraded), each typed
failure diagnostic, backoff and recovery, and that only changes reach the registry.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import RunningDaemon, StartDaemon, wait_for
from tests.fake_runtime import FakeRuntime, FakeServer, FakeWorker, remote_source_toml, start_fake
from yoi_registryd.ids import REMOTE_HOST_PREFIX, derive_id

TOKEN = "test-token-5d1c"
FAST = {"poll_interval": "50ms", "timeout": "500ms", "stale_after": "5s", "expire_after": "10s"}


def token_file(tmp_path: Path, value: str = TOKEN) -> str:
    path = tmp_path / "remote.token"
    path.write_text(value + "\n")
    return str(path)


async def runtime(d: RunningDaemon, runtime_id: str) -> Any:
    return await d.get_json(f"/api/runtimes/{runtime_id}")


async def workers(d: RunningDaemon, runtime_id: str) -> dict[str, Any]:
    body = await d.get_json(f"/api/runtimes/{runtime_id}/workers")
    return {w["worker_id"]: w for w in body["items"]}


async def wait_status(
    d: RunningDaemon, runtime_id: str, status: str, code: str | None = None
) -> Any:
    """Wait until the runtime shows ``status`` (and ``last_error.code``); return its record."""
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        record = await runtime(d, runtime_id)
        seen["record"] = record
        if record["registry_status"] != status:
            return False
        return code is None or (record["last_error"] or {}).get("code") == code

    try:
        await wait_for(reached, message=f"{runtime_id} to be {status} ({code})")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {seen.get('record')}") from None
    return seen["record"]


async def start_one(
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    tmp_path: Path,
    fake: FakeRuntime,
    runtime_id: str = "remote-a",
    **extra: object,
) -> tuple[RunningDaemon, FakeServer]:
    server = await start_fake(nursery, ("/yoi", fake))
    options = {**FAST, "token_file": token_file(tmp_path), **extra}
    d = await start_daemon(remote_source_toml(runtime_id, server.url("/yoi"), **options))
    return d, server


async def test_projects_remote_workers_with_real_capabilities(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeRuntime("upstream-id", token=TOKEN, worker_creation_available=True)
    fake.add(
        FakeWorker(
            "w-1",
            display_name="Coder\x00/One",
            intent={"kind": "role", "role": "coder", "purpose": "ticket 7"},
            profile={"kind": "named", "value": "reviewer-x"},
        ),
        FakeWorker("w-2", status="stopped", intent={"kind": "task", "objective": "fix bug"}),
        FakeWorker("w-3", status="cancelled", profile={"kind": "builtin", "value": "builtin:x"}),
    )
    d, _ = await start_one(start_daemon, nursery, tmp_path, fake)
    record = await wait_status(d, "remote-a", "available")
    host_id = derive_id(REMOTE_HOST_PREFIX, "remote-a")
    assert record["kind"] == "remote_worker_runtime"
    assert record["source"]["kind"] == "remote_http"
    assert record["label"] == "Fake runtime"  # the runtime's display_name
    assert record["host_ids"] == [host_id]
    caps = record["capabilities"]
    assert caps["can_spawn_worker"] and caps["can_stop_worker"] and caps["can_accept_input"]
    assert not caps["can_stream_events"]  # the registry does not proxy event streams

    found = await workers(d, "remote-a")
    assert set(found) == {"w-1", "w-2", "w-3"}
    w1, w2, w3 = found["w-1"], found["w-2"], found["w-3"]
    assert w1["runtime_id"] == "remote-a" and w1["host_id"] == host_id
    assert w1["implementation"]["kind"] == "remote_worker_runtime"
    assert (w1["label"], w1["role"], w1["profile"]) == ("CoderOne", "coder", "reviewer-x")
    assert (w2["label"], w2["role"], w2["profile"]) == ("w-2", "fix bug", "runtime_default")
    assert w3["profile"] == "builtin:x"
    assert (w1["state"], w2["state"], w3["state"]) == ("running", "stopped", "cancelled")
    assert w1["workspace"] == {
        "visibility": "remote_runtime",
        "identity": "runtime_registry_worker",
        "workspace_id": "",
        "registry_visibility": "runtime",
    }
    assert record["status"] == "running"  # yoi's word for an observed runtime process
    assert (caps["workspace_scope"], caps["os"], caps["arch"]) == (
        "remote_runtime_backend_private",
        "unknown",
        "unknown",
    )
    assert (w1["display_name"], w1["tags"]) == ("CoderOne", ["profile:reviewer-x"])
    assert (w2["display_name"], w2["tags"]) == ("Runtime Default", ["profile:runtime_default"])
    assert w1["capabilities"] == {
        "can_accept_input": True,
        "can_stream_events": False,
        "can_stop": True,
        "can_cancel": True,
        "can_spawn_followup": False,
        "can_read_bounded_transcript": False,
    }
    # An ended worker takes no input, but a (retried) stop or cancel stays idempotent.
    assert w2["capabilities"]["can_accept_input"] is False
    assert w2["capabilities"]["can_stop"] is True

    hosts = await d.get_json("/api/hosts")
    assert [(h["host_id"], h["kind"]) for h in hosts["items"]] == [
        (host_id, "remote-worker-runtime-host")
    ]
    by_host = await d.get_json(f"/api/hosts/{host_id}/workers")
    assert {w["worker_id"] for w in by_host["items"]} == {"w-1", "w-2", "w-3"}

    # The bearer token was really sent, on every request.
    assert fake.auth_headers and set(fake.auth_headers) == {f"Bearer {TOKEN}"}

    # worker_creation_available gates spawn, both ways.
    fake.worker_creation_available = False

    async def spawn_gone() -> bool:
        return not (await runtime(d, "remote-a"))["capabilities"]["can_spawn_worker"]

    await wait_for(spawn_gone)


async def test_configured_label_and_workspace_binding(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeRuntime("x", token=TOKEN)
    fake.add("w-1")
    d, _ = await start_one(
        start_daemon, nursery, tmp_path, fake, label="GPU box", workspaces=["ws-1"]
    )
    record = await wait_status(d, "remote-a", "available")
    assert record["label"] == "GPU box"
    assert record["capabilities"]["registry_workspace_scope"] == "current_workspace"
    found = await workers(d, "remote-a")
    assert found["w-1"]["workspace"] == {
        "visibility": "remote_runtime",
        "identity": "runtime_registry_worker",
        "workspace_id": "ws-1",
        "registry_visibility": "workspace",
    }


async def test_runtime_that_reports_stopped_is_shown_stopped(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeRuntime("x", token=TOKEN, worker_creation_available=True)
    fake.add("w-1")
    d, _ = await start_one(start_daemon, nursery, tmp_path, fake)
    await wait_status(d, "remote-a", "available")
    fake.status = "stopped"
    record = await wait_status(d, "remote-a", "stopped")
    assert not any(
        record["capabilities"][k]
        for k in ("can_spawn_worker", "can_stop_worker", "can_cancel_worker", "can_accept_input")
    )
    caps = (await workers(d, "remote-a"))["w-1"]["capabilities"]
    assert not (caps["can_stop"] or caps["can_cancel"] or caps["can_accept_input"])
    fake.status = "running"
    record = await wait_status(d, "remote-a", "available")
    assert record["capabilities"]["can_stop_worker"] is True


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("hang", "remote_runtime_timeout"),
        ("error500", "remote_runtime_http_error"),
        ("unauthorized", "remote_runtime_auth_failed"),
        ("forbidden", "remote_runtime_forbidden"),
        ("garbage", "remote_runtime_malformed_response"),
        ("wrong_shape", "remote_runtime_malformed_response"),
        ("oversize", "remote_runtime_malformed_response"),
        ("oversize_chunked", "remote_runtime_malformed_response"),
    ],
)
async def test_each_failure_is_a_typed_diagnostic_and_recovers(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path, fault: str, code: str
) -> None:
    fake = FakeRuntime("x", token=TOKEN, oversize_bytes=64 * 1024)
    fake.add("w-1", "w-2")
    d, _ = await start_one(
        start_daemon,
        nursery,
        tmp_path,
        fake,
        timeout="200ms",
        max_response_bytes=16 * 1024,
        backoff_max="200ms",
    )
    await wait_status(d, "remote-a", "available")
    fake.fault = fault
    record = await wait_status(d, "remote-a", "unavailable", code)
    assert "'remote-a'" in record["last_error"]["message"]
    assert fake.error_message not in record["last_error"]["message"]
    assert record["consecutive_failures"] >= 1
    # Not stale yet: the last known workers are still served, unmarked.
    found = await workers(d, "remote-a")
    assert set(found) == {"w-1", "w-2"} and not any(w["stale"] for w in found.values())
    fake.fault = None
    record = await wait_status(d, "remote-a", "available")
    assert record["consecutive_failures"] == 0


async def test_slow_answers_within_the_timeout_are_fine(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeRuntime("x", token=TOKEN, fault="slow", slow_seconds=0.05)
    fake.add("w-1")
    d, _ = await start_one(start_daemon, nursery, tmp_path, fake, timeout="1s")
    await wait_status(d, "remote-a", "available")
    fake.slow_seconds = 1.5  # now slower than the timeout
    record = await wait_status(d, "remote-a", "unavailable", "remote_runtime_timeout")
    assert record["consecutive_failures"] >= 1


async def test_refused_then_stale_then_expired_then_back_with_new_workers(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeRuntime("x", token=TOKEN)
    fake.add("w-1", "w-2")
    d, server = await start_one(
        start_daemon,
        nursery,
        tmp_path,
        fake,
        stale_after="400ms",
        expire_after="1200ms",
        backoff_max="100ms",
    )
    await wait_status(d, "remote-a", "available")
    await server.stop()
    await wait_status(d, "remote-a", "unavailable", "remote_runtime_network_error")

    record = await wait_status(d, "remote-a", "stale")
    assert "runtime_stale" in {diag["code"] for diag in record["diagnostics"]}
    found = await workers(d, "remote-a")
    assert set(found) == {"w-1", "w-2"}
    assert all(w["stale"] for w in found.values())  # kept and marked

    async def expired() -> bool:
        return await workers(d, "remote-a") == {}

    await wait_for(expired, message="workers dropped after expire_after")
    assert (await runtime(d, "remote-a"))["registry_status"] == "stale"

    fake.set_workers(["x-1", "x-2", "x-3"])  # the runtime comes back with other workers
    await server.start(nursery)
    await wait_status(d, "remote-a", "available")
    found = await workers(d, "remote-a")
    assert set(found) == {"x-1", "x-2", "x-3"}
    assert not any(w["stale"] for w in found.values())


async def test_backs_off_while_failing_and_returns_to_the_interval(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeRuntime("x", token=TOKEN)
    fake.add("w-1")
    d, _ = await start_one(
        start_daemon, nursery, tmp_path, fake, backoff_max="400ms", poll_jitter=0
    )
    await wait_status(d, "remote-a", "available")
    fake.fault = "error500"
    # While failing, every attempt starts with GET /v1/runtime (to see whether the runtime
    # came back as one that serves the subscription).
    failing_from = len(fake.times("runtime"))
    await wait_for(lambda: len(fake.times("runtime")) >= failing_from + 7, deadline_s=10)
    times = fake.times("runtime")[failing_from:]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 50, 100, 200, 400 (capped), 400 ms ... measured between request arrivals.
    assert gaps[-1] >= 0.35 and gaps[-2] >= 0.35, gaps
    assert gaps[-1] < 0.4 * 2, gaps  # capped
    assert gaps[0] < gaps[2], gaps  # growing

    fake.fault = None
    await wait_status(d, "remote-a", "available")
    # Polling again, every poll starts with GET /v1/workers (the summary every few polls).
    recovered_from = len(fake.times("workers"))
    await wait_for(lambda: len(fake.times("workers")) >= recovered_from + 6)
    times = fake.times("workers")[recovered_from:]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.median(gaps) < 0.2, gaps  # the normal 50 ms interval again


async def test_sends_only_changes(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeRuntime("x", token=TOKEN)
    fake.add("w-1", "w-2")
    d, _ = await start_one(start_daemon, nursery, tmp_path, fake)
    await wait_status(d, "remote-a", "available")
    actor = d.daemon.actor
    before_set = actor.snapshot.runtimes["remote-a"].workers
    before = await workers(d, "remote-a")
    polled = fake.count("workers")
    await wait_for(lambda: fake.count("workers") >= polled + 5)
    # Five unchanged polls later: the workers (and their last_seen_at) are untouched.
    assert actor.snapshot.runtimes["remote-a"].workers is before_set
    assert await workers(d, "remote-a") == before

    fake.workers["w-1"].status = "stopped"

    async def changed() -> bool:
        state: str = (await workers(d, "remote-a"))["w-1"]["state"]
        return state == "stopped"

    await wait_for(changed)
    assert actor.snapshot.runtimes["remote-a"].workers is not before_set
    after = await workers(d, "remote-a")
    assert after["w-2"] == before["w-2"]
    assert after["w-1"]["last_seen_at"] > before["w-1"]["last_seen_at"]


async def test_bad_worker_entries_are_left_out_with_diagnostics(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeRuntime("x", token=TOKEN)
    fake.add("w-1")
    fake.extra_worker_entries = [
        {"worker_id": "bad/id", "status": "running"},
        {"worker_id": "has space", "status": "running"},
        {"worker_id": "w-2", "status": 7},
        {"worker_id": "w-3", "status": "Running Loudly"},
        "not an object",
        {"worker_id": "w-1", "status": "stopped"},
    ]
    d, _ = await start_one(start_daemon, nursery, tmp_path, fake)
    record = await wait_status(d, "remote-a", "degraded")
    codes = {diag["code"]: diag["message"] for diag in record["diagnostics"]}
    assert set(codes) == {
        "remote_worker_id_invalid",
        "remote_worker_malformed",
        "remote_worker_id_duplicate",
    }
    assert codes["remote_worker_id_invalid"].startswith("2 worker(s)")
    assert codes["remote_worker_malformed"].startswith("3 worker entries")
    found = await workers(d, "remote-a")
    assert set(found) == {"w-1"} and found["w-1"]["state"] == "running"  # first entry wins
    listing = (await d.client.get("/api/workers")).text + (await d.client.get("/api/runtimes")).text
    assert "bad/id" not in listing and "has space" not in listing

    fake.extra_worker_entries = []
    record = await wait_status(d, "remote-a", "available")
    assert record["diagnostics"] == []


async def test_one_hanging_runtime_does_not_harm_another(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    a = FakeRuntime("a", token=TOKEN, fault="hang")
    b = FakeRuntime("b", token=TOKEN)
    a.add("w-1")
    b.add("w-1", "w-2")
    server = await start_fake(nursery, ("/a", a), ("/b", b))
    options = {**FAST, "timeout": "300ms", "token_file": token_file(tmp_path)}
    d = await start_daemon(
        remote_source_toml("remote-a", server.url("/a"), **options)
        + remote_source_toml("remote-b", server.url("/b"), **options)
    )
    await wait_status(d, "remote-a", "unavailable", "remote_runtime_timeout")
    await wait_status(d, "remote-b", "available")
    b.workers["w-2"].status = "cancelled"

    async def b_fresh() -> bool:
        state: str = (await workers(d, "remote-b"))["w-2"]["state"]
        return state == "cancelled"

    await wait_for(b_fresh)
    everything = await d.get_json("/api/workers")
    assert [(w["runtime_id"], w["worker_id"]) for w in everything["items"]] == [
        ("remote-b", "w-1"),
        ("remote-b", "w-2"),
    ]


async def test_token_sources_file_env_credential_and_rotation(
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env_rt = FakeRuntime("e", token="from-env-token")
    cred_rt = FakeRuntime("c", token="from-credential-token")
    file_rt = FakeRuntime("f", token="rotated-token")
    for fake in (env_rt, cred_rt, file_rt):
        fake.add("w-1")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "yoi-remote-c").write_text("from-credential-token")
    monkeypatch.setenv("YOI_TEST_REMOTE_TOKEN", "from-env-token\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    missing = tmp_path / "not-yet.token"
    server = await start_fake(nursery, ("/e", env_rt), ("/c", cred_rt), ("/f", file_rt))
    d = await start_daemon(
        remote_source_toml("remote-e", server.url("/e"), token_env="YOI_TEST_REMOTE_TOKEN", **FAST)
        + remote_source_toml("remote-c", server.url("/c"), token_credential="yoi-remote-c", **FAST)
        + remote_source_toml("remote-f", server.url("/f"), token_file=str(missing), **FAST)
    )
    await wait_status(d, "remote-e", "available")
    await wait_status(d, "remote-c", "available")
    assert set(env_rt.auth_headers) == {"Bearer from-env-token"}
    assert set(cred_rt.auth_headers) == {"Bearer from-credential-token"}

    record = await wait_status(d, "remote-f", "unavailable", "remote_runtime_token_unavailable")
    assert "token_file does not exist" in record["last_error"]["message"]
    assert str(missing) not in record["last_error"]["message"]
    assert file_rt.requests == []  # nothing is sent without the configured token

    missing.write_text("old-token\n")
    await wait_status(d, "remote-f", "unavailable", "remote_runtime_auth_failed")
    missing.write_text("rotated-token\n")  # re-read after the runtime refused the old one
    await wait_status(d, "remote-f", "available")
    assert file_rt.auth_headers[-1] == "Bearer rotated-token"
