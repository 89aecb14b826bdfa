"""Configuration reload (SIGHUP): validate first, then change only what changed.

The reload tests run the real daemon as a subprocess with a notification socket, so they
know when a reload has finished (``RELOADING=1`` ... ``READY=1``) without sleeping.
"""

from __future__ import annotations

import logging
import re
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import StartDaemon, copy_fixtures, local_source_toml, wait_for
from tests.daemon_process import (
    NotifySocket,
    clean_env,
    free_port,
    is_set,
    notify_socket,
    ready_daemon,
    run_daemon,
)
from yoi_registryd.config import parse_config
from yoi_registryd.reload import plan_sources, settings_needing_restart
from yoi_registryd.sources.base import SourceSpec


def spec(runtime_id: str, key: object) -> SourceSpec:
    def never_built() -> Any:
        raise AssertionError("planning must not build sources")

    return SourceSpec(runtime_id, "local_compatibility", None, timedelta(1), None, never_built, key)


def test_plan_starts_new_stops_removed_restarts_changed_and_leaves_the_rest() -> None:
    running = {"keep": spec("keep", "a"), "old": spec("old", "b"), "change": spec("change", "c")}
    wanted = [spec("keep", "a"), spec("change", "c2"), spec("new", "d")]
    plan = plan_sources(running, wanted)
    assert plan.stop == ("old",)
    assert [s.runtime_id for s in plan.restart] == ["change"]
    assert plan.restart[0].config == "c2"
    assert [s.runtime_id for s in plan.start] == ["new"]
    assert plan.unchanged == ("keep",)


def test_plan_compares_source_configurations_by_value(tmp_path: Path) -> None:
    text = local_source_toml(tmp_path / "data", tmp_path / "run")
    first, again = parse_config(text).sources[0], parse_config(text).sources[0]
    assert first is not again
    plan = plan_sources({first.runtime_id: spec(first.runtime_id, first)}, [spec("x", again)])
    assert plan.stop == (first.runtime_id,) and [s.runtime_id for s in plan.start] == ["x"]
    same = plan_sources({"r": spec("r", first)}, [spec("r", again)])
    assert same.unchanged == ("r",) and not same.restart
    changed = parse_config(text.replace('kind = "local"', 'kind = "local"\nlabel = "Other"'))
    assert plan_sources({"r": spec("r", first)}, [spec("r", changed.sources[0])]).restart


def test_settings_a_reload_cannot_apply_are_named() -> None:
    old = parse_config('sources = []\n[server]\nlisten = ["127.0.0.1:1"]\n')
    new = parse_config('sources = []\n[server]\nlisten = ["127.0.0.1:2"]\n[logging]\nlevel="debug"')
    assert settings_needing_restart(old, new) == ["server.listen"]
    assert settings_needing_restart(old, old) == []


async def test_reload_records_failure_then_success_and_applies_the_log_level(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    good = local_source_toml(data_dir, runtime_dir)
    d = await start_daemon(good)
    path = tmp_path / "config.toml"
    d.daemon.config_path = path
    root = logging.getLogger()
    level = root.level
    try:
        path.write_text(good + "[logging\n")
        assert await d.daemon.reload() is False
        status = d.daemon.reloads
        assert (status.attempts, status.failures, status.last_ok) == (1, 1, False)
        assert status.last_error is not None and "TOML" in status.last_error
        assert d.daemon.status_line().endswith("last reload failed (see the log)")

        path.write_text(good + '[logging]\nlevel = "debug"\n')
        assert await d.daemon.reload() is True
        assert (status.attempts, status.failures, status.last_ok) == (2, 1, True)
        assert status.last_error is None and status.last_success_at is not None
        assert root.level == logging.DEBUG
        assert "failed" not in d.daemon.status_line()
    finally:
        root.setLevel(level)


# -- SIGHUP to the real daemon -------------------------------------------------------------


def sources_toml(port: int, run: Path, sources: dict[str, tuple[Path, str]]) -> str:
    """A config serving on ``port`` with one local source per ``id: (data_dir, label)``.

    A one-hour rescan and no watch events keep an untouched source perfectly still: any
    change to its records could only come from a restart.
    """
    text = f'[server]\nlisten = ["127.0.0.1:{port}"]\n'
    for runtime_id, (data, label) in sources.items():
        text += (
            f'\n[[sources]]\nkind = "local"\nruntime_id = "{runtime_id}"\nlabel = "{label}"\n'
            f'data_dir = "{data}"\nruntime_dir = "{run}"\nrescan_interval = "1h"\n'
        )
    return text


async def sighup(daemon: Any, manager: NotifySocket) -> None:
    """Reload and wait until the daemon reports it finished (RELOADING=1, then READY=1)."""
    start = len(manager.messages)
    daemon.process.send_signal(signal.SIGHUP)
    await manager.until(is_set("READY"), daemon)
    assert manager.index(is_set("RELOADING"), start) < len(manager.messages) - 1


async def test_sighup_applies_only_what_changed(tmp_path: Path) -> None:
    data = {rid: copy_fixtures(tmp_path / rid) for rid in ("keep", "old", "change", "new")}
    run = tmp_path / "run"
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        sources_toml(
            port,
            run,
            {"keep": (data["keep"], "Keep"), "old": (data["old"], "Old")}
            | {"change": (data["change"], "Before")},
        )
    )
    async with (
        ready_daemon(config, tmp_path) as (daemon, manager),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):

        async def all_observed() -> bool:
            items = (await client.get("/api/runtimes")).json()["items"]
            return len(items) == 3 and all(r["worker_count"] > 0 for r in items)

        await wait_for(all_observed, deadline_s=10, message="three observed runtimes")
        keep_before = (await client.get("/api/runtimes/keep")).content
        keep_workers_before = (await client.get("/api/runtimes/keep/workers")).content
        change_workers = (await client.get("/api/runtimes/change/workers")).json()["items"]

        config.write_text(
            sources_toml(
                port,
                run,
                {"change": (data["change"], "After"), "keep": (data["keep"], "Keep")}
                | {"new": (data["new"], "New")},
            )
        )
        await sighup(daemon, manager)

        ids = [r["runtime_id"] for r in (await client.get("/api/runtimes")).json()["items"]]
        assert sorted(ids) == ["change", "keep", "new"]
        gone = await client.get("/api/runtimes/old")
        assert gone.status_code == 404 and gone.json()["code"] == "unknown_runtime"

        # Untouched: byte for byte the same records (a restart would rescan and stamp
        # a new last_seen_at).
        assert (await client.get("/api/runtimes/keep")).content == keep_before
        keep_workers = (await client.get("/api/runtimes/keep/workers")).content
        assert keep_workers == keep_workers_before

        # Restarted with its new configuration, its workers kept meanwhile.
        after = (await client.get("/api/runtimes/change/workers")).json()["items"]
        assert {w["worker_id"] for w in after} == {w["worker_id"] for w in change_workers}

        async def relabelled() -> bool:
            runtime = (await client.get("/api/runtimes/change")).json()
            return bool(runtime["label"] == "After")

        async def new_observed() -> bool:
            response = await client.get("/api/runtimes/new")
            return response.status_code == 200 and response.json()["worker_count"] > 0

        await wait_for(relabelled, message="the changed source's new label")
        await wait_for(new_observed, message="the new source's workers")

        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0, daemon.stderr
    log = daemon.stderr
    assert "reload: stopped source old" in log
    assert "reload: restarted source change" in log
    assert "reload: started source new" in log
    assert "1 sources started, 1 stopped, 1 restarted, 1 unchanged" in log
    assert not re.search(r"reload: \w+ source keep", log)


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ("[server\n", "not valid TOML"),
        ("[supervisor]\nbogus_key = 1\n", "supervisor.bogus_key"),
        ('[[sources]]\nkind = "local"\nruntime_id = "a b"\n', "runtime_id"),
        ('[[sources]]\nkind = "local"\nrescan_interval = "soon"\n', "rescan_interval"),
        (
            '[[clients]]\nname = "backend"\nworkspaces = ["*"]\n'
            'token_file = "/nonexistent/backend.token"\n',
            "token_file does not exist",
        ),
    ],
    ids=["not-toml", "unknown-key", "bad-id", "bad-duration", "missing-token-file"],
)
async def test_sighup_with_a_bad_config_keeps_the_running_one(
    tmp_path: Path, bad: str, named: str
) -> None:
    data = copy_fixtures(tmp_path / "yoi-data")
    port = free_port()
    config = tmp_path / "config.toml"
    good = sources_toml(port, tmp_path / "run", {"local": (data, "Local")})
    config.write_text(good)
    # As under systemd: JOURNAL_STREAM names the daemon's stderr (run_daemon's log file),
    # so log lines carry syslog priorities.
    stderr_log = tmp_path / "stderr.log"
    stderr_log.touch()
    journal = f"{stderr_log.stat().st_dev}:{stderr_log.stat().st_ino}"
    async with notify_socket() as manager:
        env = clean_env(tmp_path, NOTIFY_SOCKET=manager.address, JOURNAL_STREAM=journal)
        async with (
            run_daemon(["--config", str(config)], env, tmp_path) as daemon,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):
            await manager.until(is_set("READY"), daemon)

            async def observed() -> bool:
                return bool((await client.get("/api/runtimes/local")).json()["worker_count"])

            await wait_for(observed, message="the local runtime's workers")
            before = (await client.get("/api/runtimes/local")).content

            config.write_text(good + bad)
            await sighup(daemon, manager)
            assert manager.messages[-1]["STATUS"].endswith("last reload failed (see the log)")
            assert (await client.get("/api/runtimes/local")).content == before

            config.write_text(good)  # fixed: the next reload succeeds and says so
            await sighup(daemon, manager)
            assert "failed" not in manager.messages[-1]["STATUS"]
            assert (await client.get("/api/runtimes/local")).content == before

            daemon.process.send_signal(signal.SIGTERM)
            assert await daemon.wait_exit() == 0, daemon.stderr
    lines = daemon.stderr.splitlines()
    rejected = [line for line in lines if "reload rejected" in line]
    assert rejected, daemon.stderr
    assert all(line.startswith("<3>") for line in rejected)  # journal priority: error
    assert any(named in line for line in rejected), rejected
    assert any(line.startswith("<6>") and "received SIGHUP" in line for line in lines)
    assert "Traceback" not in daemon.stderr
