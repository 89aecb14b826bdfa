"""``[[discovery]]`` with ``kind = "dns_srv"`` against a real ``dnsmasq`` (Debian package)
started by the test on a loopback port, serving SRV and TXT records with a 1 s TTL; fake
runtimes over loopback; the daemon's API followed over HTTP.

dnsmasq rereads its ``--srv-host``/``--txt-record`` options only when restarted, so a record
change is a restart with the new records (on the same port)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.resolver
import pytest
import trio

from tests.conftest import StartDaemon, wait_for
from tests.daemon_process import free_port
from tests.discovery_support import discovery_status, discovery_toml, follows, serve_runtimes
from yoi_registryd.config import ConfigError, parse_config

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
pytestmark = pytest.mark.skipif(
    not Path(DNSMASQ).exists(), reason="dnsmasq is not installed (Debian package dnsmasq)"
)

SRV_NAME = "_yoi-runtime._tcp.example.test"
TTL_S = 1
REFRESH_S = 2


class Dnsmasq:
    """One dnsmasq on a loopback port, authoritative for ``example.test`` (a name it does
    not hold is NXDOMAIN), answering every record with a TTL of ``ttl`` seconds."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.ttl = TTL_S
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, srv: dict[str, int], txt: dict[str, list[str]]) -> None:
        """Serve one SRV record of ``SRV_NAME`` per ``{target: port}`` and the TXT strings
        of each target in ``txt``."""
        self.directory.mkdir(exist_ok=True)
        records = [f"--srv-host={SRV_NAME},{target},{port},0,10" for target, port in srv.items()]
        records += [f"--txt-record={t},{','.join(strings)}" for t, strings in txt.items()]
        self.process = subprocess.Popen(
            [
                DNSMASQ,
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                f"--port={self.port}",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                f"--pid-file={self.directory / 'dnsmasq.pid'}",
                "--local=/example.test/",
                f"--local-ttl={self.ttl}",
                *records,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    async def restart(self, srv: dict[str, int], txt: dict[str, list[str]]) -> None:
        self.stop()
        self.start(srv, txt)
        await self.answering()

    async def answering(self) -> None:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], self.port, 0.5

        async def answers() -> bool:
            try:
                await resolver.resolve("example.test", "SOA", raise_on_no_answer=False)
            except dns.resolver.NXDOMAIN:
                return True  # an answer: it holds no record under example.test
            except dns.exception.DNSException:
                return False
            return True

        await wait_for(answers, deadline_s=10, interval=0.02, message="dnsmasq answering")


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path / "dnsmasq")
    yield server
    server.stop()


def dns_srv_toml(port: int, key_path: Path, refresh_s: int = REFRESH_S) -> str:
    settings = f"""
srv_name = "{SRV_NAME}"
nameservers = ["127.0.0.1"]
nameserver_port = {port}
refresh_interval = "{refresh_s}s"
timeout = "1s"
runtime_id_template = "{{host}}"
base_url_template = "http://127.0.0.1:{{port}}/{{host}}"
label_template = "{{txt.label}}"
"""
    return discovery_toml("dns_srv", "dns", settings, key_path)


async def test_srv_records_are_followed_within_their_ttl_plus_the_refresh_interval(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path, dnsmasq: Dnsmasq
) -> None:
    key_path, server, (_, b) = await serve_runtimes(nursery, tmp_path, "rt-a", "rt-b")
    a_host, b_host, c_host = "rt-a.example.test", "rt-b.example.test", "rt-c.example.test"
    dnsmasq.start({a_host: server.port}, {a_host: ["label=A"]})
    await dnsmasq.answering()
    d = await start_daemon(dns_srv_toml(dnsmasq.port, key_path))
    await follows(d, {"rt-a": "A"})
    within = TTL_S + REFRESH_S  # the promise: a change is followed within TTL + refresh

    # Added; then changed (its TXT label); each followed within TTL + refresh.
    both = {a_host: server.port, b_host: server.port}
    await dnsmasq.restart(both, {a_host: ["label=A"], b_host: ["label=B", "other=x"]})
    took = await follows(d, {"rt-a": "A", "rt-b": "B"})
    print(f"followed an added SRV record in {took:.3f}s")
    assert took < within, f"an added record followed after {took:.2f}s"
    polls_of_b = b.count("runtime") + b.count("workers")
    await dnsmasq.restart(both, {a_host: ["label=A2"], b_host: ["label=B"]})
    took = await follows(d, {"rt-a": "A2", "rt-b": "B"})
    print(f"followed a changed TXT record in {took:.3f}s")
    assert took < within, f"a changed record followed after {took:.2f}s"
    sources = {s["runtime_id"]: s for s in (await d.client.get("/api/sources")).json()["items"]}
    assert sources["rt-b"]["restarts"] == 0  # an unchanged runtime is not touched
    assert b.count("runtime") + b.count("workers") >= polls_of_b

    # Removed, while a record the templates cannot use (no TXT label) is refused, with why.
    await dnsmasq.restart({b_host: server.port, c_host: server.port}, {b_host: ["label=B"]})
    took = await follows(d, {"rt-b": "B"})
    print(f"followed a removed SRV record in {took:.3f}s")
    assert took < within, f"a removed record followed after {took:.2f}s"
    status = await discovery_status(d)
    assert status["kind"] == "dns_srv" and status["runtime_count"] == 1
    assert [(r["record"], r["code"]) for r in status["refused"]] == [("srv[1]", "template_failed")]
    assert status["last_error"] is None
    metrics = (await d.client.get("/metrics")).text
    assert 'yoi_registryd_discovery_refused_records{discovery="dns",kind="dns_srv"} 1.0' in metrics
    assert 'yoi_registryd_discovery_runtimes{discovery="dns",kind="dns_srv"} 1.0' in metrics

    # The DNS server gone: a failed refresh, the last good set kept.
    dnsmasq.stop()

    async def failed() -> bool:
        error = (await discovery_status(d))["last_error"]
        return error is not None and error["code"] in (
            "discovery_dns_unavailable",
            "discovery_dns_timeout",
        )

    await wait_for(failed, deadline_s=10, message="the DNS failure seen")
    assert (await follows(d, {"rt-b": "B"})) < 1
    assert "127.0.0.1" not in json.dumps(await discovery_status(d))

    # Back with no record of the name (NXDOMAIN, authoritative): no runtimes.
    await dnsmasq.restart({}, {})
    await follows(d, {})
    status = await discovery_status(d)
    assert status["runtime_count"] == 0 and status["last_error"] is None


async def test_a_ttl_longer_than_the_refresh_interval_waits_only_the_interval(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path, dnsmasq: Dnsmasq
) -> None:
    """Re-resolved at min(TTL, refresh_interval): a one-hour TTL does not delay a change
    past a 1 s ``refresh_interval`` (the bound leaves slack for a loaded machine)."""
    key_path, server, _ = await serve_runtimes(nursery, tmp_path, "rt-a", "rt-b")
    a_host, b_host = "rt-a.example.test", "rt-b.example.test"
    dnsmasq.ttl = 3600
    dnsmasq.start({a_host: server.port}, {a_host: ["label=A"]})
    await dnsmasq.answering()
    d = await start_daemon(dns_srv_toml(dnsmasq.port, key_path, refresh_s=1))
    await follows(d, {"rt-a": "A"})
    both = {a_host: server.port, b_host: server.port}
    await dnsmasq.restart(both, {a_host: ["label=A"], b_host: ["label=B"]})
    took = await follows(d, {"rt-a": "A", "rt-b": "B"})
    print(f"followed an added SRV record (TTL 3600 s, refresh 1 s) in {took:.3f}s")
    assert took < 1 + 2, f"followed after {took:.2f}s"


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('srv_name = ""', "discovery[0].srv_name: not a DNS name"),
        (
            'srv_name = "_x._tcp.example"\nnameservers = ["ns.example"]',
            "discovery[0].nameservers[0]: expected an IP address",
        ),
        (
            'srv_name = "_x._tcp.example"\nnameserver_port = 0',
            "discovery[0].nameserver_port: expected 1 to 65535",
        ),
        (
            'srv_name = "_x._tcp.example"\nruntime_id_template = "{target.__class__}"',
            "discovery[0].runtime_id_template: unknown field {target.__class__}",
        ),
        (
            'srv_name = "_x._tcp.example"\nlabel_template = "{port!r}"',
            "discovery[0].label_template: {port} takes no format spec or conversion",
        ),
        (
            'srv_name = "_x._tcp.example"\nrefresh_interval = "0s"',
            "discovery[0].refresh_interval: must be greater than zero",
        ),
    ],
)
def test_dns_srv_entries_are_validated(extra: str, problem: str) -> None:
    text = f'sources = []\n[[discovery]]\nkind = "dns_srv"\nname = "n"\n{extra}\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems
