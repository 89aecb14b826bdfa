"""The remote source's HTTP/1.1 client against a scripted server on a real loopback socket:
which connection each request goes on, and which failed request is sent again, over plain
TCP and over TLS (a certificate authority made for the test with ``cryptography``).

The server (h11, server side) answers or closes each request as its script says, per
connection, and records what reached it, so each test sees exactly which connections and
requests the client made.
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import wait_for
from yoi_registryd.secrets import Secret
from yoi_registryd.sources import remote_client
from yoi_registryd.sources.remote_client import (
    MALFORMED,
    NETWORK_ERROR,
    BoundedBody,
    RemoteClient,
    RemoteFailure,
    open_client,
)

BODY = b'{"workers":[]}'


class NoCredentials:
    def authorization(self, permission: str) -> Secret | None:
        return None


@dataclass
class ScriptedServer:
    """Connection ``i`` answers its first ``answers[i]`` requests (one more connection
    than listed: all answered), then reads the next one and closes without an answer."""

    answers: list[int] = field(default_factory=list)
    close_when_idle: bool = False
    """Close a connection as soon as its last answer is sent (no ``Connection: close``:
    the runtime's idle timer firing before the next request came)."""
    requests: list[tuple[int, bytes]] = field(default_factory=list)
    """``(connection number, method)`` of each request read."""
    connections: int = 0
    closed_idle: trio.Event = field(default_factory=trio.Event)
    """Set when a connection closed after its last answer (while the client is idle)."""
    port: int = 0

    async def handle(self, stream: trio.abc.Stream) -> None:
        number = self.connections
        self.connections += 1
        budget = self.answers[number] if number < len(self.answers) else None
        protocol = h11.Connection(h11.SERVER)
        answered = 0
        async with stream:
            while True:
                event = protocol.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        return  # a TLS handshake the client gave up
                    if not data:
                        return
                    protocol.receive_data(bytes(data))
                    continue
                if isinstance(event, h11.Request):
                    self.requests.append((number, event.method))
                    if budget is not None and answered >= budget:
                        return  # read, never answered: the runtime closing an idle connection
                if type(event) is not h11.EndOfMessage:
                    continue
                headers = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]
                out = protocol.send(h11.Response(status_code=200, headers=headers))
                out += protocol.send(h11.Data(data=BODY)) + protocol.send(h11.EndOfMessage())
                await stream.send_all(out)
                answered += 1
                if self.close_when_idle and answered == budget:
                    await stream.aclose()
                    self.closed_idle.set()
                    return
                protocol.start_next_cycle()


async def serve(nursery: trio.Nursery, server: ScriptedServer) -> ScriptedServer:
    listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), server.handle, 0)
    server.port = listeners[0].socket.getsockname()[1]
    return server


def client_of(server: ScriptedServer) -> Callable[[], RemoteClient]:
    url = Secret(f"http://127.0.0.1:{server.port}/yoi")
    return lambda: RemoteClient(url, 5.0, 1 << 20, NoCredentials())


async def test_a_kept_alive_connection_serves_the_next_request(nursery: trio.Nursery) -> None:
    server = await serve(nursery, ScriptedServer())
    with open_client(Secret(f"http://127.0.0.1:{server.port}"), 5.0, 1 << 20, NoCredentials()) as c:
        for _ in range(3):
            assert await c.get("/v1/workers", "") == BODY
    assert server.connections == 1
    assert server.requests == [(0, b"GET")] * 3


async def test_a_get_the_runtime_closed_unanswered_goes_again_on_a_new_connection(
    nursery: trio.Nursery,
) -> None:
    # The runtime's idle timer and our request due at once: it reads it and closes.
    server = await serve(nursery, ScriptedServer(answers=[1]))
    client = client_of(server)()
    assert await client.get("/v1/workers", "") == BODY
    assert await client.get("/v1/workers", "") == BODY
    assert server.connections == 2
    assert server.requests == [(0, b"GET"), (0, b"GET"), (1, b"GET")]


async def test_a_post_the_runtime_closed_unanswered_is_not_sent_again(
    nursery: trio.Nursery,
) -> None:
    # The runtime may have acted on it: the caller learns it could not be reached.
    server = await serve(nursery, ScriptedServer(answers=[1]))
    client = client_of(server)()
    assert await client.get("/v1/workers", "") == BODY
    with pytest.raises(RemoteFailure) as failure:
        await client.post("/v1/workers/w-1/stop", "", b"{}")
    assert failure.value.code == NETWORK_ERROR
    assert server.requests == [(0, b"GET"), (0, b"POST")]
    # A new connection serves the next request.
    assert await client.get("/v1/workers", "") == BODY
    assert server.requests[-1] == (1, b"GET")


async def test_a_connection_closed_while_idle_is_not_used_again(nursery: trio.Nursery) -> None:
    server = await serve(nursery, ScriptedServer(answers=[1], close_when_idle=True))
    client = client_of(server)()
    assert await client.get("/v1/workers", "") == BODY
    await server.closed_idle.wait()
    response = await client.post("/v1/workers/w-1/stop", "", b"{}")
    assert (response.status, response.body) == (200, BODY)
    assert server.requests == [(0, b"GET"), (1, b"POST")]


@pytest.mark.parametrize(
    ("idle", "connections"),
    [(remote_client._KEEPALIVE_EXPIRY - 0.5, 1), (remote_client._KEEPALIVE_EXPIRY + 0.5, 2)],
)
async def test_a_connection_idle_past_the_keepalive_expiry_is_not_used_again(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock, idle: float, connections: int
) -> None:
    server = await serve(nursery, ScriptedServer())
    client = client_of(server)()
    assert await client.get("/v1/workers", "") == BODY
    mock_clock.jump(idle)
    assert await client.get("/v1/workers", "") == BODY
    assert server.connections == connections


def tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``localhost`` and a client context that
    trusts only the authority that signed it."""
    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        signer: ec.EllipticCurvePrivateKey,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        certificate("test authority", ca_key, "test authority", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        certificate("localhost", key, "test authority", ca_key)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    chain, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(chain, key_file)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


@pytest.mark.parametrize("answers", [[], [1]], ids=["kept-alive", "closed-unanswered"])
async def test_over_tls_a_connection_is_kept_alive_and_a_closed_one_replaced(
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    answers: list[int],
) -> None:
    server_context, client_context = tls_contexts(tmp_path)
    monkeypatch.setattr(remote_client, "tls_context", lambda: client_context)
    server = ScriptedServer(answers=answers)
    serve_tls = partial(trio.serve_ssl_over_tcp, host="127.0.0.1", https_compatible=True)
    listeners = await nursery.start(serve_tls, server.handle, 0, server_context)
    port = listeners[0].transport_listener.socket.getsockname()[1]
    client = RemoteClient(Secret(f"https://localhost:{port}/yoi"), 5.0, 1 << 20, NoCredentials())
    for _ in range(3):
        assert await client.get("/v1/workers", "") == BODY
    assert server.connections == 1 + len(answers)
    assert [method for _, method in server.requests] == [b"GET"] * (3 + len(answers))


async def test_over_tls_a_certificate_the_client_does_not_trust_is_a_network_error(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server_context, _ = tls_contexts(tmp_path)  # the client keeps certifi's authorities
    server = ScriptedServer()
    serve_tls = partial(trio.serve_ssl_over_tcp, host="127.0.0.1", https_compatible=True)
    listeners = await nursery.start(serve_tls, server.handle, 0, server_context)
    port = listeners[0].transport_listener.socket.getsockname()[1]
    client = RemoteClient(Secret(f"https://localhost:{port}/yoi"), 5.0, 1 << 20, NoCredentials())
    with pytest.raises(RemoteFailure) as failure:
        await client.get("/v1/workers", "")
    assert failure.value.code == NETWORK_ERROR
    await wait_for(lambda: server.connections == 1, message="the server to see the handshake")
    assert server.requests == []


def test_bytes_after_the_compressed_end_are_malformed() -> None:
    """A runtime that keeps sending after its gzip stream ended would otherwise be read
    (and ignored) until the deadline."""
    compressed = gzip.compress(BODY)
    whole = BoundedBody("gzip", 1 << 20)
    whole.feed(compressed)
    assert whole.finish() == BODY
    for tail in ([b"junk"], [b"", b"junk"]):
        body = BoundedBody("gzip", 1 << 20)
        with pytest.raises(RemoteFailure) as failure:
            for chunk in [compressed + tail[0], *tail[1:]]:
                body.feed(chunk)
        assert failure.value.code == MALFORMED
