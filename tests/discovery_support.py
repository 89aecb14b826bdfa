"""Shared by the ``[[discovery]]`` tests: an entry's TOML (runtimes reached with capability
tokens), its status on ``/api/sources``, and waiting until the API lists what a backend holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests.conftest import RunningDaemon, wait_for
from tests.fake_runtime import (
    SERVER_ID,
    WORKSPACE_ID,
    FakeRuntime,
    FakeServer,
    current_runtime,
    registry_identity,
    start_fake,
)


def discovery_toml(kind: str, name: str, settings: str, key_path: Path) -> str:
    """A daemon with no ``[[sources]]`` and one ``[[discovery]]`` entry (its own keys in
    ``settings``), a fast supervisor backoff and fast polls of what it finds."""
    return f"""
sources = []

[supervisor]
backoff_initial = "100ms"
backoff_max = "500ms"

[[discovery]]
kind = "{kind}"
name = "{name}"
{settings}
auth = "capability"
server_id = "{SERVER_ID}"
signing_key_file = "{key_path}"
workspace_id = "{WORKSPACE_ID}"
poll_interval = "100ms"
"""


async def listed_runtimes(d: RunningDaemon) -> dict[str, Any]:
    response = await d.client.get("/api/runtimes")
    assert response.status_code == 200, response.text
    return {r["runtime_id"]: r for r in response.json()["items"]}


async def discovery_status(d: RunningDaemon) -> dict[str, Any]:
    """The only ``[[discovery]]`` entry's status on ``/api/sources``."""
    response = await d.client.get("/api/sources")
    assert response.status_code == 200, response.text
    (entry,) = response.json()["discovery"]
    assert isinstance(entry, dict)
    return entry


async def follows(
    d: RunningDaemon,
    expected: dict[str, str | None],
    deadline_s: float = 10,
    available: bool = True,
) -> float:
    """Wait until the runtimes listed and their labels are ``expected`` (each one
    ``available`` too, unless not asked); the seconds it took."""
    started = trio.current_time()

    async def reached() -> bool:
        found = await listed_runtimes(d)
        labels = {
            rid: r["label"]
            for rid, r in found.items()
            if not available or r["registry_status"] == "available"
        }
        return labels == expected and set(found) == set(expected)

    await wait_for(reached, deadline_s=deadline_s, interval=0.02, message=f"runtimes {expected}")
    return trio.current_time() - started


async def serve_runtimes(
    nursery: trio.Nursery, directory: Path, *runtime_ids: str
) -> tuple[Path, FakeServer, list[FakeRuntime]]:
    """Current runtimes trusting a new registry key (its file returned first), each served
    at ``/<runtime_id>`` of one fake server."""
    key, key_path = registry_identity(directory)
    runtimes = [current_runtime(rid, key) for rid in runtime_ids]
    server = await start_fake(nursery, *((f"/{r.runtime_id}", r) for r in runtimes))
    return key_path, server, runtimes
