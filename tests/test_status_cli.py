"""``yoi-registryd status`` as a real subprocess against a running daemon (TCP and unix)."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import trio

from tests.conftest import RunningDaemon, StartDaemon, listen_socket, local_source_toml, wait_for
from tests.scripted_source import Script
from tests.unwell_daemon import OPERATOR_TOKEN, clients_toml, unwell_daemon
from yoi_registryd import cli
from yoi_registryd.config import parse_config
from yoi_registryd.daemon import Daemon, open_listener
from yoi_registryd.status_cli import (
    EXIT_NOT_READY,
    EXIT_READY,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    TOKEN_ENV,
)


async def run_status(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    result = await trio.run_process(
        [sys.executable, "-m", "yoi_registryd", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**environ, **(env or {})},
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def config_file(tmp_path: Path, listen: str, body: str = "sources = []\n") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"{body}\n[server]\nlisten = [{listen!r}]\n".replace("'", '"'))
    return path


def port_of(d: RunningDaemon) -> int:
    return int(d.base_url.rsplit(":", 1)[1])


async def test_status_of_a_ready_daemon(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    source = local_source_toml(data_dir, runtime_dir)
    d = await start_daemon(source)
    workers = await d.listed_workers()
    # Found through the config's first listen address; a wildcard is asked on loopback.
    config = config_file(tmp_path, f"0.0.0.0:{port_of(d)}", source)
    code, out, err = await run_status("--config", str(config), "status", "--workers")
    assert code == EXIT_READY, (out, err)
    lines = out.splitlines()
    assert lines[0].startswith(f"yoi-registryd at 127.0.0.1:{port_of(d)}: ready (revision ")
    header = next(line for line in lines if line.startswith("RUNTIME  "))
    assert header.split()[:4] == ["RUNTIME", "KIND", "STATUS", "TASK"]
    runtime_row = next(line for line in lines if line.startswith("local-worker-runtime "))
    by_state = Counter(w["registry_state"] for w in workers)
    assert runtime_row.split()[1:5] == [
        "local_compatibility",
        "available",
        "running",
        str(len(workers)),
    ]
    for state, count in by_state.items():
        assert f"{state}={count}" in runtime_row
    # --workers lists every worker with its state (the registry's word: registry_state).
    for worker in workers:
        row = next(line for line in lines if f" {worker['worker_id']} " in line)
        assert worker["registry_state"] in row.split()
    assert str(data_dir) not in out


async def test_status_exits_1_when_not_ready(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    d = await start_daemon("sources = []\n")
    await d.daemon.supervisor.start(nursery, Script("pending").spec(stale_after=60))
    await wait_for(lambda: "pending" in d.daemon.actor.snapshot.runtimes)
    # Added after start-up, this source is waited for as if known at start-up:
    d.daemon.lifecycle.ready_since = None
    code, out, _ = await run_status("status", "--address", f"127.0.0.1:{port_of(d)}")
    assert code == EXIT_NOT_READY, out
    assert ": NOT READY (revision " in out.splitlines()[0]
    assert "[-]source/pending failed: no first observation yet" in out
    row = next(line for line in out.splitlines() if line.startswith("pending "))
    assert row.split()[1:4] == ["embedded_worker_runtime", "unknown", "running"]


async def test_status_exits_2_when_nothing_answers(tmp_path: Path) -> None:
    sock = listen_socket()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    config = config_file(tmp_path, f"127.0.0.1:{port}")
    code, out, err = await run_status("--config", str(config), "status", "--timeout", "2")
    assert code == EXIT_UNREACHABLE
    assert out == ""
    assert f"cannot reach 127.0.0.1:{port}" in err

    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nlisten = 5\n")
    code, _, err = await run_status("--config", str(bad), "status")
    assert code == EXIT_USAGE
    assert "server.listen" in err


async def test_status_over_a_unix_socket(
    nursery: trio.Nursery, data_dir: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    sock_path = tmp_path / "registry.sock"
    body = local_source_toml(data_dir, runtime_dir)
    config = config_file(tmp_path, f"unix:{sock_path}", body)
    daemon = Daemon(parse_config(config.read_text()))
    await nursery.start(daemon.run, [open_listener(f"unix:{sock_path}")])
    try:

        async def ready() -> bool:
            code, _, _ = await run_status("--config", str(config), "status")
            return code == EXIT_READY

        await wait_for(ready, deadline_s=15, interval=0.2)
        code, out, _ = await run_status("--config", str(config), "status")
        assert code == EXIT_READY
        assert out.startswith(f"yoi-registryd at unix:{sock_path}: ready")
        assert "local-worker-runtime" in out
    finally:
        daemon.shutdown.set()


@pytest.mark.parametrize("tokens", [False, True], ids=["open", "tokens"])
async def test_status_explains_every_unhealthy_runtime(
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    data_dir: Path,
    runtime_dir: Path,
    tmp_path: Path,
    tokens: bool,
) -> None:
    d = await unwell_daemon(start_daemon, nursery, data_dir, runtime_dir, tmp_path, tokens)
    token_file = tmp_path / "operator.token"
    token_file.write_text(OPERATOR_TOKEN + "\n")
    args = ["status", "--address", d.base_url, "--workers"]
    if tokens:
        args += ["--token-file", str(token_file)]
    code, out, err = await run_status(*args)
    # The failing source never observed and is within its start-up grace: not ready.
    assert code == EXIT_NOT_READY, (out, err)
    assert "[-]source/unreachable-runtime failed: no first observation yet" in out
    problems = out[out.index("\nPROBLEMS\n") :]
    assert (
        "no-data: degraded (task running)\n  warning local_pod_registry_unavailable: " in problems
    )
    assert "unreachable-runtime: unavailable (task backoff)\n" in problems
    assert "last error runtime_unreachable: the runtime did not answer" in problems
    assert "local-worker-runtime:" not in problems  # available: not a problem
    # Diagnostics by code, the malformed metadata file's among them, and each worker's codes.
    table = out[out.index("\nDIAGNOSTIC ") :]
    row = next(line for line in table.splitlines() if line.startswith("local_pod_metadata_invalid"))
    assert row.split()[1:4] == ["warning", "1", "local-worker-runtime"]
    assert "WORKER" in out and "DIAGNOSTICS" in out
    for secret in (str(data_dir), str(runtime_dir), "metadata.json", str(tmp_path)):
        assert secret not in out, secret

    json_args = [*args, "--json"]
    code, out, err = await run_status(*json_args)
    assert code == EXIT_NOT_READY, err
    report = json.loads(out)
    assert report["ready"] is False
    assert report["readiness"][0].startswith("[-]source/unreachable-runtime failed")
    assert {p["runtime_id"] for p in report["problems"]} == {"no-data", "unreachable-runtime"}
    codes = {d["code"] for d in report["diagnostics"]}
    assert {"local_pod_registry_unavailable", "local_pod_metadata_invalid"} <= codes
    assert {w["runtime_id"] for w in report["workers"]} == {
        "local-worker-runtime",
        "scripted-runtime",
    }


async def test_status_with_tokens_on(
    start_daemon: StartDaemon,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without a token the daemon refuses (exit 3, not "unreachable"), and status says how to
    give one; a token from a file, a named variable or $YOI_REGISTRYD_TOKEN works. (The
    command runs in a thread of this process: seven subprocesses would be slow.)"""
    d = await start_daemon("sources = []\n" + clients_toml())
    monkeypatch.delenv(TOKEN_ENV, raising=False)

    async def status(*args: str) -> tuple[int, str, str]:
        code = await trio.to_thread.run_sync(cli.main, ["status", "--address", d.base_url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = await status()
    assert (code, out) == (EXIT_REFUSED, "")
    assert "401" in err and "--token-file" in err

    monkeypatch.setenv(TOKEN_ENV, "not-a-known-token")
    code, _, err = await status()
    assert code == EXIT_REFUSED
    assert "not one the daemon knows" in err
    assert "not-a-known-token" not in err

    monkeypatch.setenv(TOKEN_ENV, OPERATOR_TOKEN)
    code, out, err = await status()
    assert code == EXIT_READY, err
    monkeypatch.delenv(TOKEN_ENV)

    token_file = tmp_path / "token"
    token_file.write_text(OPERATOR_TOKEN + "\n")
    code, out, err = await status("--token-file", str(token_file))
    assert code == EXIT_READY, err
    assert OPERATOR_TOKEN not in out + err
    monkeypatch.setenv("MY_TOKEN", OPERATOR_TOKEN)
    code, _, err = await status("--token-env", "MY_TOKEN")
    assert code == EXIT_READY, err

    # Bad local input is its own exit code, naming what is wrong.
    code, _, err = await status("--token-file", str(tmp_path / "absent"))
    assert code == EXIT_USAGE
    assert "absent" in err
    code, _, err = await status("--token-env", "UNSET_VARIABLE_FOR_TEST")
    assert code == EXIT_USAGE
    assert "UNSET_VARIABLE_FOR_TEST" in err
