"""The remote source following a runtime's event subscription, over a real WebSocket.

The real daemon subscribes to fake runtimes (``tests/fake_subscription.py``) on loopback.
Every fault the protocol leaves to the client (a dropped connection, a gap in a worker's
revisions, a runtime restart that resets revisions, a ``lagged`` close, a duplicate event)
must end with the registry equal to the runtime; an older runtime, or one without the
endpoint, is polled; the mode shows on ``/api/sources`` and in ``/metrics``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.conftest import RunningDaemon, StartDaemon, wait_for
from tests.fake_runtime import (
    FakeRuntime,
    FakeServer,
    FakeWorker,
    remote_source_toml,
    start_fake,
    with_subscription,
)
from tests.fake_subscription import FakeSubscriptions

TOKEN = "subscription-token-3a9e"
RID = "remote-sub"
# A long poll interval: whatever the registry learns quickly, it learns from events.
OPTIONS = {
    "poll_interval": "30s",
    "timeout": "2s",
    "stale_after": "90s",
    "expire_after": "10m",
    "ping_interval": "10s",
}
SUPERVISOR = '[supervisor]\nbackoff_initial = "20ms"\nbackoff_max = "200ms"\n\n'
W1 = "0198c7a2-5b1e-7c3d-9f10-2a4b6c8d0e1f"
W2 = "0198c7a2-5b1e-7c3d-9f10-2a4b6c8d0e20"
W3 = "0198c7a2-5b1e-7c3d-9f10-2a4b6c8d0e21"


def current_runtime(*workers: FakeWorker | str) -> tuple[FakeRuntime, FakeSubscriptions]:
    fake = FakeRuntime(runtime_id="ignored", token=TOKEN)
    fake.add(*workers)
    return fake, with_subscription(fake)


async def start(
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    tmp_path: Path,
    fake: FakeRuntime,
    **extra: object,
) -> tuple[RunningDaemon, FakeServer]:
    server = await start_fake(nursery, ("/yoi", fake))
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    options = {**OPTIONS, "token_file": str(token), **extra}
    d = await start_daemon(SUPERVISOR + remote_source_toml(RID, server.url("/yoi"), **options))
    return d, server


async def subscribed(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path, *workers: FakeWorker | str
) -> tuple[RunningDaemon, FakeRuntime, FakeSubscriptions]:
    """A daemon subscribed to a current runtime holding ``workers``, snapshot applied."""
    fake, subs = current_runtime(*workers)
    d, _ = await start(start_daemon, nursery, tmp_path, fake)
    await wait_mode(d, "subscription")
    await converged(d, fake, "the snapshot")
    return d, fake, subs


async def registry_workers(d: RunningDaemon) -> dict[str, str]:
    body = await d.get_json(f"/api/runtimes/{RID}/workers")
    return {w["worker_id"]: w["state"] for w in body["items"]}


def runtime_workers(fake: FakeRuntime) -> dict[str, str]:
    return {w.worker_id: w.status for w in fake.workers.values()}


async def converged(d: RunningDaemon, fake: FakeRuntime, what: str) -> None:
    """Wait until the registry holds exactly the runtime's workers and states."""
    last: dict[str, dict[str, str]] = {}

    async def equal() -> bool:
        last["registry"] = await registry_workers(d)
        return last["registry"] == runtime_workers(fake)

    try:
        await wait_for(equal, message=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last} != {runtime_workers(fake)}") from None


async def source(d: RunningDaemon) -> Any:
    items = (await d.get_json("/api/sources"))["items"]
    return next(item for item in items if item["runtime_id"] == RID)


async def wait_mode(d: RunningDaemon, mode: str) -> Any:
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        seen["source"] = await source(d)
        return bool(seen["source"]["mode"] == mode and seen["source"]["health"] == "up")

    await wait_for(reached, message=f"mode {mode}")
    return seen["source"]


async def mode_metric(d: RunningDaemon) -> dict[str, float]:
    text = (await d.client.get("/metrics")).text
    found = {}
    for line in text.splitlines():
        if line.startswith("yoi_registryd_runtime_source_mode{") and f'"{RID}"' in line:
            labels, value = line.rsplit(" ", 1)
            mode = labels.split('mode="', 1)[1].split('"', 1)[0]
            found[mode] = float(value)
    return found


async def test_follows_snapshot_then_events(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    d, fake, subs = await subscribed(
        start_daemon,
        nursery,
        tmp_path,
        FakeWorker(W1, status="idle", display_name="review bot"),
        W2,
    )
    assert await mode_metric(d) == {"subscription": 1.0, "polling": 0.0}
    record = await d.get_json(f"/api/runtimes/{RID}/workers/{W1}")
    assert record["label"] == "review bot"
    assert fake.count("workers") == 0, "a subscribed runtime is never polled"
    assert fake.auth_headers[-1] == f"Bearer {TOKEN}"

    subs.upsert(W1, status="running")
    await converged(d, fake, "an upsert")
    subs.upsert(W3, status="idle")
    await converged(d, fake, "a new worker")
    subs.remove(W2)
    await converged(d, fake, "a removal")
    assert subs.subscribed == 1
    assert fake.count("workers") == 0


async def test_a_blocking_query_wakes_on_an_event(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    d, _, subs = await subscribed(start_daemon, nursery, tmp_path, W1)
    first = await d.client.get("/api/workers")
    index = first.headers["X-Registry-Index"]
    answer: dict[str, httpx.Response] = {}

    async def watch() -> None:
        answer["r"] = await d.client.get(f"/api/workers?index={index}&wait=60s")

    async with trio.open_nursery() as inner:
        inner.start_soon(watch)
        subs.upsert(W1, status="paused")
        with trio.fail_after(10):
            await wait_for(lambda: "r" in answer, deadline_s=10, message="the watch to answer")
    states = {w["worker_id"]: w["state"] for w in answer["r"].json()["items"]}
    assert states == {W1: "paused"}


async def test_a_dropped_connection_ends_equal_to_the_runtime(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    d, fake, subs = await subscribed(start_daemon, nursery, tmp_path, W1, W2)
    subs.drop()
    # Changes while nobody listens reach the registry through the next snapshot only.
    subs.remove(W1)
    subs.upsert(W3, status="running")
    subs.upsert(W2, status="stopped")
    await converged(d, fake, "the snapshot after the drop")
    assert subs.subscribed >= 2
    crash = (await source(d))["last_crash"]
    assert crash["code"] == "remote_subscription_dropped"
    await wait_mode(d, "subscription")


async def test_a_gap_in_revisions_resubscribes(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    d, fake, subs = await subscribed(start_daemon, nursery, tmp_path, W1, W2)
    fake.workers[W2].status = "cancelled"
    subs.skip(W2)  # the change above was never published
    subs.upsert(W1, status="idle")  # W1 itself is fine: no gap yet
    subs.upsert(W2, display_name="after the gap")
    await wait_for(lambda: subs.subscribed >= 2, message="a fresh subscription")
    await converged(d, fake, "the snapshot after the gap")
    crash = (await source(d))["last_crash"]
    assert crash["code"] == "remote_subscription_gap"


async def test_a_runtime_restart_resets_revisions_and_ends_equal(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    d, fake, subs = await subscribed(start_daemon, nursery, tmp_path, W1, W2)
    for status in ("idle", "running", "idle", "running"):
        subs.upsert(W1, status=status)  # W1 reaches revision 4
    await converged(d, fake, "the events before the restart")
    fake.set_workers([FakeWorker(W1, status="idle"), W3])
    subs.restart()  # every revision is 0 again
    await wait_for(lambda: subs.subscribed >= 2, message="a fresh subscription")
    await converged(d, fake, "the snapshot after the restart")
    # Low revisions after the restart are news, not duplicates of the old ones.
    subs.upsert(W1, status="running")  # revision 1
    await converged(d, fake, "an event after the restart")


async def test_a_lagged_close_resubscribes(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    d, fake, subs = await subscribed(start_daemon, nursery, tmp_path, W1)
    subs.lag()
    subs.upsert(W2, status="running")  # published to no subscriber
    await wait_for(lambda: subs.subscribed >= 2, message="a fresh subscription")
    await converged(d, fake, "the snapshot after the lagged close")
    crash = (await source(d))["last_crash"]
    assert crash["code"] == "remote_subscription_closed"
    assert "lagged" in crash["message"]


async def test_a_protocol_error_resubscribes(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    d, fake, subs = await subscribed(start_daemon, nursery, tmp_path, W1)
    for bad in ('{"protocol_version":1,"frame":"event","message":{}}', "[" * 5000 + "]" * 5000):
        before = subs.subscribed
        subs.send_raw(bad)
        subs.upsert(W2, status=fake.workers.get(W2, FakeWorker(W2)).status)
        await wait_for(lambda n=before: subs.subscribed > n, message="a fresh subscription")
        await converged(d, fake, "the snapshot after the protocol error")
        crash = (await source(d))["last_crash"]
        assert crash["code"] == "remote_subscription_protocol_error", crash


async def test_a_duplicate_event_is_dropped(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    d, fake, subs = await subscribed(start_daemon, nursery, tmp_path, W1)
    subs.upsert(W1, status="running")  # revision 1
    subs.replay()  # revision 1 once more
    subs.upsert(W1, status="idle")  # revision 2
    subs.replay(events_ago=1)  # running, revision 1, late: it must not undo "idle"
    subs.upsert(W2, status="paused")  # a later event proves the replays were read
    await converged(d, fake, "a later event")
    assert subs.subscribed == 1, "a duplicate is not a gap"


async def test_an_older_runtime_is_polled(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeRuntime(runtime_id="older", token=TOKEN)
    fake.add(W1)
    d, _ = await start(start_daemon, nursery, tmp_path, fake, poll_interval="50ms")
    await wait_mode(d, "polling")
    await converged(d, fake, "the first poll")
    assert await mode_metric(d) == {"subscription": 0.0, "polling": 1.0}
    fake.add(W2)
    await converged(d, fake, "a poll")
    assert fake.count("subscription") == 0, "a runtime that names itself predates it"


async def test_a_runtime_without_the_endpoint_is_polled(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake, subs = current_runtime(W1)
    subs.available = False
    d, _ = await start(start_daemon, nursery, tmp_path, fake, poll_interval="50ms")
    await wait_mode(d, "polling")
    fake.add(W2)
    await converged(d, fake, "a poll")
    assert subs.handshakes == 1, "a 404 on the upgrade is not retried at every poll"
    assert (await source(d))["restarts"] == 0


async def test_subscribe_false_always_polls(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake, subs = current_runtime(W1)
    d, _ = await start(start_daemon, nursery, tmp_path, fake, poll_interval="50ms", subscribe=False)
    await wait_mode(d, "polling")
    await converged(d, fake, "a poll")
    assert subs.handshakes == 0


async def test_a_refused_upgrade_is_an_auth_failure(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    d, fake, subs = await subscribed(start_daemon, nursery, tmp_path, W1)
    subs.refuse = 403
    subs.drop()

    async def refused() -> bool:  # a 403: the credentials were taken, the request refused
        record = await d.get_json(f"/api/runtimes/{RID}")
        return bool((record["last_error"] or {}).get("code") == "remote_runtime_forbidden")

    await wait_for(refused, message="the auth failure")
    body = (await d.client.get(f"/api/runtimes/{RID}")).text
    assert fake.error_message not in body


class FreezingProxy:
    """A loopback TCP proxy that can stop forwarding without closing: a peer gone silent
    (a half-open connection, a frozen process), which only a ping with a deadline notices."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.thawed = trio.Event()
        self.thawed.set()
        self.port = 0

    def freeze(self) -> None:
        self.thawed = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]

    async def _handle(self, client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
        async with upstream, client, trio.open_nursery() as nursery:

            async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                try:
                    while data := await src.receive_some(65536):
                        await self.thawed.wait()
                        await dst.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, client, upstream)
            nursery.start_soon(pump, upstream, client)


async def test_a_silent_peer_is_noticed_by_ping(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake, subs = current_runtime(W1)
    server = await start_fake(nursery, ("/yoi", fake))
    proxy = FreezingProxy(server.port)
    await proxy.start(nursery)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    options = {**OPTIONS, "token_file": str(token), "ping_interval": "100ms", "timeout": "1s"}
    url = f"http://127.0.0.1:{proxy.port}/yoi"
    d = await start_daemon(SUPERVISOR + remote_source_toml(RID, url, **options))
    await wait_mode(d, "subscription")
    proxy.freeze()
    subs.upsert(W2, status="running")  # sent into the silence

    async def noticed() -> bool:
        crash = (await source(d))["last_crash"]
        return bool(crash and crash["code"] == "remote_subscription_unresponsive")

    await wait_for(noticed, message="the unanswered ping")
    proxy.thawed.set()
    await converged(d, fake, "the snapshot after the silence")


async def test_a_message_nested_thousands_deep_is_a_protocol_error(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Issue 13, item 5: decoding it raised ``RecursionError``, which crashed the source."""
    d, fake, subs = await subscribed(start_daemon, nursery, tmp_path, W1)
    deep = '{"kind": "event", "message": ' + "[" * 5000 + "]" * 5000 + "}"
    for conn in list(subs.connections):
        conn.push(deep)

    async def refused() -> bool:
        crash = (await source(d))["last_crash"]
        return bool(crash and crash["code"] == "remote_subscription_protocol_error")

    await wait_for(refused, message="the deep message refused")
    assert "nested too deeply" in (await source(d))["last_crash"]["message"]
    subs.upsert(W2, status="running")
    await converged(d, fake, "the snapshot after the refused message")
