"""The daemon as operators run it: a real ``python -m yoi_registryd`` subprocess, real
signals, real sockets. Readiness is awaited by polling HTTP with a deadline, never by
sleeping a fixed time.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import copy_fixtures, wait_for
from tests.daemon_process import (
    clean_env,
    free_port,
    port_is_free,
    run_daemon,
    short_tmpdir,
    wait_ready,
)
from yoi_registryd.config import DEFAULT_PORT, SYSTEM_CONFIG_PATH

FIXTURE_LABELS = {"coder", "reviewer", "idle-helper", "other-ws", "legacy-pod"} | {
    "Ticket#Worker@Reviewer"
}


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_serves_on_unix_socket_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    data = copy_fixtures(tmp_path / "yoi-data")
    with short_tmpdir() as short:
        sock = short / "d.sock"
        config = write_config(
            tmp_path / "config.toml",
            f'[server]\nlisten = ["unix:{sock}"]\n\n'
            f'[[sources]]\nkind = "local"\ndata_dir = "{data}"\n'
            f'runtime_dir = "{tmp_path / "run"}"\n',
        )
        env = clean_env(tmp_path)
        async with run_daemon(["--config", str(config)], env, tmp_path) as daemon:
            transport = httpx.AsyncHTTPTransport(uds=str(sock))
            async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as c:
                await wait_ready(c, daemon)
                runtimes = (await c.get("/api/runtimes")).json()
                assert [r["runtime_id"] for r in runtimes["items"]] == ["local-worker-runtime"]

                async def workers_listed() -> bool:
                    body = (await c.get("/api/workers")).json()
                    return {w["label"] for w in body["items"]} == FIXTURE_LABELS

                await wait_for(workers_listed, message="fixture workers")
                assert stat_mode(sock) == 0o660

            daemon.process.send_signal(signal.SIGTERM)
            assert await daemon.wait_exit() == 0, daemon.stderr
        log = daemon.stderr
        assert f"listening on unix:{sock}" in log
        assert "Traceback" not in log


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_serves_on_tcp_and_exits_0_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    # No sources at all (``sources = []`` must come before any table).
    config = write_config(
        tmp_path / "config.toml", f'sources = []\n\n[server]\nlisten = ["127.0.0.1:{port}"]\n'
    )
    async with run_daemon(["--config", str(config)], clean_env(tmp_path), tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            await wait_ready(c, daemon)
            body = (await c.get("/api/runtimes")).json()
            assert body["items"] == []
            missing = await c.get("/api/nothing-here")
            assert missing.status_code == 404
            assert missing.json()["code"]
        daemon.process.send_signal(signal.SIGINT)
        assert await daemon.wait_exit() == 0, daemon.stderr
    assert f"listening on http://127.0.0.1:{port}" in daemon.stderr


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[supervisor]\nbogus_key = 1\n", "supervisor.bogus_key"),
        ('[server]\nlisten = ["no-port-here"]\n', "server.listen[0]"),
        (
            '[[sources]]\nkind = "local"\nrescan_interval = "5 parsecs"\n',
            "sources[0].rescan_interval",
        ),
        ('[[sources]]\nkind = "local"\nruntime_id = "bad id/x"\n', "sources[0].runtime_id"),
        ("[server\nlisten = 1\n", "TOML"),
    ],
    ids=["unknown-key", "bad-listen", "bad-duration", "bad-runtime-id", "not-toml"],
)
async def test_invalid_config_exits_1_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    config = write_config(tmp_path / "config.toml", text)
    async with run_daemon(["--config", str(config)], clean_env(tmp_path), tmp_path) as daemon:
        assert await daemon.wait_exit() == 1
    assert key in daemon.stderr, daemon.stderr
    assert "Traceback" not in daemon.stderr


async def test_missing_config_file_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    async with run_daemon(["--config", str(missing)], clean_env(tmp_path), tmp_path) as daemon:
        assert await daemon.wait_exit() == 1
    assert "Traceback" not in daemon.stderr
    assert "nope.toml" in daemon.stderr  # the operator log may name the file they gave


async def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "config.toml", f'sources = []\n[server]\nlisten = ["127.0.0.1:{port}"]\n'
        )
        async with run_daemon(["--config", str(config)], clean_env(tmp_path), tmp_path) as d:
            assert await d.wait_exit() == 1
    assert (
        f"cannot start: [Errno 98] cannot listen on 127.0.0.1:{port}: Address already in use"
        in (d.stderr)
    ), d.stderr
    assert "Traceback" not in d.stderr


async def test_config_from_environment_variable(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "env.toml", f'sources = []\n[server]\nlisten = ["127.0.0.1:{port}"]\n'
    )
    env = clean_env(tmp_path, YOI_REGISTRYD_CONFIG=str(config))
    async with run_daemon([], env, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            await wait_ready(c, daemon)
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0


@pytest.fixture
def defaults_observable() -> None:
    """Skip (a sync fixture, so the reason is reported) when the defaults cannot be seen."""
    if SYSTEM_CONFIG_PATH.exists():
        pytest.skip(f"{SYSTEM_CONFIG_PATH} exists; the no-config defaults cannot be observed")
    if not port_is_free(DEFAULT_PORT):
        pytest.skip(f"port {DEFAULT_PORT} is in use on this machine")


@pytest.mark.usefixtures("defaults_observable")
async def test_no_config_serves_default_data_dir_on_default_port(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    data = copy_fixtures(tmp_path / "yoi-data")
    env = clean_env(home, YOI_DATA_DIR=str(data))
    async with run_daemon([], env, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{DEFAULT_PORT}") as c:
            try:
                await wait_ready(c, daemon)
            except AssertionError:
                if "Address already in use" in daemon.stderr:
                    pytest.skip(f"port {DEFAULT_PORT} was taken by another process meanwhile")
                raise
            runtimes: Any = (await c.get("/api/runtimes")).json()
            [local] = runtimes["items"]
            assert local["source"]["kind"] == "local_compatibility"

            async def fixture_workers() -> bool:
                body = (await c.get("/api/workers")).json()
                return {w["label"] for w in body["items"]} == FIXTURE_LABELS

            await wait_for(fixture_workers, message="the default data dir's workers")
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0, daemon.stderr
    assert f"listening on http://127.0.0.1:{DEFAULT_PORT}" in daemon.stderr
    assert "built-in defaults" in daemon.stderr
