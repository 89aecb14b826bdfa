"""Health probes: /livez, /readyz, /healthz over real HTTP, through start-up, failure, shutdown."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from tests.conftest import RunningDaemon, StartDaemon, local_source_toml, wait_for
from tests.scripted_source import Script, failing_spec
from yoi_registryd.http import probes
from yoi_registryd.registry import RegistryActor

NO_SOURCES = """
sources = []
[supervisor]
backoff_initial = "50ms"
backoff_max = "200ms"
"""


async def probe(d: RunningDaemon, path: str) -> tuple[int, str]:
    response = await d.client.get(path)
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["cache-control"] == "no-store"
    assert int(response.headers["x-registry-index"]) >= 0
    return response.status_code, response.text


async def ready(d: RunningDaemon) -> bool:
    return (await d.client.get("/readyz")).status_code == 200


async def test_liveness_and_its_healthz_alias(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await start_daemon(local_source_toml(data_dir, runtime_dir))
    assert await probe(d, "/livez") == (200, "ok\n")
    status, body = await probe(d, "/livez?verbose")
    assert status == 200
    assert body.splitlines() == ["[+]ping ok", "[+]registry-actor ok", "livez check passed"]
    assert await d.get_json("/healthz") == {"status": "ok"}
    status, body = await probe(d, "/livez?verbose&exclude=ping")
    assert "[+]ping excluded: ok" in body.splitlines()
    response = await d.client.get("/livez?token=x")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_query"


async def test_readiness_waits_for_a_first_observation(
    start_daemon: StartDaemon, nursery: trio.Nursery
) -> None:
    d = await start_daemon(NO_SOURCES)
    status, body = await probe(d, "/readyz?verbose")
    assert status == 200, body
    assert body.splitlines() == [
        "[+]ping ok",
        "[+]registry-actor ok",
        "[+]listener ok",
        "[+]shutdown ok",
        "readyz check passed",
    ]

    script = Script("scripted")
    await d.daemon.supervisor.start(nursery, script.spec(stale_after=60))
    await wait_for(lambda: "scripted" in d.daemon.actor.snapshot.runtimes)
    # Added after start-up, this source is waited for as if known at start-up:
    d.daemon.lifecycle.ready_since = None
    status, body = await probe(d, "/readyz")
    assert status == 503
    assert "[-]source/scripted failed: no first observation yet; start-up grace ends in" in body
    assert body.endswith("readyz check failed\n")
    # Liveness does not depend on sources.
    assert (await probe(d, "/livez"))[0] == 200
    # One check can be skipped; unknown names are reported, not fatal.
    status, body = await probe(d, "/readyz?verbose&exclude=source/scripted&exclude=nope")
    assert status == 200, body
    assert "[+]source/scripted excluded: ok" in body
    assert "warn: some health checks cannot be excluded: no matches for 'nope'" in body

    await script.observe("w1")
    await wait_for(lambda: ready(d), message="ready after the first observation")
    status, body = await probe(d, "/readyz?verbose")
    assert "[+]source/scripted ok" in body.splitlines()

    # A source failing after its first observation does not take the registry out of
    # service: its runtime shows the failure instead.
    await script.fail("runtime_unreachable", "the runtime did not answer")

    async def unavailable() -> bool:
        body = await d.get_json("/api/runtimes/scripted")
        return bool(body["registry_status"] == "unavailable")

    await wait_for(unavailable)
    assert await ready(d)


async def test_a_failing_source_holds_readiness_only_for_its_grace(
    start_daemon: StartDaemon, nursery: trio.Nursery
) -> None:
    d = await start_daemon(NO_SOURCES)
    grace = 1.5
    await d.daemon.supervisor.start(nursery, failing_spec("unreachable", stale_after=grace))
    started = trio.current_time()
    await wait_for(lambda: "unreachable" in d.daemon.actor.snapshot.runtimes)
    # Added after start-up, this source is waited for as if known at start-up:
    d.daemon.lifecycle.ready_since = None
    status, body = await probe(d, "/readyz?verbose")
    assert status == 503, body
    assert "[-]source/unreachable failed" in body

    # The source keeps failing and is restarted with backoff, visibly.
    async def restarted_twice() -> bool:
        items = (await d.get_json("/api/sources"))["items"]
        return bool(items[0]["restarts"] >= 2)

    await wait_for(restarted_twice)
    await wait_for(lambda: ready(d), deadline_s=grace + 5, message="ready once the grace is over")
    assert trio.current_time() - started >= grace * 0.9
    item = (await d.get_json("/api/sources"))["items"][0]
    assert item["ready"] is True
    assert item["health"] == "down"
    assert item["runtime_status"] == "unavailable"
    assert item["last_error"] == {
        "code": "runtime_unreachable",
        "message": "the runtime did not answer",
    }
    assert item["errors"]["runtime_unreachable"] >= 2


async def test_shutdown_makes_the_daemon_unready(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await start_daemon(local_source_toml(data_dir, runtime_dir))
    await wait_for(lambda: ready(d))
    daemon = d.daemon
    daemon.shutdown.set()
    result = await probes.evaluate("readyz", daemon.actor, daemon.lifecycle)
    assert result.status == 503
    assert "shutdown" in [c.name for c in result.checks if not c.ok]
    assert "[-]shutdown failed: the daemon is shutting down" in result.render(verbose=False)

    # The listener goes away: a prober sees the daemon as not ready either way.
    async def refused_or_unready() -> bool:
        try:
            async with httpx.AsyncClient(base_url=d.base_url) as fresh:
                return (await fresh.get("/readyz")).status_code == 503
        except httpx.TransportError:
            return True

    await wait_for(refused_or_unready)


async def test_liveness_fails_when_the_actor_does_not_run() -> None:
    actor = RegistryActor()
    lifecycle = probes.Lifecycle(listening=False)
    live = await probes.evaluate("livez", actor, lifecycle)
    assert live.status == 503
    assert "[-]registry-actor failed: the registry actor is not running" in live.render(False)
    ready_ = await probes.evaluate("readyz", actor, lifecycle)
    assert {c.name for c in ready_.checks if not c.ok} == {"registry-actor", "listener"}

    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        assert (await probes.evaluate("livez", actor, lifecycle)).ok
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/healthz"])
async def test_probes_need_no_token_and_answer_no_secrets(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, path: str
) -> None:
    d = await start_daemon(local_source_toml(data_dir, runtime_dir))
    response = await d.client.get(path + "?verbose=1")
    assert response.status_code == 200
    text = response.text
    assert str(data_dir) not in text and str(runtime_dir) not in text
    if path == "/healthz":
        assert msgspec.json.decode(response.content) == {"status": "ok"}
