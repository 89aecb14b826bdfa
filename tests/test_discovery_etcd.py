"""``[[discovery]]`` with ``kind = "etcd"`` against a real etcd (Debian ``etcd-server``)
started by the test on loopback ports in a temp dir; fake runtimes over loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.conftest import StartDaemon, wait_for
from tests.discovery_support import discovery_toml, follows, listed_runtimes, serve_runtimes
from tests.etcd_member import ETCD, EtcdMember
from yoi_registryd.discovery.etcd import prefix_range_end

pytestmark = pytest.mark.skipif(
    not Path(ETCD).exists(), reason="etcd is not installed (Debian package etcd-server)"
)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdMember]:
    server = EtcdMember(tmp_path / "etcd")
    server.start()
    yield server
    server.kill()


def etcd_toml(url: str, key_path: Path) -> str:
    settings = f'endpoints = ["{url}"]\nprefix = "/yoi/runtimes/"'
    return discovery_toml("etcd", "etcd", settings, key_path)


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"/yoi/") == b"/yoi0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff") == b"\0"


async def test_runtimes_in_etcd_follow_puts_deletes_leases_and_an_etcd_restart(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path, etcd: EtcdMember
) -> None:
    key_path, server, _ = await serve_runtimes(nursery, tmp_path, "rt-a", "rt-b")
    await etcd.ready()
    record_a = {"runtime_id": "rt-a", "base_url": server.url("/rt-a"), "label": "A"}
    await etcd.put("/yoi/runtimes/a", record_a)
    d = await start_daemon(etcd_toml(etcd.url, key_path))
    await follows(d, {"rt-a": "A"}, 10, available=False)

    # Added under a 5 s lease: listed within 1 s; gone within TTL + 1 s of the revoke.
    lease = await etcd.grant(5)
    record_b = {"runtime_id": "rt-b", "base_url": server.url("/rt-b"), "label": "B"}
    await etcd.put("/yoi/runtimes/b", record_b, lease)
    took = await follows(d, {"rt-a": "A", "rt-b": "B"}, 5, available=False)
    assert took < 1.0, f"listed after {took:.3f}s"
    await etcd.call("/v3/kv/lease/revoke", {"ID": lease})
    took = await follows(d, {"rt-a": "A"}, 10, available=False)
    assert took < 6.0, f"gone after {took:.3f}s"

    # Changed, then etcd killed mid-watch: the last good set stays; restarted, it recovers.
    await etcd.put("/yoi/runtimes/a", {**record_a, "label": "A2"})
    await follows(d, {"rt-a": "A2"}, 5, available=False)
    etcd.kill()

    async def failed() -> bool:
        (entry,) = (await d.client.get("/api/sources")).json()["discovery"]
        error = entry["last_error"]
        return error is not None and error["code"] == "discovery_etcd_unavailable"

    await wait_for(failed, deadline_s=10, message="the watch failure seen")
    assert set(await listed_runtimes(d)) == {"rt-a"}
    etcd.start()
    await etcd.ready()
    await etcd.put("/yoi/runtimes/b", record_b)
    await follows(d, {"rt-a": "A2", "rt-b": "B"}, 10, available=False)
    await etcd.delete("/yoi/runtimes/a")
    await follows(d, {"rt-b": "B"}, 5, available=False)
