"""HTTP/2 against the real daemon process, with the ``h2`` library as client.

Off by default: a prior-knowledge preface is refused with GOAWAY ``HTTP_1_1_REQUIRED`` and an
``Upgrade: h2c`` request is answered over HTTP/1.1. On (``server.http2``), the attacks of
issue 13 are replayed: streams with a receive window of 0 then a disconnect, many streams of
``/openapi.json`` left unread, an idle connection, a header block dripped one CONTINUATION
frame at a time, SIGTERM (and a second one) while all that goes on. Throughout, a
well-behaved HTTP/1.1 client and a well-behaved HTTP/2 client keep getting quick answers,
and the daemon's peak RSS (``VmHWM``) stays within :data:`RSS_GROWTH_BOUND_MB` of what it
was before the attack.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h2.errors
import httpx
import trio

from tests.conftest import wait_for
from tests.daemon_process import (
    DaemonProcess,
    clean_env,
    free_port,
    logged_seconds,
    run_daemon,
    wait_ready,
)
from tests.h2_client import H2Client

MAX_CONNECTIONS = 40
MAX_STREAMS = 16
STALL_S = 1.0
KEEP_ALIVE_S = 1.5
GRACE_S = 2.0
RSS_GROWTH_BOUND_MB = 40
"""Peak RSS growth allowed under the stream attacks (measured: see docs/reliability.md)."""
BYSTANDER_SLOWEST_S = 1.0


def memory_mb(pid: int, field_name: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field_name} for {pid}")


@dataclass
class Daemon:
    process: DaemonProcess
    port: int
    client: httpx.AsyncClient

    def peak_rss_mb(self) -> float:
        return memory_mb(self.process.process.pid, "VmHWM")


@asynccontextmanager
async def daemon(tmp_path: Path, **server: object) -> AsyncIterator[Daemon]:
    port = free_port()
    values: dict[str, object] = {
        "listen": [f"127.0.0.1:{port}"],
        "max_connections": MAX_CONNECTIONS,
        "keep_alive_timeout": f"{KEEP_ALIVE_S}s",
        "shutdown_grace": f"{GRACE_S}s",
        "http2_max_streams": MAX_STREAMS,
        "http2_stall_timeout": f"{STALL_S}s",
        **server,
    }
    lines = [
        f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}".replace("'", '"')
        for k, v in values.items()
    ]
    config = tmp_path / "config.toml"
    config.write_text(
        "sources = []\n[server]\n"
        + "\n".join(lines)
        + f'\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n'
    )
    env = clean_env(tmp_path)
    async with (
        run_daemon(["--config", str(config)], env, tmp_path) as process,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        await wait_ready(client, process)
        yield Daemon(process, port, client)


@dataclass
class Bystanders:
    """A well-behaved HTTP/1.1 client and (when HTTP/2 is on) a well-behaved HTTP/2 one,
    each asking for ``/livez`` over its own connection, opened before any attack."""

    d: Daemon
    h2: H2Client | None
    answers: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def _ask(self) -> None:
        started = trio.current_time()
        try:
            status = (await self.d.client.get("/livez")).status_code
            if status != 200:
                self.failures.append(f"HTTP/1.1 status {status}")
            if self.h2 is not None:
                answer = await self.h2.get("/livez")
                if answer.status != 200:
                    self.failures.append(f"HTTP/2 answer {answer}")
        except Exception as exc:  # any failure is the test's finding
            self.failures.append(repr(exc))
        self.latencies.append(trio.current_time() - started)
        self.answers += 1

    async def run(self) -> None:
        while True:
            await self._ask()
            await trio.sleep(0.05)  # the bystander's pace, not synchronisation

    def check(self) -> None:
        assert not self.failures, self.failures[:5]
        assert max(self.latencies) < BYSTANDER_SLOWEST_S, max(self.latencies)


@asynccontextmanager
async def bystanders(d: Daemon, *, http2: bool = True) -> AsyncIterator[Bystanders]:
    h2_client = await H2Client.connect(d.port) if http2 else None
    b = Bystanders(d, h2_client)
    await b._ask()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run)
        yield b
        after = b.answers
        await wait_for(lambda: b.answers >= after + 2, deadline_s=10, message="answers after")
        nursery.cancel_scope.cancel()
    if h2_client is not None:
        await h2_client.aclose()
    b.check()


# -- off by default ------------------------------------------------------------------------


H2C_UPGRADE = {
    "Connection": "Upgrade, HTTP2-Settings",
    "Upgrade": "h2c",
    "HTTP2-Settings": "AAMAAABkAAQAAP__",
}
"""An HTTP/1.1 request's headers asking to switch to HTTP/2 (h2c), with empty settings."""


async def test_http2_is_refused_unless_configured(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, bystanders(d, http2=False):
        # Prior knowledge: SETTINGS, then GOAWAY HTTP_1_1_REQUIRED; the stream is not served.
        client = await H2Client.connect(d.port)
        stream_id = client.request("/livez")
        await client.flush()
        with trio.fail_after(5):
            while await client.receive_once():
                pass
        assert client.terminated is not None
        assert client.terminated.error_code == h2.errors.ErrorCodes.HTTP_1_1_REQUIRED
        assert client.answers[stream_id].status is None
        await client.aclose()

        # Upgrade: h2c is ignored: the answer is HTTP/1.1, never 101 Switching Protocols.
        response = await d.client.get("/livez", headers=H2C_UPGRADE)
        assert response.status_code == 200
        assert response.http_version == "HTTP/1.1"
        assert "upgrade" not in response.headers


# -- on, bounded ---------------------------------------------------------------------------


async def test_h2c_upgrade_and_prior_knowledge_are_served_when_configured(tmp_path: Path) -> None:
    async with daemon(tmp_path, http2=True) as d:
        client = await H2Client.connect(d.port)
        answer = await client.get("/openapi.json")
        assert answer.status == 200 and answer.ended
        assert len(answer.body) > 100_000  # larger than a window: flow control was used
        await client.aclose()
        response = await d.client.get("/livez", headers=H2C_UPGRADE)
        # httpx does not speak h2c: the server's 101 is what it sees.
        assert response.status_code == 101


async def stalled_streams(port: int, streams: int) -> H2Client:
    """A connection whose ``streams`` requests for /openapi.json are answered into a
    receive window of 0: the server holds each response until the peer reads."""
    client = await H2Client.connect(port, window=0)
    ids = [client.request("/openapi.json") for _ in range(streams)]
    await client.flush()
    with trio.fail_after(10):
        while not all(client.answers[i].status or client.answers[i].reset for i in ids):
            if not await client.receive_once():
                break
    return client


async def test_zero_window_streams_then_disconnect_free_everything(tmp_path: Path) -> None:
    """Issue 13: ~165 connections opening zero-window streams and disconnecting left every
    later connection answered 503 too_many_connections, for good. Neither the stall
    deadline nor the idle timer may be what frees them here: both are far away."""
    async with (
        daemon(tmp_path, http2=True, http2_stall_timeout="60s", keep_alive_timeout="60s") as d,
        bystanders(d),
    ):
        before = d.peak_rss_mb()
        for _ in range(MAX_CONNECTIONS + 20):
            client = await stalled_streams(d.port, 4)
            await client.aclose()
        # Every one of those connections is gone (once the server has seen each close): a
        # full cap of new ones is served.
        held: list[H2Client] = []

        async def served() -> bool:
            # Until the server has seen every close, a new connection may still be refused
            # or cut at the cap: that is "not yet", not a failure.
            try:
                client = await H2Client.connect(d.port)
            except (OSError, trio.BrokenResourceError):
                return False
            try:
                answer = await client.get("/livez")
            except (trio.TooSlowError, trio.BrokenResourceError, OSError):
                answer = None
            if answer is not None and answer.status == 200:
                held.append(client)
            else:
                await client.aclose()
            return len(held) == MAX_CONNECTIONS - 2

        await wait_for(served, deadline_s=10, message="a full cap of connections served")
        for client in held:
            await client.aclose()
        growth = d.peak_rss_mb() - before
        assert growth < RSS_GROWTH_BOUND_MB, growth


async def test_unread_streams_are_capped_bounded_and_reset_when_stalled(tmp_path: Path) -> None:
    """Issue 13: 2,000 streams of /openapi.json left unread took RSS from 56 to 993 MB."""
    async with daemon(tmp_path, http2=True) as d, bystanders(d):
        before = d.peak_rss_mb()
        # More streams than allowed on one connection: a protocol error ends it.
        greedy = await H2Client.connect(d.port, window=0)
        for _ in range(MAX_STREAMS + 1):
            greedy.request("/openapi.json")
        await greedy.flush()
        with trio.fail_after(10):
            while await greedy.receive_once():
                pass
        assert greedy.terminated is not None or greedy.closed
        await greedy.aclose()

        # Connections of allowed streams that never read: each holds at most
        # http2_max_buffered_bytes (1 MiB) plus one response; the rest is reset at once.
        clients = [await stalled_streams(d.port, MAX_STREAMS) for _ in range(20)]
        calm = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        for c in clients:
            assert any(a.reset == calm for a in c.answers.values())
        answers = [a for c in clients for a in c.answers.values()]

        # Stalled by flow control: reset after http2_stall_timeout.
        async def all_reset() -> bool:
            for c in clients:
                with trio.move_on_after(0.01):
                    await c.receive_once()
            return all(a.reset is not None for a in answers)

        await wait_for(all_reset, deadline_s=STALL_S + 5, message="stalled streams reset")
        growth = d.peak_rss_mb() - before
        for c in clients:
            await c.aclose()
        assert growth < RSS_GROWTH_BOUND_MB, growth


async def test_idle_connections_and_dripped_headers_are_cut(tmp_path: Path) -> None:
    """Issue 13: idle HTTP/2 connections were not closed at keep_alive_timeout, and a header
    block dripped one CONTINUATION frame at a time was not cut."""
    async with daemon(tmp_path, http2=True, http2_stall_timeout="60s") as d, bystanders(d):
        idle = await H2Client.connect(d.port)
        # A stalled stream keeps the dripping connection from being idle: only the header
        # deadline (keep_alive_timeout) can end it.
        dripper = await stalled_streams(d.port, 1)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def drip() -> None:
                sent = await dripper.drip_headers("/livez", fragments=60, interval=0.1)
                assert sent < 60, "the dripped header block was never cut"

            nursery.start_soon(drip)
            with trio.fail_after(KEEP_ALIVE_S + 5):
                while await idle.receive_once():
                    pass
        assert idle.closed or idle.terminated is not None
        assert trio.current_time() - started >= KEEP_ALIVE_S - 0.2
        await idle.aclose()
        await dripper.aclose()


async def abuse(port: int, nursery: trio.Nursery) -> list[H2Client]:
    """Stalled streams on many connections and a dripping header block, left running."""
    clients = [await stalled_streams(port, MAX_STREAMS) for _ in range(8)]
    dripper = await H2Client.connect(port)
    clients.append(dripper)
    nursery.start_soon(dripper.drip_headers, "/livez", 1000, 0.05)
    return clients


async def test_sigterm_ends_the_daemon_within_the_grace_whatever_peers_do(
    tmp_path: Path,
) -> None:
    # Stall and header deadlines longer than the grace: only the shutdown can end them.
    async with (
        daemon(tmp_path, http2=True, http2_stall_timeout="60s", keep_alive_timeout="60s") as d,
        trio.open_nursery() as nursery,
    ):
        clients = await abuse(d.port, nursery)
        d.process.process.send_signal(signal.SIGTERM)
        assert await d.process.wait_exit() == 0, d.process.stderr
        stderr = d.process.stderr
        stopping = logged_seconds(stderr, "received SIGTERM", "yoi-registryd stopped")
        assert stopping <= GRACE_S + 1, stderr
        nursery.cancel_scope.cancel()
        for c in clients:
            await c.aclose()
    assert "Traceback" not in d.process.stderr


async def test_a_second_sigterm_ends_the_daemon_at_once_under_abuse(tmp_path: Path) -> None:
    async with (
        daemon(tmp_path, http2=True, http2_stall_timeout="60s", shutdown_grace="60s") as d,
        trio.open_nursery() as nursery,
    ):
        clients = await abuse(d.port, nursery)
        d.process.process.send_signal(signal.SIGTERM)
        await wait_for(lambda: "shutting down" in d.process.stderr, message="the first signal")
        d.process.process.send_signal(signal.SIGTERM)
        await d.process.wait_exit()
        stopping = logged_seconds(d.process.stderr, "second signal", "yoi-registryd stopped")
        assert stopping <= 1, d.process.stderr
        nursery.cancel_scope.cancel()
        for c in clients:
            await c.aclose()
