"""Abuse of the HTTP surface: each attack is bounded by a ``[server]`` limit, answered with a
typed 4xx (or 503 for the connection cap), and leaves other clients' requests unharmed.

Attacks are written as raw bytes on real sockets (a well-behaved client library would
refuse to send most of them); a bystander client keeps asking the daemon for its runtimes
throughout, and every one of its answers must be a quick 200.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from tests.conftest import RunningDaemon, StartDaemon, wait_for

MAX_HEADER_BYTES = 4096
MAX_BODY_BYTES = 2048
MAX_CONNECTIONS = 200
TIMEOUT_S = 1.0
BYSTANDER_SLOWEST_S = 0.5
KEEP_ALIVE_MAX_REQUESTS = 1000


def limits_toml(tmp_path: Path, **server: object) -> str:
    values = {
        "max_header_bytes": MAX_HEADER_BYTES,
        "max_body_bytes": MAX_BODY_BYTES,
        "max_connections": MAX_CONNECTIONS,
        "keep_alive_timeout": f"{TIMEOUT_S}s",
        "body_timeout": f"{TIMEOUT_S}s",
        **server,
    }
    lines = [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in values.items()]
    return (
        "sources = []\n[server]\n"
        + "\n".join(lines).replace("'", '"')
        + f'\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n'
    )


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str:
        return str(msgspec.json.decode(self.body)["code"])


class RawClient:
    """One raw connection: send bytes, read HTTP/1.1 answers off it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        chunk = await self.stream.receive_some(65536)
        self.buffer += chunk
        return bool(chunk)

    async def reply(self) -> Reply:
        while b"\r\n\r\n" not in self.buffer:
            if not await self._fill():
                raise EOFError(f"closed before an answer: {self.buffer[:200]!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not await self._fill():
                raise EOFError("closed inside a body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(int(status_line.split(" ")[1]), headers, body)

    async def closed_by_server(self) -> bool:
        """True once the server has closed (EOF or reset) and no answer is left unread."""
        try:
            while await self._fill():
                pass
        except trio.BrokenResourceError:
            pass
        return True

    async def aclose(self) -> None:
        await self.stream.aclose()


async def connect(d: RunningDaemon) -> RawClient:
    port = int(d.base_url.rsplit(":", 1)[1])
    return RawClient(await trio.open_tcp_stream("127.0.0.1", port))


def get(path: bytes, *headers: bytes) -> bytes:
    return (
        b"GET "
        + path
        + b" HTTP/1.1\r\nHost: t\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"\r\n"
    )


@dataclass
class Bystander:
    """A well-behaved client asking for the runtimes over and over, timing each answer."""

    d: RunningDaemon
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            started = trio.current_time()
            try:
                response = await self.d.client.get("/api/runtimes")
                if response.status_code != 200:
                    self.failures.append(f"status {response.status_code}")
            except Exception as exc:  # any failure is the test's finding
                self.failures.append(repr(exc))
            self.latencies.append(trio.current_time() - started)
            await trio.sleep(0.02)

    def check(self) -> None:
        assert not self.failures, self.failures[:5]
        assert max(self.latencies) < BYSTANDER_SLOWEST_S, max(self.latencies)


@asynccontextmanager
async def bystander(d: RunningDaemon) -> AsyncIterator[Bystander]:
    # Its connection is opened before the attack: a connection cap must not cut it off.
    assert (await d.client.get("/api/runtimes")).status_code == 200
    b = Bystander(d)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run)
        yield b
        after = len(b.latencies)
        # A few more answers after the attack too.
        await wait_for(lambda: len(b.latencies) >= after + 2, message="bystander answers")
        nursery.cancel_scope.cancel()
    b.check()


async def start(start_daemon: StartDaemon, tmp_path: Path, **server: object) -> RunningDaemon:
    return await start_daemon(limits_toml(tmp_path, **server))


async def test_oversized_headers_and_paths_get_431(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    d = await start(start_daemon, tmp_path)
    async with bystander(d):
        # Just under the limit: served.
        c = await connect(d)
        await c.send(get(b"/api/runtimes", b"X-Pad: " + b"a" * (MAX_HEADER_BYTES - 200)))
        assert (await c.reply()).status == 200
        # Complete heads over the limit (each arrives in one read): a typed 431, and the
        # connection stays usable.
        for attack in (
            get(b"/api/runtimes", b"X-Pad: " + b"a" * (MAX_HEADER_BYTES * 4)),
            get(b"/api/runtimes", *(b"X-H%d: v" % i for i in range(2000))),
            get(b"/api/runtimes/" + b"r" * (MAX_HEADER_BYTES * 4)),
            get(b"/livez?" + b"q" * (MAX_HEADER_BYTES * 2)),
        ):
            await c.send(attack)
            reply = await c.reply()
            assert (reply.status, reply.error_code()) == (431, "request_head_too_large")
        await c.send(get(b"/api/runtimes"))
        assert (await c.reply()).status == 200
        # A head still incomplete past the limit: the parser answers 431 and hangs up.
        c = await connect(d)
        await c.send(b"GET /api/runtimes HTTP/1.1\r\nX-Pad: " + b"a" * (MAX_HEADER_BYTES * 4))
        reply = await c.reply()
        assert (reply.status, reply.body, reply.headers["connection"]) == (431, b"", "close")
        assert await c.closed_by_server()
        # A long path within the limit reaches the app: a typed 400, not a crash.
        c = await connect(d)
        await c.send(get(b"/api/runtimes/" + b"r" * (MAX_HEADER_BYTES // 2)))
        reply = await c.reply()
        assert (reply.status, reply.error_code()) == (400, "invalid_identifier")


async def test_a_client_sending_headers_slowly_is_cut_off(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    d = await start(start_daemon, tmp_path)
    async with bystander(d):
        slow = [await connect(d) for _ in range(20)]
        started = trio.current_time()

        async def drip(c: RawClient) -> None:
            request = get(b"/api/runtimes", *(b"X-Slow-%d: v" % i for i in range(200)))
            try:
                for i in range(len(request)):
                    await c.send(request[i : i + 1])
                    await trio.sleep(0.05)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            for c in slow:
                nursery.start_soon(drip, c)
            for c in slow:
                assert await c.closed_by_server()
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - started
        # Cut at keep_alive_timeout (hypercorn's idle timer runs until a request head is
        # complete), well before the drip would have finished (about 200 s).
        assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 1.5, elapsed
        assert all(c.buffer == b"" for c in slow), "no answer was owed to a partial request"


async def test_the_keep_alive_timeout_counts_idleness_after_the_last_answer(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """A request held longer than ``keep_alive_timeout`` is answered (the timer is stopped
    while a request runs), and a connection is closed once it has been idle that long after
    its last answer, not after its first (the timer restarts with every answer)."""
    d = await start(start_daemon, tmp_path)
    c = await connect(d)
    await c.send(get(b"/api/runtimes"))
    index = (await c.reply()).headers["x-registry-index"]
    held = f"/api/runtimes?index={index}&wait={2 * TIMEOUT_S:g}s".encode()
    await c.send(get(held))
    assert (await c.reply()).status == 200
    await trio.sleep(TIMEOUT_S / 2)  # idle, but not for long enough to be closed
    await c.send(get(b"/api/runtimes"))
    assert (await c.reply()).status == 200
    answered = trio.current_time()
    with trio.fail_after(TIMEOUT_S + 5):
        assert await c.closed_by_server()
    idle = trio.current_time() - answered
    assert TIMEOUT_S * 0.9 <= idle < TIMEOUT_S + 1.5, idle


async def test_a_body_sent_slowly_gets_408_and_a_too_large_body_413(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    d = await start(start_daemon, tmp_path)
    path = b"/api/runtimes/rt-1/workers/w-1/input"
    async with bystander(d):
        c = await connect(d)
        await c.send(
            b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"kind": '
        )
        started = trio.current_time()
        reply = await c.reply()
        assert (reply.status, reply.error_code()) == (408, "request_timeout")
        assert TIMEOUT_S * 0.9 <= trio.current_time() - started < TIMEOUT_S + 1.5

        too_large = b"x" * (MAX_BODY_BYTES + 1)
        for framing in (
            b"Content-Length: %d\r\n\r\n" % len(too_large) + too_large,
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (256, too_large[:256]) for _ in range(10))
            + b"0\r\n\r\n",
        ):
            c = await connect(d)
            await c.send(b"POST " + path + b" HTTP/1.1\r\nHost: t\r\n" + framing)
            reply = await c.reply()
            assert (reply.status, reply.error_code()) == (413, "request_entity_too_large")


@pytest.mark.parametrize(
    ("target", "status", "code"),
    [
        (b"/api/runtimes/%FF%FE", 400, "invalid_identifier"),
        (b"/api/runtimes/ok/workers/%C3%28", 400, "invalid_identifier"),
        (b"/api/workers?limit=%FF", 400, "invalid_query"),
        (b"/api/workers?%ED%A0%80=1", 400, "invalid_query"),
        (b"/api/runtimes/a%2Fb", 400, "invalid_identifier"),
        (b"/api/runtimes/\xff\xfe", 400, None),  # not even an HTTP request target
        (b"/api/workers?limit=\xc3\x28", 400, None),
    ],
)
async def test_invalid_utf8_in_paths_and_queries_is_a_typed_400(
    start_daemon: StartDaemon, tmp_path: Path, target: bytes, status: int, code: str | None
) -> None:
    d = await start(start_daemon, tmp_path)
    async with bystander(d):
        c = await connect(d)
        await c.send(get(target))
        reply = await c.reply()
        assert reply.status == status
        if code is None:
            # Refused by the HTTP parser, before any route: no body, and the connection ends.
            assert reply.body == b"" and reply.headers["connection"] == "close"
        else:
            assert reply.error_code() == code
            # The connection stays usable.
            await c.send(get(b"/api/runtimes"))
            assert (await c.reply()).status == 200


async def test_pipelined_requests_are_answered_in_order(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    d = await start(start_daemon, tmp_path)
    async with bystander(d):
        c = await connect(d)
        await c.send(
            get(b"/api/runtimes") + get(b"/api/nope") + get(b"/livez") + get(b"/api/workers")
        )
        replies = [await c.reply() for _ in range(4)]
        assert [r.status for r in replies] == [200, 404, 200, 200]
        assert replies[1].error_code() == "not_found"
        assert replies[2].body == b"ok\n"
        assert msgspec.json.decode(replies[3].body)["items"] == []

        # A burst the client does not read: the server stops reading when its answers back
        # up, and answers every request in order once the client reads.
        c = await connect(d)
        burst = [b"X-Request-Id: burst-%d" % i for i in range(500)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.send, b"".join(get(b"/api/runtimes", h) for h in burst))
            replies = [await c.reply() for _ in burst]
        assert [r.headers["x-request-id"] for r in replies] == [f"burst-{i}" for i in range(500)]
        assert {r.status for r in replies} == {200}
        # A connection serves a bounded number of requests (hypercorn's keep_alive_max_requests,
        # 1000): the last answer says "connection: close" and the server hangs up. (Exactly
        # the cap is sent: a request past it would be left unread, and a socket closed with
        # unread data sends a reset that can discard answers still in the client's buffer.)
        c = await connect(d)
        burst = [b"X-Request-Id: more-%d" % i for i in range(KEEP_ALIVE_MAX_REQUESTS)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.send, b"".join(get(b"/api/runtimes", h) for h in burst))
            replies = [await c.reply() for _ in burst]
        assert await c.closed_by_server()
        assert c.buffer == b""
        assert [r.headers.get("connection") for r in replies[-2:]] == [None, "close"]
        assert [r.headers["x-request-id"] for r in replies] == [f"more-{i}" for i in range(1000)]
        assert {r.status for r in replies} == {200}


async def test_connections_the_clients_closed_are_released_at_once(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    # A long keep-alive timeout: only the clients' closing can release these connections.
    d = await start(start_daemon, tmp_path, keep_alive_timeout="60s")
    port = d.base_url.rsplit(":", 1)[1]

    def server_side() -> int:
        return sum(
            1
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
            if line.split()[1].endswith(f":{int(port):04X}")
        )

    async with bystander(d):
        baseline = server_side()
        for _ in range(5):
            async with (
                httpx.AsyncClient(base_url=d.base_url) as client,
                trio.open_nursery() as nursery,
            ):
                for _ in range(20):
                    nursery.start_soon(client.get, "/api/runtimes")
        await wait_for(
            lambda: server_side() <= baseline, deadline_s=2, message="closed connections released"
        )


async def test_thousands_of_idle_connections_are_capped_and_time_out(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    # The keep-alive timeout must outlast the server's accepting all 2,000 (a second or two
    # on a loaded machine): an idle connection timed out before that frees its slot for a
    # later one, which is then served instead of refused.
    d = await start(start_daemon, tmp_path, keep_alive_timeout="5s")
    attempts = 2000
    async with bystander(d) as b:
        held: list[RawClient] = []
        refused = 0
        for _ in range(attempts):
            c = await connect(d)
            held.append(c)
        # Each connection beyond the cap is answered with a typed 503 and closed at once;
        # each idle one is closed, unanswered, after keep_alive_timeout. Every connection's
        # first read ends one way or the other (all read at once: a loaded server may take
        # a while to get through its accept queue).
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                for c in held:
                    nursery.start_soon(c._fill)
        over = [c for c in held if c.buffer]
        for c in over:
            reply = await c.reply()
            assert (reply.status, reply.error_code()) == (503, "too_many_connections")
            assert reply.headers["retry-after"] == "1"
            assert await c.closed_by_server()
            refused += 1
        # The bystander's own connection (opened earlier) counts toward the cap.
        assert attempts - MAX_CONNECTIONS <= refused <= attempts - MAX_CONNECTIONS + 1
        # The idle ones are closed by the server after keep_alive_timeout; then new
        # clients are served again.
        idle = [c for c in held if c not in over]
        with trio.fail_after(5):
            for c in idle:
                assert await c.closed_by_server()
        latencies_before = len(b.latencies)

        async def served() -> bool:
            c = await connect(d)
            await c.send(get(b"/api/runtimes"))
            try:
                return (await c.reply()).status == 200
            finally:
                await c.aclose()

        await wait_for(served, deadline_s=3, message="a new client is served")
        await wait_for(lambda: len(b.latencies) > latencies_before + 2)
        for c in held:
            await c.aclose()
