"""systemd integration: sd_notify, the watchdog, socket activation and the unit files.

The daemon runs as a real subprocess. A unix datagram socket the test binds stands in for
the service manager's notification socket; listening sockets the test creates are passed
the way systemd passes them (descriptors from 3 on, ``LISTEN_FDS``, ``LISTEN_PID`` equal
to the daemon's pid). The units are checked with systemd's own ``systemd-analyze``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from tests.conftest import copy_fixtures, wait_for
from tests.daemon_process import (
    DAEMON_COMMAND,
    clean_env,
    free_port,
    is_set,
    notify_socket,
    parse_notification,
    port_is_free,
    port_is_listening,
    raw_get,
    run_activated,
    run_daemon,
    short_tmpdir,
    spawn,
)
from yoi_registryd.config import parse_config
from yoi_registryd.logs import setup_logging
from yoi_registryd.registry import RegistryActor
from yoi_registryd.systemd import (
    Notifier,
    listen_sockets,
    monotonic_usec,
    run_watchdog,
    watchdog_interval,
)

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"


def local_config(path: Path, data: Path, runtime_dir: Path, listen: str, extra: str = "") -> Path:
    path.write_text(
        f'[server]\nlisten = ["{listen}"]\n\n'
        f'[[sources]]\nkind = "local"\ndata_dir = "{data}"\nruntime_dir = "{runtime_dir}"\n' + extra
    )
    return path


# -- sd_notify -----------------------------------------------------------------------------


async def test_notifier_sends_one_datagram_to_a_path_socket(tmp_path: Path) -> None:
    with short_tmpdir() as short:
        async with notify_socket(short / "notify") as manager:
            notifier = Notifier(manager.address)
            assert notifier.enabled
            assert await notifier.notify("READY=1", "STATUS=all good")
            message = await manager.until(lambda m: True)
            notifier.close()
    assert message == {"READY": "1", "STATUS": "all good"}


async def test_notifier_reaches_an_abstract_socket() -> None:
    async with notify_socket() as manager:
        assert manager.address.startswith("@")
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": manager.address})
        assert await notifier.notify("WATCHDOG=1")
        assert await manager.until(lambda m: True) == {"WATCHDOG": "1"}
        notifier.close()


async def test_notifier_without_a_manager_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    assert not Notifier.from_environment({}).enabled
    assert await Notifier.from_environment({}).notify("READY=1") is False
    gone = Notifier(f"@yoi-registryd-nobody-{uuid.uuid4().hex}")
    with caplog.at_level(logging.WARNING, logger="yoi_registryd.systemd"):
        assert await gone.notify("READY=1") is False
        assert await gone.notify("STATUS=still nobody") is False
    gone.close()
    warnings = [r for r in caplog.records if r.name == "yoi_registryd.systemd"]
    assert len(warnings) == 1, "an unreachable manager is reported once, not on every call"


async def test_notify_refuses_lines_that_would_break_the_protocol() -> None:
    notifier = Notifier("@anything")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        await notifier.notify("STATUS=two\nlines")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        await notifier.notify("READY")
    notifier.close()


def test_watchdog_interval_reads_usec_and_honours_the_pid() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 2.0
    assert watchdog_interval({**mine, "WATCHDOG_PID": str(os.getpid() + 1)}) is None


def test_listen_variables_meant_for_another_process_are_ignored_and_removed() -> None:
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert listen_sockets(environ) == []
    assert environ == {}, "like sd_listen_fds(1): the variables do not leak to children"
    assert listen_sockets({}) == []


async def test_watchdog_pings_only_while_the_actor_answers() -> None:
    """A stuck actor (here: one that no longer takes messages) stops the pings."""
    actor = RegistryActor()
    answers: list[bool] = []
    pings = 0

    async def alive(within: float) -> bool:
        answers.append(await actor.ping(within))
        return answers[-1]

    async with notify_socket() as manager, trio.open_nursery() as nursery:

        async def count_pings() -> None:
            nonlocal pings
            while True:
                if parse_notification(await manager.sock.recv(65536)) == {"WATCHDOG": "1"}:
                    pings += 1

        nursery.start_soon(count_pings)
        notifier = Notifier(manager.address)
        actor_scope = await nursery.start(run_actor, actor)
        nursery.start_soon(run_watchdog, notifier, 0.2, alive)
        await wait_for(lambda: pings >= 2, message="watchdog pings")

        actor_scope.cancel()  # the actor stops taking messages
        attempts_before, pings_before = len(answers), pings
        await wait_for(lambda: len(answers) >= attempts_before + 3, message="more attempts")
        await trio.testing.wait_all_tasks_blocked()  # every datagram sent is counted
        # The attempt under way when the actor stopped may still have been answered.
        assert not any(answers[attempts_before + 1 :]), answers
        assert pings - pings_before <= 1, "no pings while the actor does not answer"

        await nursery.start(run_actor, actor)  # alive again: pings resume
        pings_stuck = pings
        await wait_for(lambda: pings > pings_stuck, message="pings after recovery")
        nursery.cancel_scope.cancel()
        notifier.close()


async def run_actor(
    actor: RegistryActor, *, task_status: trio.TaskStatus[trio.CancelScope]
) -> None:
    """Run the actor until the returned scope is cancelled."""
    with trio.CancelScope() as scope:
        task_status.started(scope)
        await actor.run()


# -- the daemon under a service manager ----------------------------------------------------


async def test_daemon_notifies_ready_status_watchdog_reloading_stopping_in_order(
    tmp_path: Path,
) -> None:
    data = copy_fixtures(tmp_path / "yoi-data")
    port = free_port()
    config = local_config(tmp_path / "config.toml", data, tmp_path / "run", f"127.0.0.1:{port}")
    async with notify_socket() as manager:
        env = clean_env(tmp_path, NOTIFY_SOCKET=manager.address, WATCHDOG_USEC="400000")
        async with (
            run_daemon(["--config", str(config)], env, tmp_path) as daemon,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):
            ready = await manager.until(is_set("READY"), daemon)
            # READY=1 means the listener is up and every source has started: no retry.
            runtimes = (await client.get("/api/runtimes")).json()
            assert [r["runtime_id"] for r in runtimes["items"]] == ["local-worker-runtime"]
            assert ready["STATUS"].startswith("runtimes: ")

            # STATUS follows the registry: once the fixtures are observed it says so.
            async def counts() -> tuple[int, int]:
                items = (await client.get("/api/runtimes")).json()["items"]
                available = sum(1 for r in items if r["registry_status"] == "available")
                return available, len((await client.get("/api/workers")).json()["items"])

            async def observed() -> bool:
                return (await counts())[1] > 0

            await wait_for(observed, deadline_s=10, message="fixture workers")
            available, workers = await counts()
            expected = f"runtimes: {available}/1 available, workers: {workers}"
            await manager.until(is_set("STATUS", expected))
            await manager.until(is_set("WATCHDOG"))

            before = monotonic_usec()
            daemon.process.send_signal(signal.SIGHUP)
            reloading = await manager.until(is_set("RELOADING"))
            assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
            await manager.until(is_set("READY"))

            daemon.process.send_signal(signal.SIGTERM)
            await manager.until(is_set("STOPPING"))
            assert await daemon.wait_exit() == 0, daemon.stderr

    log = manager.messages
    first_ready = manager.index(is_set("READY"))
    reloading_at = manager.index(is_set("RELOADING"), first_ready)
    ready_again = manager.index(is_set("READY"), reloading_at)
    stopping_at = manager.index(is_set("STOPPING"), ready_again)
    assert first_ready < reloading_at < ready_again < stopping_at
    assert any(m.get("WATCHDOG") == "1" for m in log[first_ready:reloading_at])
    assert not any("READY" in m for m in log[stopping_at + 1 :])
    assert "Traceback" not in daemon.stderr


async def test_daemon_serves_on_sockets_passed_by_socket_activation(tmp_path: Path) -> None:
    """Served instead of binding, and shared with the 'socket unit': a connection queued
    while the service is down is answered by the next start."""
    data = copy_fixtures(tmp_path / "yoi-data")
    unused_port = free_port()
    config = local_config(
        tmp_path / "config.toml", data, tmp_path / "run", f"127.0.0.1:{unused_port}"
    )
    with (
        short_tmpdir() as short,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(16)
        port = tcp.getsockname()[1]
        unix.bind(str(short / "api.sock"))
        unix.listen(16)
        passed = [(tcp, "api"), (unix, "api-unix")]

        # Connected and sent before the daemon exists: it waits in the listen queue.
        early = await trio.open_tcp_stream("127.0.0.1", port)
        async with notify_socket() as manager:
            env = clean_env(tmp_path, NOTIFY_SOCKET=manager.address)
            args = ["--config", str(config)]
            async with run_activated(passed, args, env, tmp_path) as daemon:
                await manager.until(is_set("READY"), daemon)
                status, _ = await raw_get(early, "/api/runtimes")
                assert status == 200
                transport = httpx.AsyncHTTPTransport(uds=str(short / "api.sock"))
                async with httpx.AsyncClient(transport=transport, base_url="http://d") as c:
                    body = (await c.get("/api/runtimes")).json()
                assert [r["runtime_id"] for r in body["items"]] == ["local-worker-runtime"]
                assert port_is_free(unused_port), "server.listen must not be bound"
                daemon.process.send_signal(signal.SIGTERM)
                assert await daemon.wait_exit() == 0, daemon.stderr
            log = daemon.stderr
            assert f"socket activation: serving on http://127.0.0.1:{port} (api)" in log
            assert f"socket activation: serving on unix:{short / 'api.sock'} (api-unix)" in log

            # The sockets outlive the service, and the daemon left them accepting.
            waiting = await trio.open_tcp_stream("127.0.0.1", port)
            async with run_activated(passed, args, env, tmp_path) as second:
                status, _ = await raw_get(waiting, "/api/runtimes")
                assert status == 200
                second.process.send_signal(signal.SIGTERM)
                assert await second.wait_exit() == 0, second.stderr


async def test_systemd_socket_activate_starts_the_daemon(tmp_path: Path) -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package: systemd)")
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text('sources = []\n[server]\nlisten = ["127.0.0.1:1"]\n')  # never bound
    command = [tool, "-l", f"127.0.0.1:{port}", "--fdname=api", *DAEMON_COMMAND]
    async with spawn([*command, "--config", str(config)], clean_env(tmp_path), tmp_path) as daemon:
        await wait_for(lambda: port_is_listening(port), message="systemd-socket-activate to listen")
        # The first connection makes the tool exec the daemon, with the socket as fd 3.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        status, body = await raw_get(stream, "/api/runtimes")
        assert status == 200
        assert json.loads(body)["items"] == []
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0, daemon.stderr
    assert f"socket activation: serving on http://127.0.0.1:{port} (api)" in daemon.stderr


# MemoryDenyWriteExecute= in the unit: the daemon must run without writable+executable
# memory. PR_SET_MDWE (Linux 6.3+) is the same restriction, kept across exec.
_MDWE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


async def test_daemon_runs_with_write_execute_memory_denied(tmp_path: Path) -> None:
    data = copy_fixtures(tmp_path / "yoi-data")
    port = free_port()
    config = local_config(tmp_path / "config.toml", data, tmp_path / "run", f"127.0.0.1:{port}")
    async with (
        notify_socket() as manager,
        spawn(
            [sys.executable, "-c", _MDWE, "-m", "yoi_registryd", "--config", str(config)],
            clean_env(tmp_path, NOTIFY_SOCKET=manager.address),
            tmp_path,
        ) as daemon,
    ):
        async with trio.open_nursery() as nursery:

            async def exited_early() -> None:
                code = await daemon.process.wait()
                if code == 77:
                    pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
                raise AssertionError(f"exited with {code}: {daemon.stderr}")

            nursery.start_soon(exited_early)
            await manager.until(is_set("READY"))
            nursery.cancel_scope.cancel()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/api/runtimes")).status_code == 200
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0, daemon.stderr


# -- the unit files ------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Key=value`` settings of a unit file (all sections), each key with all its values."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_service_unit_runs_hardened_and_notifies() -> None:
    s = unit_settings(UNITS / "yoi-registryd.service")
    expected = {
        "Type": "notify",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "30s",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "StateDirectory": "yoi-registryd",
        "RuntimeDirectory": "yoi-registryd",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert value in s.get(key, []), (key, s.get(key))
    assert "@system-service" in s["SystemCallFilter"]
    [exec_start] = s["ExecStart"]
    assert exec_start.endswith("--config /etc/yoi-registryd/config.toml serve")
    assert "StartLimitBurst" in s and "StartLimitIntervalSec" in s
    # Socket activation is optional: the service must not require its socket unit.
    for key in ("Requires", "BindsTo", "Sockets"):
        assert not any("yoi-registryd.socket" in v for v in s.get(key, [])), key


def test_socket_unit_listens_on_loopback_and_a_unix_socket() -> None:
    s = unit_settings(UNITS / "yoi-registryd.socket")
    assert set(s["ListenStream"]) == {"127.0.0.1:38790", "/run/yoi-registryd.sock"}
    assert s["Accept"] == ["no"]


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    return tool


def installable_units(tmp_path: Path) -> Path:
    """Copies of the units whose ExecStart names this environment's yoi-registryd:
    ``verify`` checks that the program exists."""
    program = Path(sys.executable).parent / "yoi-registryd"
    if not program.exists():
        pytest.skip(f"{program} is not installed (pip install -e .)")
    for unit in ("yoi-registryd.service", "yoi-registryd.socket"):
        text = (UNITS / unit).read_text()
        text = text.replace("/opt/yoi-registryd/bin/yoi-registryd", str(program))
        (tmp_path / unit).write_text(text)
    return tmp_path


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = systemd_analyze()
    units = installable_units(tmp_path)
    result = subprocess.run(
        [tool, "verify", "yoi-registryd.service", "yoi-registryd.socket"],
        cwd=units,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "yoi-registryd" in line  # warnings about our units, not about the host's
    ]
    assert complaints == []


def test_service_exposure_is_at_most_2(tmp_path: Path) -> None:
    tool = systemd_analyze()
    units = installable_units(tmp_path)
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--threshold=20", "yoi-registryd.service"],
        cwd=units,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for yoi-registryd\.service: (\d+\.\d+)", output)
    assert match is not None, output
    assert float(match.group(1)) <= 2.0, output
    assert result.returncode == 0, output


def test_example_config_is_valid() -> None:
    """The file docs/operations.md tells operators to start from."""
    config = parse_config((UNITS / "config.example.toml").read_bytes(), "config.example.toml")
    assert [s.runtime_id for s in config.sources] == ["local-worker-runtime"]
    assert config.server.listen == ["127.0.0.1:38790", "unix:/run/yoi-registryd/registry.sock"]


def test_log_lines_carry_journal_priorities_only_when_stderr_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    log = logging.getLogger("yoi_registryd.test")

    def lines_logged(journal_stream: str | None) -> list[str]:
        out = tmp_path / f"stderr-{uuid.uuid4().hex[:6]}"
        with out.open("w") as stderr:
            monkeypatch.setattr(sys, "stderr", stderr)
            if journal_stream is None:
                st = out.stat()
                journal_stream = f"{st.st_dev}:{st.st_ino}"
            monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
            try:
                setup_logging("debug")
                log.debug("d")
                log.info("i")
                log.warning("w")
                log.error("two\nlines")
            finally:
                root.handlers[:] = saved_handlers
                root.setLevel(saved_level)
        return out.read_text().splitlines()

    assert lines_logged(None) == [
        "<7>yoi_registryd.test: d",
        "<6>yoi_registryd.test: i",
        "<4>yoi_registryd.test: w",
        "<3>yoi_registryd.test: two",
        "<3>lines",
    ]
    # Inherited from a service, but stderr goes elsewhere: plain lines.
    plain = lines_logged("1:2")
    assert len(plain) == 5 and not any(line.startswith("<") for line in plain)
    assert re.match(r"\d{4}-\d\d-\d\d [\d:,]+ WARNING yoi_registryd\.test: w$", plain[2])
