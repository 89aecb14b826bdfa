"""Signals to the real daemon: SIGTERM finishes what was accepted, a second one exits at once.

"Accepted" is what a client can see: its connect() succeeded. Every such request must get a
complete response; a client that connects after the listener stopped accepting is refused.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import copy_fixtures, wait_for
from tests.daemon_process import (
    free_port,
    is_set,
    logged_seconds,
    raw_get,
    ready_daemon,
    short_tmpdir,
)
from tests.h2_client import H2Client

CLIENTS = 40
REQUESTS_BEFORE_SIGTERM = 200


@dataclass
class Tally:
    complete: int = 0
    refused: int = 0
    lost: list[str] = field(default_factory=list)
    """Requests that got a connection but no complete 200 response, and why."""


async def one_request(connect: Callable[[], Awaitable[trio.SocketStream]], tally: Tally) -> bool:
    """One request on a fresh connection; False once connections are refused."""
    try:
        stream = await connect()
    except OSError:
        tally.refused += 1
        return False
    data = b""
    try:
        async with stream:
            await stream.send_all(
                b"GET /api/workers HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n"
            )
            with trio.fail_after(20):
                while chunk := await stream.receive_some(65536):
                    data += chunk
    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
        tally.lost.append(f"{exc!r} after {len(data)} bytes")
        return True
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    if head.startswith(b"HTTP/1.1 200 ") and length and len(body) == int(length.group(1)):
        tally.complete += 1
    else:
        tally.lost.append(f"incomplete response: {data[:80]!r}")
    return True


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_sigterm_under_load_loses_no_accepted_request(tmp_path: Path, transport: str) -> None:
    data = copy_fixtures(tmp_path / "yoi-data")
    with short_tmpdir() as short:
        if transport == "tcp":
            port = free_port()
            listen = f"127.0.0.1:{port}"

            async def connect() -> trio.SocketStream:
                return await trio.open_tcp_stream("127.0.0.1", port)
        else:
            path = short / "api.sock"
            listen = f"unix:{path}"

            async def connect() -> trio.SocketStream:
                return await trio.open_unix_socket(str(path))

        config = tmp_path / "config.toml"
        config.write_text(
            f'[server]\nlisten = ["{listen}"]\nshutdown_grace = "20s"\n\n'
            f'[[sources]]\nkind = "local"\ndata_dir = "{data}"\n'
            f'runtime_dir = "{tmp_path / "run"}"\n'
        )
        async with ready_daemon(config, tmp_path) as (daemon, _):
            tally = Tally()

            async def client() -> None:
                while await one_request(connect, tally):
                    pass

            async with trio.open_nursery() as nursery:
                for _ in range(CLIENTS):
                    nursery.start_soon(client)
                await wait_for(
                    lambda: tally.complete >= REQUESTS_BEFORE_SIGTERM,
                    deadline_s=20,
                    message="requests under load",
                )
                daemon.process.send_signal(signal.SIGTERM)
                completed_at_sigterm = tally.complete
            # Every client ran until it was refused: the daemon stopped accepting.
            assert await daemon.wait_exit() == 0, daemon.stderr
        assert tally.lost == []
        assert tally.refused == CLIENTS
        assert tally.complete > completed_at_sigterm, "requests in flight at SIGTERM finished"
        assert "Traceback" not in daemon.stderr


async def start_slow_request(port: int) -> trio.SocketStream:
    """A request whose body is still on its way: in flight until the test sends the rest."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"POST /api/runtimes/local-worker-runtime/workers/nobody/stop HTTP/1.1\r\n"
        b"Host: registry\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{"
    )
    return stream


async def answered_keep_alive(port: int) -> trio.SocketStream:
    """A keep-alive connection that has had its answer (to GET /api/runtimes): idle now."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /api/runtimes HTTP/1.1\r\nHost: registry\r\n\r\n")
    response = b""
    with trio.fail_after(10):
        while not response.endswith(b"}"):
            response += await stream.receive_some(65536)
    return stream


def serving_config(tmp_path: Path, port: int, grace: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'sources = []\n[server]\nlisten = ["127.0.0.1:{port}"]\nshutdown_grace = "{grace}"\n'
    )
    return config


async def test_request_in_flight_at_sigterm_completes_then_the_daemon_exits_0(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = serving_config(tmp_path, port, "30s")
    async with ready_daemon(config, tmp_path) as (daemon, manager):
        slow = await start_slow_request(port)
        daemon.process.send_signal(signal.SIGTERM)
        await manager.until(is_set("STOPPING"))

        async def refused() -> bool:
            try:
                with trio.fail_after(0.5):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
            except (OSError, trio.TooSlowError):
                return True
            await stream.aclose()
            return False

        await wait_for(refused, message="new connections to be refused")
        assert daemon.process.returncode is None, "the daemon waits for the slow request"

        await slow.send_all(b"}")  # the rest of the body: the request can finish
        response = b""
        with trio.fail_after(10):
            while chunk := await slow.receive_some(65536):
                response += chunk
        assert response.startswith(b"HTTP/1.1 "), response
        assert b"connection: close" in response.lower()
        with trio.fail_after(10):  # well within the 30s grace: it ended with the request
            assert await daemon.process.wait() == 0, daemon.stderr


async def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    port = free_port()
    config = serving_config(tmp_path, port, "60s")
    async with ready_daemon(config, tmp_path) as (daemon, manager):
        slow = await start_slow_request(port)  # would hold a graceful shutdown for 60s
        daemon.process.send_signal(signal.SIGTERM)
        await manager.until(is_set("STOPPING"))
        daemon.process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            await daemon.process.wait()
        await slow.aclose()
    assert "second signal SIGINT: exiting now" in daemon.stderr


async def test_idle_keep_alive_connection_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    port = free_port()
    config = serving_config(tmp_path, port, "60s")
    async with ready_daemon(config, tmp_path) as (daemon, _):
        stream = await answered_keep_alive(port)
        daemon.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):  # not the 60s grace: an idle connection is closed
            assert await daemon.process.wait() == 0, daemon.stderr
            assert await stream.receive_some(65536) == b""
        await stream.aclose()


async def test_connection_accepted_before_sigterm_may_still_send_its_request(
    tmp_path: Path,
) -> None:
    """Like Go's Shutdown: a connection with no request yet gets a grace period (an idle
    keep-alive connection, which has had its answer, is closed at once)."""
    port = free_port()
    config = serving_config(tmp_path, port, "30s")
    async with ready_daemon(config, tmp_path) as (daemon, _):
        idle = await answered_keep_alive(port)
        fresh = await trio.open_tcp_stream("127.0.0.1", port)  # says nothing yet

        daemon.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):  # the daemon is closing idle connections now
            assert await idle.receive_some(65536) == b""
        status, _ = await raw_get(fresh, "/api/runtimes")
        assert status == 200
        with trio.fail_after(10):
            assert await daemon.process.wait() == 0, daemon.stderr
        await idle.aclose()


async def test_connection_close_is_honoured_while_serving(tmp_path: Path) -> None:
    """hypercorn closes (or recycles) a connection inside the app's last send, which
    quart-trio cancels: the server shields it, or connections would stay open."""
    port = free_port()
    config = serving_config(tmp_path, port, "30s")
    async with ready_daemon(config, tmp_path) as (daemon, _):
        for path in ("/healthz", "/api/runtimes", "/api/workers"):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            status, _ = await raw_get(stream, path)  # reads until EOF
            assert status == 200
            await stream.aclose()
        assert daemon.process.returncode is None
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0, daemon.stderr


AUDIT_RUNS = 10
"""Issue 13's acceptance asks for ten: before the fix, answers were lost in 2 of 3 runs, so
ten runs that all pass leave about one chance in 60,000 ((1/3)^10) that the fault is back.
Each run costs a daemon's start and stop (about a second): the price of that confidence."""
AUDIT_CLIENTS = 3
"""Of each protocol: keep-alive HTTP/1.1 clients (httpx) and HTTP/2 clients (h2)."""
ANSWERS_BEFORE_SIGTERM = 40


async def test_every_audited_request_got_its_answer_across_sigterm(tmp_path: Path) -> None:
    """Issue 13: under load, a few requests per SIGTERM were handled and audited while their
    clients got a protocol error instead of the answer. Here keep-alive HTTP/1.1 clients and
    HTTP/2 clients hammer the daemon over TCP and SIGTERM arrives mid-load, ten times: every
    request with an audit record got its complete answer, and every answer has its record
    (matched by X-Request-Id)."""
    port = free_port()
    for run in range(AUDIT_RUNS):
        workdir = tmp_path / f"run{run}"
        workdir.mkdir()
        answered, failed, audited = await sigterm_under_load(workdir, port)
        unanswered = {rid: failed.get(rid) for rid in audited if rid not in answered}
        assert not unanswered, f"run {run}: audited but not answered: {unanswered}"
        assert audited == answered, f"run {run}"


async def sigterm_under_load(
    workdir: Path, port: int
) -> tuple[dict[str, int], dict[str, str], dict[str, int]]:
    """One run: the statuses answered, the requests that failed and why, the statuses
    audited, each by request id."""
    audit_path = workdir / "audit.jsonl"
    config = workdir / "config.toml"
    config.write_text(
        f'sources = []\n[server]\nlisten = ["127.0.0.1:{port}"]\nshutdown_grace = "10s"\n'
        f'http2 = true\n[audit]\npath = "{audit_path}"\nflush_interval = "5ms"\n'
    )
    answered: dict[str, int] = {}
    failed: dict[str, str] = {}

    async def http1(worker: int) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            for i in itertools.count():
                request_id = f"h1-{worker}-{i}"
                try:
                    response = await c.get("/api/workers", headers={"X-Request-Id": request_id})
                except httpx.TransportError as exc:
                    failed[request_id] = repr(exc)
                    return  # the daemon stopped serving this client
                answered[request_id] = response.status_code

    async def http2(worker: int) -> None:
        client = await H2Client.connect(port)
        try:
            for i in itertools.count():
                if client.terminated is not None or client.closed:
                    return  # GOAWAY: no new stream on this connection
                request_id = f"h2-{worker}-{i}"
                try:
                    answer = await client.get("/api/workers", {"X-Request-Id": request_id})
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    failed[request_id] = repr(exc)
                    return
                if answer.ended and answer.status is not None:
                    answered[request_id] = answer.status
                else:  # refused (REFUSED_STREAM, GOAWAY) or cut: the daemon stopped
                    failed[request_id] = repr(answer)
                    return
        finally:
            await client.aclose()

    async with ready_daemon(config, workdir) as (daemon, _), trio.open_nursery() as nursery:
        for worker in range(AUDIT_CLIENTS):
            nursery.start_soon(http1, worker)
            nursery.start_soon(http2, worker)
        await wait_for(lambda: len(answered) >= ANSWERS_BEFORE_SIGTERM, deadline_s=20)
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0, daemon.stderr
        # Clients still trying to connect are not part of the finding.
        nursery.cancel_scope.cancel()
    audited = {
        record["request_id"]: record["status"]
        for record in map(json.loads, audit_path.read_text().splitlines())
    }
    return answered, failed, audited


def server_send_queue(port: int) -> int:
    """Bytes the daemon's established connections on ``port`` have queued but the peer has
    not taken (``tx_queue`` in /proc/net/tcp)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        return sum(
            int(fields[4].split(":")[0], 16)
            for fields in (line.split() for line in table)
            if fields[1] == local and fields[3] == "01"  # ESTABLISHED
        )


async def test_sigterm_ends_the_daemon_within_the_grace_while_a_client_does_not_read(
    tmp_path: Path,
) -> None:
    """A client that asks for large answers and never reads them blocks the server's sends
    (hypercorn shields them): at the grace the connection is closed anyway."""
    port = free_port()
    config = serving_config(tmp_path, port, "1s")
    async with ready_daemon(config, tmp_path) as (daemon, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /openapi.json HTTP/1.1\r\nHost: registry\r\n\r\n" * 50)
        await wait_for(lambda: server_send_queue(port) > 0, deadline_s=10, message="a blocked send")
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0, daemon.stderr
        # shutdown_grace + 1 s (the old server never ended: its sends are shielded)
        stopping = logged_seconds(daemon.stderr, "received SIGTERM", "yoi-registryd stopped")
        assert stopping <= 1 + 1, daemon.stderr
        await stream.aclose()
