"""``[[discovery]]`` with ``kind = "file"``: a real file in a temp dir, watched; real fake
runtimes over loopback; the daemon's API followed over HTTP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from tests.conftest import StartDaemon, wait_for
from tests.daemon_process import free_port
from tests.discovery_support import (
    discovery_status,
    discovery_toml,
    follows,
    listed_runtimes,
    serve_runtimes,
)
from yoi_registryd.config import ConfigError, parse_config


def write_atomically(path: Path, text: str) -> None:
    """As consul-template or a ConfigMap update does: a new file renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def file_toml(path: Path, key_path: Path) -> str:
    return discovery_toml("file", "static", f'path = "{path}"', key_path)


async def test_runtimes_in_a_watched_file_are_added_changed_and_removed(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    key_path, server, (_, b) = await serve_runtimes(nursery, tmp_path, "rt-a", "rt-b")
    listing = tmp_path / "runtimes.json"
    record_a = {"runtime_id": "rt-a", "base_url": server.url("/rt-a"), "label": "A"}
    record_b = {"runtime_id": "rt-b", "base_url": server.url("/rt-b"), "label": "B"}
    write_atomically(listing, json.dumps([record_a]))
    d = await start_daemon(file_toml(listing, key_path))
    await follows(d, {"rt-a": "A"})

    write_atomically(listing, json.dumps({"runtimes": [record_a, record_b]}))
    await follows(d, {"rt-a": "A", "rt-b": "B"})
    polls_of_b = b.count("runtime") + b.count("workers")

    write_atomically(listing, json.dumps([{**record_a, "label": "A2"}, record_b]))
    await follows(d, {"rt-a": "A2", "rt-b": "B"})
    # rt-b was not touched: its source kept running (the path of a reload).
    sources = (await d.client.get("/api/sources")).json()
    by_id = {s["runtime_id"]: s for s in sources["items"]}
    assert by_id["rt-b"]["observations"] >= 1 and by_id["rt-b"]["restarts"] == 0
    assert b.count("runtime") + b.count("workers") >= polls_of_b

    write_atomically(listing, json.dumps([record_b]))
    await follows(d, {"rt-b": "B"})
    status = await discovery_status(d)
    assert status["name"] == "static" and status["kind"] == "file"
    assert status["runtime_count"] == 1 and status["stale"] is False
    assert status["last_error"] is None and status["refused"] == []
    metrics = (await d.client.get("/metrics")).text
    assert 'yoi_registryd_discovery_runtimes{discovery="static",kind="file"} 1.0' in metrics


async def test_a_garbage_file_keeps_the_last_good_set_with_a_typed_refusal(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    key_path, server, _ = await serve_runtimes(nursery, tmp_path, "rt-a")
    listing = tmp_path / "runtimes.toml"
    good = f'[[runtimes]]\nruntime_id = "rt-a"\nbase_url = "{server.url("/rt-a")}"\nlabel = "A"\n'
    write_atomically(listing, good)
    d = await start_daemon(file_toml(listing, key_path))
    await follows(d, {"rt-a": "A"})

    write_atomically(listing, "[[runtimes]\nthis is not toml")

    async def refused() -> bool:
        error = (await discovery_status(d))["last_error"]
        return error is not None and error["code"] == "discovery_file_invalid"

    await wait_for(refused, deadline_s=10, message="the garbage file refused")
    assert set(await listed_runtimes(d)) == {"rt-a"}
    metrics = (await d.client.get("/metrics")).text
    assert 'yoi_registryd_discovery_refresh_failures_total{discovery="static",kind="file"}' in (
        metrics
    )
    assert 'yoi_registryd_discovery_runtimes{discovery="static",kind="file"} 1.0' in metrics

    listing.unlink()

    async def missing() -> bool:
        error = (await discovery_status(d))["last_error"]
        return error is not None and error["code"] == "discovery_file_missing"

    await wait_for(missing, deadline_s=10, message="the missing file refused")
    assert set(await listed_runtimes(d)) == {"rt-a"}

    # Bad records are refused one by one, with a typed reason; the good one stays.
    other_workspace = "0192f0e8-4d84-7d6e-a000-00000000beef"
    write_atomically(
        listing,
        good
        + '[[runtimes]]\nruntime_id = "bad id!"\nbase_url = "http://127.0.0.1:1"\n'
        + '[[runtimes]]\nruntime_id = "rt-x"\nbase_url = "ftp://nowhere"\n'
        + '[[runtimes]]\nruntime_id = "rt-w"\nbase_url = "http://127.0.0.1:1"\n'
        + f'workspace_id = "{other_workspace}"\n'
        + '[[runtimes]]\nbase_url = "http://127.0.0.1:1"\n',
    )

    async def refusals() -> bool:
        refused: int = (await discovery_status(d))["refused_count"]
        return refused == 4

    await wait_for(refusals, deadline_s=10, message="four refusals")
    status = await discovery_status(d)
    codes = {(r["record"], r["code"]) for r in status["refused"]}
    assert codes == {
        ("runtimes[1]", "invalid_runtime_id"),
        ("rt-x", "invalid_description"),
        ("rt-w", "workspace_mismatch"),
        ("runtimes[4]", "invalid_record"),
    }
    assert status["last_error"] is None and status["runtime_count"] == 1
    assert "nowhere" not in json.dumps(status)  # a refusal never repeats a URL
    assert set(await listed_runtimes(d)) == {"rt-a"}


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('path = "relative.json"', "discovery[0].path: must be an absolute path"),
        (
            'path = "/x.json"\nauth = "capability"',
            'discovery[0].server_id: required with auth = "capability"',
        ),
        ('path = "/x.json"\ntoken_file = "t"', "discovery[0].token_file: must be an absolute"),
        ('path = "/x.json"\nname = "a b"', "discovery[0].name: 'a b' is not a valid name"),
    ],
)
def test_discovery_entries_are_validated_like_sources(extra: str, problem: str) -> None:
    name = "" if "name =" in extra else 'name = "n"\n'
    text = f'sources = []\n[[discovery]]\nkind = "file"\n{name}{extra}\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    ("interval", "stale", "expire", "backoff"),
    [("2s", 30, 600, 30), ("20s", 60, 600, 30), ("10m", 1800, 12000, 600)],
)
def test_a_long_poll_interval_brings_the_bounds_that_must_exceed_it(
    interval: str, stale: float, expire: float, backoff: float
) -> None:
    """An entry polling its runtimes every 10 minutes (10,000 of them) is valid: their
    stale, expiry and backoff bounds follow the interval; short intervals keep the remote
    defaults."""
    text = f'''sources = []
[[discovery]]
kind = "file"
name = "n"
path = "/x.json"
poll_interval = "{interval}"
'''
    (entry,) = parse_config(text).discovery
    source = entry.remote_template("rt-a", "http://127.0.0.1:1", None, ())
    assert source.validate("record") == []
    got = (source.stale_after, source.expire_after, source.backoff_max)
    assert tuple(d.total_seconds() for d in got) == (stale, expire, backoff)


async def test_a_runtime_found_once_ready_never_makes_the_daemon_unready(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Readiness is about the daemon: a runtime discovered later that cannot be reached is
    listed (not available) while ``/readyz`` stays 200, instead of waiting its grace."""
    key_path, server, _ = await serve_runtimes(nursery, tmp_path, "rt-a")
    listing = tmp_path / "runtimes.json"
    record_a = {"runtime_id": "rt-a", "base_url": server.url("/rt-a"), "label": "A"}
    write_atomically(listing, json.dumps([record_a]))
    d = await start_daemon(file_toml(listing, key_path))
    await follows(d, {"rt-a": "A"})

    async def ready() -> bool:
        return (await d.client.get("/readyz")).status_code == 200

    await wait_for(ready, message="ready")
    nowhere = {"runtime_id": "rt-x", "base_url": f"http://127.0.0.1:{free_port()}/rt-x"}
    write_atomically(listing, json.dumps([record_a, nowhere]))

    async def tried_and_failed() -> bool:
        sources = (await d.client.get("/api/sources")).json()["items"]
        return any(s["runtime_id"] == "rt-x" and s["last_error"] for s in sources)

    await wait_for(tried_and_failed, message="rt-x tried and failed")
    probe = await d.client.get("/readyz", params={"verbose": ""})
    assert probe.status_code == 200, probe.text
    assert "[+]source/rt-x ok" in probe.text
    assert (await listed_runtimes(d))["rt-x"]["registry_status"] != "available"
