"""Replicas that agree: two real daemon processes run the *same* configuration file (each
on its own listening socket, passed as systemd or a container runtime passes it, so not even
``server.listen`` differs), read the same local data and discover the same remote runtime.
For the same registry state they must answer byte-identical bodies with equal ETags, accept
each other's list cursors (they share ``server.cursor_key_file``), and a blocking query
carrying the other replica's ``X-Registry-Index`` must never be held past its wait."""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import trio

from tests.conftest import copy_fixtures, wait_for
from tests.daemon_process import clean_env, run_activated
from tests.discovery_support import serve_runtimes
from tests.fake_runtime import SERVER_ID, WORKSPACE_ID

SAME_BYTES = (
    "/api/workers",
    "/api/workers?limit=2",
    "/api/runtimes/local-worker-runtime/workers",
    "/api/runtimes/rt-remote/workers",
)
"""Registry state only: the same bytes, and so the same ETag, on every replica."""
OBSERVED_BY_EACH = ("/api/runtimes", "/api/hosts")
"""These also carry when *this* replica observed each runtime and host."""
PER_REPLICA_FIELDS = frozenset({"last_seen_at", "last_transition_at", "observed_at"})


def without_observation_times(body: bytes) -> object:
    """A runtime or host list without the times each replica observed on its own."""
    decoded = json.loads(body)
    for item in decoded["items"]:
        for name in PER_REPLICA_FIELDS:
            item.pop(name, None)
    return decoded


def replica_config(tmp_path: Path, data: Path, listing: Path, key_path: Path) -> Path:
    cursor_key = tmp_path / "cursor.key"
    cursor_key.write_text(base64.b64encode(os.urandom(32)).decode())
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\ncursor_key_file = "{cursor_key}"\n\n'
        f'[[sources]]\nkind = "local"\ndata_dir = "{data}"\n'
        f'runtime_dir = "{tmp_path / "run"}"\n\n'
        f'[[discovery]]\nkind = "file"\nname = "runtimes"\npath = "{listing}"\n'
        f'auth = "capability"\nserver_id = "{SERVER_ID}"\nsigning_key_file = "{key_path}"\n'
        f'workspace_id = "{WORKSPACE_ID}"\npoll_interval = "100ms"\n'
    )
    return config


@asynccontextmanager
async def replica(config: Path, workdir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """One daemon running ``config``, serving on a socket of its own; a client bound to it."""
    await trio.Path(workdir / "state").mkdir(parents=True)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        env = clean_env(workdir, STATE_DIRECTORY=str(workdir / "state"))
        args = ["--config", str(config)]
        async with (
            run_activated([(listener, "api")], args, env, workdir) as daemon,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):

            async def ready() -> bool:
                assert daemon.process.returncode is None, daemon.stderr
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, deadline_s=20, interval=0.05, message="replica ready")
            yield client


async def settled(client: httpx.AsyncClient) -> None:
    """Until this replica sees every runtime available."""

    async def all_available() -> bool:
        runtimes = (await client.get("/api/runtimes")).json()["items"]
        return len(runtimes) == 2 and all(r["registry_status"] == "available" for r in runtimes)

    await wait_for(all_available, deadline_s=20, interval=0.05, message="both runtimes")


async def test_two_replicas_answer_the_same_bytes_etags_and_cursors(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    data = copy_fixtures(tmp_path / "yoi-data")
    key_path, server, _ = await serve_runtimes(nursery, tmp_path, "rt-remote")
    listing = tmp_path / "runtimes.json"
    record = {"runtime_id": "rt-remote", "base_url": server.url("/rt-remote"), "label": "R"}
    listing.write_text(json.dumps([record]))
    config = replica_config(tmp_path, data, listing, key_path)

    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(config, tmp_path / "a"))
        b = await stack.enter_async_context(replica(config, tmp_path / "b"))
        await settled(a)
        await settled(b)
        for route in SAME_BYTES:
            on_a, on_b = await a.get(route), await b.get(route)
            assert on_a.status_code == on_b.status_code == 200, route
            assert on_a.content == on_b.content, route
            assert on_a.headers["etag"] == on_b.headers["etag"], route
            # The ETag one replica gave is current on the other: 304 there.
            response = await b.get(route, headers={"If-None-Match": on_a.headers["etag"]})
            assert response.status_code == 304, route
        for route in OBSERVED_BY_EACH:
            on_a, on_b = await a.get(route), await b.get(route)
            assert without_observation_times(on_a.content) == without_observation_times(
                on_b.content
            ), route

        # A cursor sealed by one replica pages on the other, to the same next page.
        first = (await a.get("/api/workers?limit=2")).json()
        cursor = first["next_cursor"]
        assert cursor is not None
        page_a = await a.get("/api/workers", params={"limit": 2, "cursor": cursor})
        page_b = await b.get("/api/workers", params={"limit": 2, "cursor": cursor})
        assert page_b.status_code == 200, page_b.text
        assert page_b.content == page_a.content and page_b.json()["items"]

        # X-Registry-Index counts one replica's changes. Carried to the other, it is never
        # held past its wait: far above that replica's own, it answers at once...
        index_a = int(page_a.headers["x-registry-index"])
        index_b = int(page_b.headers["x-registry-index"])
        # (The bounds leave seconds of slack for a loaded machine: a hold would last the wait.)
        started = trio.current_time()
        ahead_index = max(index_a, index_b) + 10**6
        ahead = await b.get("/api/workers", params={"index": ahead_index, "wait": "60s"})
        took = trio.current_time() - started
        assert ahead.status_code == 200 and took < 3, took
        assert ahead.content == (await a.get("/api/workers")).content
        # ... and at or below it, the answer comes within the wait (here 1 s, nothing changes).
        for index in (index_a, index_b):
            started = trio.current_time()
            held = await b.get("/api/workers", params={"index": index, "wait": "1s"})
            took = trio.current_time() - started
            assert held.status_code == 200 and took < 1 + 1 / 16 + 2, (index, took)
