"""The remote source against a current yoi runtime (contract-v2 sections 4 and 6), over HTTP.

The fake runtime speaks HEAD's REST v1 and verifies every capability token the real daemon
mints with ``cryptography``; the same daemon still follows an older runtime (June-July) with
a bearer token, which the older-era tests in ``test_remote_source.py`` cover at length.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from tests import fake_runtime
from tests.conftest import RunningDaemon, StartDaemon, wait_for
from tests.fake_runtime import (
    SERVER_ID,
    WORKSPACE_ID,
    FakeRuntime,
    FakeWorker,
    capability_source_toml,
    current_runtime,
    new_worker_id,
    registry_identity,
    remote_source_toml,
    start_fake,
    with_subscription,
)
from tests.test_remote_source import wait_status, workers
from tests.yoi_operation_types import input_result, refusal_code
from yoi_registryd.capability import SigningKey
from yoi_registryd.config import ConfigError, parse_config
from yoi_registryd.daemon import Daemon

RID = "gpu-1"
FAST = {"poll_interval": "50ms", "timeout": "2s", "stale_after": "5s", "expire_after": "10s"}
SLOW = {"poll_interval": "30s", "stale_after": "60s", "expire_after": "120s"}
"""One poll at start (and one after each operation): what changes, changes by an operation."""


async def start_current(
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    tmp_path: Path,
    fake: FakeRuntime | None = None,
    preamble: str = "",
    **extra: object,
) -> tuple[RunningDaemon, FakeRuntime, SigningKey]:
    """A current runtime trusting a fresh registry key, and the daemon following it
    (``preamble``: TOML before the source, e.g. clients)."""
    key, key_path = registry_identity(tmp_path)
    fake = fake or current_runtime(RID)
    fake.trusted_servers = {SERVER_ID: key.public_key_string()}
    fake.default_workspace = WORKSPACE_ID
    server = await start_fake(nursery, ("/rt", fake))
    toml = capability_source_toml(RID, server.url("/rt"), key_path, **{**FAST, **extra})
    return await start_daemon(preamble + toml), fake, key


async def test_a_current_runtime_is_followed_with_capability_tokens(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = current_runtime(RID, display_name="GPU box")
    ids = [new_worker_id() for _ in range(5)]
    fake.add(
        FakeWorker(ids[0], status="idle", display_name="review bot"),
        FakeWorker(ids[1], status="paused"),
        FakeWorker(ids[2], status="running"),
        FakeWorker(ids[3], status="cancelled"),
        # Another workspace's worker: the runtime shows the registry none of it.
        FakeWorker(ids[4], status="idle", workspace_id="0192f0e8-4d84-7d6e-a000-00000000beef"),
    )
    d, fake, _ = await start_current(start_daemon, nursery, tmp_path, fake)
    record = await wait_status(d, RID, "available")
    # The runtime's id is ours (it is the token's audience): HEAD does not say it.
    assert record["runtime_id"] == RID and record["label"] == "GPU box"
    listed = await workers(d, RID)
    assert set(listed) == set(ids[:4])
    assert all(uuid.UUID(wid).version == 7 for wid in listed)
    assert {wid: listed[wid]["state"] for wid in listed} == {
        ids[0]: "idle",
        ids[1]: "paused",
        ids[2]: "running",
        ids[3]: "cancelled",
    }
    assert listed[ids[0]]["label"] == "review bot"
    assert listed[ids[0]]["profile"] == "builtin:coder"
    # The workspace the runtime says owns each worker, which only it is shown to.
    assert {w["workspace"]["workspace_id"] for w in listed.values()} == {WORKSPACE_ID}
    assert {w["workspace"]["registry_visibility"] for w in listed.values()} == {"workspace"}
    assert (record["capabilities"]["os"], record["capabilities"]["arch"]) == ("linux", "x86_64")

    # Every request carried a token the runtime verified, with only its route's permission.
    permissions: dict[str, set[tuple[str, ...]]] = {"runtime": set(), "workers": set()}
    for route, context in fake.contexts:
        assert context.server_id == SERVER_ID and context.workspace_id == WORKSPACE_ID
        permissions[route].add(context.permissions)
    assert permissions == {"runtime": {()}, "workers": {("workers:list",)}}
    assert all(h is not None and h.startswith("Bearer yoi-cap-v1.") for h in fake.auth_headers)

    # Changes (a new status, a new worker, one removed) are followed.
    fake.workers[ids[0]].status = "running"
    new = new_worker_id()
    fake.add(FakeWorker(new, status="idle"))
    del fake.workers[ids[3]]

    async def followed() -> bool:
        now = await workers(d, RID)
        return set(now) == {ids[0], ids[1], ids[2], new} and now[ids[0]]["state"] == "running"

    await wait_for(followed, message="the registry to follow the runtime")


async def test_operations_carry_their_own_permission_and_land_at_once(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = current_runtime(RID)
    idle, busy = new_worker_id(), new_worker_id()
    fake.add(FakeWorker(idle, status="idle"), FakeWorker(busy, status="running"))
    d, fake, _ = await start_current(start_daemon, nursery, tmp_path, fake, **SLOW)
    await wait_status(d, RID, "available")
    await workers(d, RID)
    response = await d.client.post(
        f"/api/runtimes/{RID}/workers/{idle}/input", json={"kind": "user", "content": "hello"}
    )
    assert response.status_code == 200, response.text
    response = await d.client.post(f"/api/runtimes/{RID}/workers/{busy}/stop", json={})
    assert response.status_code == 200, response.text
    assert (await workers(d, RID))[busy]["state"] == "stopped"  # from the ack, not a poll
    by_route = [(route, ctx.permissions) for route, ctx in fake.contexts if route == "operation"]
    assert by_route == [("operation", ("workers:input",)), ("operation", ("workers:stop",))]
    assert [(op, wid) for op, wid, _ in fake.operations] == [("input", idle), ("stop", busy)]


@pytest.mark.parametrize(
    ("break_it", "code", "words"),
    [
        ("wrong key", "remote_runtime_auth_failed", "(HTTP 401 unauthorized)"),
        ("wrong runtime", "remote_runtime_auth_failed", "(HTTP 401 unauthorized)"),
        ("expired", "remote_runtime_auth_failed", "(HTTP 401 unauthorized)"),
        ("missing permission", "remote_runtime_forbidden", "(HTTP 403 forbidden): the token"),
        (
            "workspace owned elsewhere",
            "remote_runtime_forbidden",
            "(HTTP 403 workspace_owner_mismatch): the workspace is bound to another server",
        ),
    ],
)
async def test_refused_tokens_are_typed_diagnostics_that_say_which(
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    break_it: str,
    code: str,
    words: str,
) -> None:
    d, fake, _ = await start_current(start_daemon, nursery, tmp_path)
    fake.add(FakeWorker(new_worker_id(), status="idle"))
    await wait_status(d, RID, "available")
    trusted = dict(fake.trusted_servers)
    if break_it == "wrong key":
        fake.trusted_servers = {SERVER_ID: SigningKey.generate().public_key_string()}
    elif break_it == "wrong runtime":
        fake.runtime_id = "gpu-2"  # its identity is not the audience we mint for
    elif break_it == "expired":
        fake.clock = lambda: time.time() + 3600  # its clock is an hour ahead of ours
    elif break_it == "missing permission":
        monkeypatch.setitem(fake_runtime.PERMISSIONS, "workers", "workers:delete")
    else:
        fake.workspace_owners[WORKSPACE_ID] = "another-backend"
    record = await wait_status(d, RID, "unavailable", code)
    message = record["last_error"]["message"]
    assert words in message and RID in message, message
    # Mending the runtime's side is enough: the registry re-reads its key and recovers.
    fake.trusted_servers, fake.runtime_id, fake.clock = trusted, RID, time.time
    monkeypatch.undo()
    fake.workspace_owners.clear()
    await wait_status(d, RID, "available")


async def test_an_older_runtime_and_a_current_one_side_by_side(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """June-July (runtime_id in the summary, bearer token, ``worker-<hex>`` ids) and HEAD."""
    key, key_path = registry_identity(tmp_path)
    older = FakeRuntime("old-1", token="older-token")
    older.add(FakeWorker("worker-0a1b2c3d", status="running"))
    current = current_runtime("new-1", key)
    current.add(FakeWorker(new_worker_id(), status="paused"))
    server = await start_fake(nursery, ("/old", older), ("/new", current))
    token_path = tmp_path / "older.token"
    token_path.write_text("older-token\n")
    toml = remote_source_toml(
        "old-1", server.url("/old"), token_file=str(token_path), **FAST
    ) + capability_source_toml("new-1", server.url("/new"), key_path, **FAST)
    d = await start_daemon(toml)
    await wait_status(d, "old-1", "available")
    await wait_status(d, "new-1", "available")
    (old_worker,) = (await workers(d, "old-1")).values()
    (new_worker,) = (await workers(d, "new-1")).values()
    assert (old_worker["state"], new_worker["state"]) == ("running", "paused")
    # An older runtime names no workspace and no platform: visible wherever it is.
    assert old_worker["workspace"]["registry_visibility"] == "runtime"
    assert new_worker["workspace"]["workspace_id"] == WORKSPACE_ID
    old_caps = (await d.get_json("/api/runtimes/old-1"))["capabilities"]
    assert (old_caps["os"], old_caps["arch"]) == ("unknown", "unknown")
    assert set(older.auth_headers) == {"Bearer older-token"}


async def test_a_local_token_on_a_current_runtime_sees_workspace_local_only(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = current_runtime(RID, token="local-token-1")
    local, backend = new_worker_id(), new_worker_id()
    fake.add(FakeWorker(local, workspace_id="local"), FakeWorker(backend, workspace_id="ws-a"))
    server = await start_fake(nursery, ("/rt", fake))
    token_path = tmp_path / "local.token"
    token_path.write_text("local-token-1\n")
    d = await start_daemon(
        remote_source_toml(RID, server.url("/rt"), token_file=str(token_path), **FAST)
    )
    await wait_status(d, RID, "available")
    assert set(await workers(d, RID)) == {local}


def test_a_key_that_cannot_be_read_or_parsed_stops_the_start_naming_it(tmp_path: Path) -> None:
    _, key_path = registry_identity(tmp_path)
    bad = tmp_path / "bad.key"
    canary = "yoi-ed25519-pkcs8:v1:" + "c4nary" * 10
    bad.write_text(canary)
    for path, words in (
        (tmp_path / "missing.key", "does not exist"),
        (bad, "is not usable"),
    ):
        config = parse_config(
            capability_source_toml(RID, "http://127.0.0.1:9/rt", key_path)
            + capability_source_toml("gpu-2", "http://127.0.0.1:9/rt2", path)
        )
        with pytest.raises(ConfigError) as failed:
            Daemon(config)
        text = str(failed.value)
        assert f"sources[1].signing_key_file: signing key file {path}" in text
        assert words in text and "c4nary" not in text
        assert "sources[0]" not in text


async def test_a_reload_with_an_unreadable_key_is_rejected(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    d, _, _ = await start_current(start_daemon, nursery, tmp_path)
    await wait_status(d, RID, "available")
    config_path = tmp_path / "config.toml"
    d.daemon.config_path = config_path
    config_path.write_text(
        capability_source_toml(RID, "http://127.0.0.1:9/rt", tmp_path / "gone.key", **FAST)
    )
    assert await d.daemon.reload() is False
    error = d.daemon.reloads.last_error
    assert error is not None and "gone.key does not exist" in error
    await wait_status(d, RID, "available")  # the running source is untouched


async def test_a_subscription_is_opened_with_a_workers_list_token_and_scoped(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The WebSocket handshake carries a capability token holding ``workers:list`` only;
    the runtime scopes snapshot and events to the token's workspace."""
    fake = current_runtime(RID)
    mine, theirs = new_worker_id(), new_worker_id()
    fake.add(
        FakeWorker(mine, status="idle"),
        FakeWorker(theirs, status="idle", workspace_id="0192f0e8-4d84-7d6e-a000-00000000beef"),
    )
    subs = with_subscription(fake)
    d, fake, _ = await start_current(start_daemon, nursery, tmp_path, fake, **SLOW)

    async def subscribed_with(states: dict[str, str]) -> bool:
        sources = (await d.get_json("/api/sources"))["items"]
        mode = next(s["mode"] for s in sources if s["runtime_id"] == RID)
        listed = await workers(d, RID)
        return mode == "subscription" and {w: v["state"] for w, v in listed.items()} == states

    await wait_for(lambda: subscribed_with({mine: "idle"}), message="the scoped snapshot")
    handshakes = [ctx for route, ctx in fake.contexts if route == "subscription"]
    assert handshakes and all(c.permissions == ("workers:list",) for c in handshakes)
    assert all(c.workspace_id == WORKSPACE_ID for c in handshakes)
    subs.upsert(theirs, status="running")  # not ours: never reaches the registry
    subs.upsert(mine, status="running")
    await wait_for(lambda: subscribed_with({mine: "running"}), message="the scoped event")
    subs.remove(theirs)
    subs.remove(mine)
    await wait_for(lambda: subscribed_with({}), message="the scoped removal")
    assert fake.workers == {}


async def test_a_runtimes_refusal_is_rejected_with_its_own_code(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Contract-v2 sections 1.8.3 and 4.4: the runtime's code, never the caller's fault."""
    fake = current_runtime(RID)
    cancelled, stopped, restored = (new_worker_id() for _ in range(3))
    fake.add(*(FakeWorker(w, status="idle") for w in (cancelled, stopped, restored)))
    d, fake, _ = await start_current(start_daemon, nursery, tmp_path, fake, **SLOW)
    await wait_status(d, RID, "available")
    await wait_for(lambda: workers_count(d, 3), message="three workers")

    async def send_input(worker_id: str) -> Any:
        response = await d.client.post(
            f"/api/runtimes/{RID}/workers/{worker_id}/input", json={"content": "hi"}
        )
        result, _ = input_result(response)
        return result

    async def registry_state(worker_id: str, state: str) -> None:
        async def reached() -> bool:
            shown: str = (await workers(d, RID))[worker_id]["state"]
            return shown == state

        await wait_for(reached, message=f"{worker_id} {state}")

    # Each worker ended on the runtime while the registry still shows it idle.
    fake.workers[cancelled].status = "cancelled"
    result = await send_input(cancelled)
    assert (result.state, refusal_code(result)) == ("rejected", "invalid_request")
    await registry_state(cancelled, "cancelled")  # the refusal woke a poll
    fake.workers[stopped].status = "stopped"
    result = await send_input(stopped)  # no execution backend: no implicit restore
    assert (result.state, refusal_code(result)) == ("rejected", "worker_execution_unavailable")
    await registry_state(stopped, "stopped")
    fake.worker_creation_available = True
    fake.workers[restored].status = "stopped"
    result = await send_input(restored)  # restored, then delivered
    assert result.state == "accepted"
    assert fake.workers[restored].status == "running"
    for wid in (cancelled, stopped):
        assert all(w != wid or op != "input" for op, w, _ in fake.operations)


async def workers_count(d: RunningDaemon, count: int) -> bool:
    return len(await workers(d, RID)) == count


async def test_a_workers_workspace_sees_it_and_another_does_not(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The runtime shows the registry one workspace's workers; the registry shows them to
    that workspace's callers only."""
    clients = "".join(
        f'[[clients]]\nname = "{name}"\nworkspaces = ["{workspace}"]\n'
        f'token_sha256 = "{hashlib.sha256(name.encode()).hexdigest()}"\n\n'
        for name, workspace in (("ours", WORKSPACE_ID), ("theirs", "another-workspace"))
    )
    fake = current_runtime(RID)
    worker = new_worker_id()
    fake.add(FakeWorker(worker, status="idle"))
    d, _, _ = await start_current(start_daemon, nursery, tmp_path, fake, preamble=clients)

    async def listed(name: str) -> set[str]:
        body = await d.get_json(
            f"/api/runtimes/{RID}/workers", headers={"Authorization": f"Bearer {name}"}
        )
        return {w["worker_id"] for w in body["items"]}

    async def ours_sees_it() -> bool:
        return await listed("ours") == {worker}

    await wait_for(ours_sees_it, message="our workspace to see its worker")
    assert await listed("theirs") == set()
