"""Status lines carry their reason phrase, and a 304 carries no Content-Type."""

from __future__ import annotations

import pytest
import trio

from tests.conftest import StartDaemon


async def status_line(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        received = b""
        with trio.fail_after(10):
            while b"\r\n" not in received:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                received += chunk
    return received.split(b"\r\n", 1)[0]


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("/api/runtimes", b"HTTP/1.1 200 OK"),
        ("/api/nothing-here", b"HTTP/1.1 404 Not Found"),
        ("/api/runtimes?limit=x", b"HTTP/1.1 400 Bad Request"),
    ],
)
async def test_responses_have_a_reason_phrase(
    start_daemon: StartDaemon, path: str, line: bytes
) -> None:
    d = await start_daemon("sources = []\n")
    port = int(d.base_url.rsplit(":", 1)[1])
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    assert await status_line(port, request) == line


async def test_a_304_has_no_content_type(start_daemon: StartDaemon) -> None:
    d = await start_daemon("sources = []\n")
    first = await d.client.get("/api/runtimes")
    again = await d.client.get("/api/runtimes", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.reason_phrase == "Not Modified"
    assert "content-type" not in again.headers
    assert again.headers["etag"] == first.headers["etag"]
