"""``yoi-registryd --demo``: live data at once, changing by itself."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import StartDaemon, wait_for
from tests.daemon_process import clean_env, free_port, run_daemon, wait_ready
from tests.embedded_plugins import embedded_source_toml
from tests.test_web_client_contract import ROUTES as CONTRACT_ROUTES
from tests.test_web_client_contract import Crawl
from yoi_registryd.runtimes.demo import DEMO_RUNTIME_ID

DEMO_LABELS = {"coder", "reviewer", "planner", "Ticket#42@Coder", "companion", "docs-writer"}


async def test_demo_workers_change_state_over_http(start_daemon: StartDaemon) -> None:
    d = await start_daemon(
        embedded_source_toml(
            runtime_id="demo",
            entry_point="demo",
            options={"workers": 4, "interval": "20ms", "seed": 11},
        )
    )
    seen_states: set[str] = set()
    seen_ids: set[str] = set()

    async def lively() -> bool:
        body = await d.get_json("/api/runtimes/demo/workers")
        seen_states.update(w["state"] for w in body["items"])
        seen_ids.update(w["worker_id"] for w in body["items"])
        return {"running", "stopped", "cancelled"} <= seen_states and len(seen_ids) > 4

    await wait_for(lively, message="workers to run, stop, be cancelled and be replaced")
    record = await d.get_json("/api/runtimes/demo")
    assert record["registry_status"] == "available"
    assert 1 <= record["worker_count"] <= 4


async def test_demo_flag_serves_a_live_demo_runtime(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'sources = []\n[server]\nlisten = ["127.0.0.1:{port}"]\n')
    env = clean_env(tmp_path)
    # Options go after the command as well as before it.
    async with run_daemon(["serve", "--demo", "--config", str(config)], env, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            await wait_ready(client, daemon)
            await check_demo(client)
            # Every answer of the demo decodes into the yoi web client's types.
            crawl = await Crawl(client).everything()
            assert set(crawl.routes) == CONTRACT_ROUTES
            assert [r.kind for r in crawl.runtimes.values()] == ["embedded_worker_runtime"]
        # The client is closed first: an idle keep-alive connection would hold the daemon's
        # graceful shutdown for its whole grace period.
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0


async def check_demo(client: httpx.AsyncClient) -> None:
    """Six workers of the demo cast, all running at first, changing without help."""
    path = f"/api/runtimes/{DEMO_RUNTIME_ID}/workers"

    async def populated() -> bool:
        return len((await client.get(path)).json()["items"]) == 6

    await wait_for(populated, message="the demo population")
    first: list[dict[str, Any]] = (await client.get(path)).json()["items"]
    assert {w["label"] for w in first} == DEMO_LABELS
    assert {w["state"] for w in first} == {"running"}
    runtime = (await client.get(f"/api/runtimes/{DEMO_RUNTIME_ID}")).json()
    assert runtime["kind"] == "embedded_worker_runtime"

    async def changed() -> bool:
        items: list[dict[str, Any]] = (await client.get(path)).json()["items"]
        return items != first

    await wait_for(changed, deadline_s=10, message="the demo to change by itself")


async def test_demo_flag_refuses_a_clashing_runtime_id(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(embedded_source_toml(runtime_id=DEMO_RUNTIME_ID, entry_point="memory"))
    async with run_daemon(
        ["--demo", "--config", str(config)], clean_env(tmp_path), tmp_path
    ) as daemon:
        assert await daemon.wait_exit() == 1
        assert f"{DEMO_RUNTIME_ID!r} is already used" in daemon.stderr
