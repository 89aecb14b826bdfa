"""Shared test harness: real files in temp dirs, the real daemon, real HTTP over loopback."""

from __future__ import annotations

import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from tests.toml_text import toml_value
from yoi_registryd.config import Config, parse_config
from yoi_registryd.daemon import Daemon

TESTS_DIR = Path(__file__).parent
VENDORED_FIXTURES = TESTS_DIR / "fixtures" / "yoi-data"
SHARED_FIXTURES = TESTS_DIR.parent.parent / "shared" / "fixtures" / "yoi-data"
FIXTURE_ROOT = "/srv/yoi/workspaces/demo"


def fixtures_source() -> Path:
    """The shared fixture tree when it sits beside the repo, else our vendored copy."""
    return SHARED_FIXTURES if SHARED_FIXTURES.is_dir() else VENDORED_FIXTURES


def copy_fixtures(dest: Path) -> Path:
    """Copy the yoi data dir fixture to ``dest`` (writable) and return the copy's path."""
    shutil.copytree(fixtures_source(), dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


@pytest.fixture(autouse=True)
def state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every daemon a test starts keeps its state (the audit trail) in the test's temp dir,
    never in the machine's /var/lib/yoi-registryd."""
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setenv("STATE_DIRECTORY", str(path))
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return copy_fixtures(tmp_path / "yoi-data")


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir()
    return path


async def wait_for(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    deadline_s: float = 5.0,
    interval: float = 0.01,
    message: str = "condition",
) -> None:
    """Poll ``predicate`` until it is true; fail the test when ``timeout`` passes first."""
    deadline = trio.current_time() + deadline_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if trio.current_time() >= deadline:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {message}")
        await trio.sleep(interval)


@dataclass
class RunningDaemon:
    daemon: Daemon
    client: httpx.AsyncClient
    base_url: str

    async def get_json(self, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.client.get(path, **kwargs)
        assert response.status_code == status, (path, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json")
        return msgspec.json.decode(response.content)

    async def listed_workers(self, **kwargs: Any) -> list[dict[str, Any]]:
        """Wait until ``/api/workers`` (requested with ``kwargs``) lists a worker; its items."""
        items: list[dict[str, Any]] = []

        async def some() -> bool:
            nonlocal items
            items = (await self.get_json("/api/workers", **kwargs))["items"]
            return bool(items)

        await wait_for(some, message="workers to be listed")
        return items


def listen_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


StartDaemon = Callable[..., Awaitable[RunningDaemon]]


@pytest.fixture
async def start_daemon(nursery: trio.Nursery) -> AsyncIterator[StartDaemon]:
    """Start the real daemon in the test's nursery, serving on an ephemeral loopback port.

    Takes TOML text (or a ``Config``); returns the daemon and an httpx client bound to it.
    """
    clients: list[httpx.AsyncClient] = []
    daemons: list[Daemon] = []

    async def start(config: str | Config) -> RunningDaemon:
        cfg = parse_config(config) if isinstance(config, str) else config
        sock = listen_socket()
        port = sock.getsockname()[1]
        daemon = Daemon(cfg)
        await nursery.start(daemon.run, [sock])
        daemons.append(daemon)
        base_url = f"http://127.0.0.1:{port}"
        client = httpx.AsyncClient(base_url=base_url, timeout=10)
        clients.append(client)
        return RunningDaemon(daemon, client, base_url)

    yield start
    for client in clients:
        await client.aclose()
    for daemon in daemons:
        daemon.shutdown.set()


def local_source_toml(data_dir: Path, runtime_dir: Path, **extra: object) -> str:
    """A config with one local source on ``data_dir``; ``extra`` adds keys to the source."""
    lines = [
        "[[sources]]",
        'kind = "local"',
        f'data_dir = "{data_dir}"',
        f'runtime_dir = "{runtime_dir}"',
    ]
    lines += [f"{key} = {toml_value(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"
