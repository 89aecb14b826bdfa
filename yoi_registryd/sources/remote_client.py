"""HTTP plumbing of the remote source: keep-alive connections, bounded requests, typed failures.

Each remote runtime gets its own client with a few keep-alive HTTP/1.1 connections (h11 on
trio streams) for as long as its source runs; all of them share one TLS context.

Whatever goes wrong is reduced here to a :class:`RemoteFailure` carrying one of the typed
codes of contract section 3. Its ``str`` is the code alone: the exception text (which may
name the host) is kept apart in ``detail`` for DEBUG logs and never reaches a response, a
diagnostic or a log line at INFO or above.
"""

from __future__ import annotations

import functools
import re
import select
import socket
import ssl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, Protocol, cast
from urllib.parse import urlsplit

import certifi
import h11
import msgspec
import trio

from yoi_registryd import __version__
from yoi_registryd.json_depth import MAX_JSON_DEPTH, TooDeep, check_depth
from yoi_registryd.secrets import Secret

TIMEOUT: Final = "remote_runtime_timeout"
NETWORK_ERROR: Final = "remote_runtime_network_error"
AUTH_FAILED: Final = "remote_runtime_auth_failed"
"""The runtime refused the credentials themselves (401)."""
FORBIDDEN: Final = "remote_runtime_forbidden"
"""The runtime took the credentials but refused the request (403): permission, workspace."""
MALFORMED: Final = "remote_runtime_malformed_response"
HTTP_ERROR: Final = "remote_runtime_http_error"
UNSUPPORTED: Final = "remote_runtime_unsupported"
WORKER_NOT_FOUND: Final = "remote_worker_not_found"
TOKEN_UNAVAILABLE: Final = "remote_runtime_token_unavailable"
KEY_UNAVAILABLE: Final = "remote_runtime_key_unavailable"

_KEEPALIVE_EXPIRY: Final = 4.0
"""Seconds an idle connection may be used again: less than the 5 s after which common HTTP
servers (hypercorn, uvicorn, Node) close an idle one, so that a request is not written
onto a connection the runtime is closing at that moment (it would end unanswered)."""
_MAX_CONNECTIONS: Final = 16
"""Polls use one connection; the rest serve concurrent worker operations."""
_MAX_IDLE: Final = 2
_RECEIVE_BYTES: Final = 65536
_END: Final = h11.EndOfMessage()
_MAX_PREPARED: Final = 16
_USER_AGENT: Final = f"yoi-registryd/{__version__}".encode()


_SAFE_MESSAGES: Final = {
    TIMEOUT: "remote runtime {rid} did not answer within the timeout",
    NETWORK_ERROR: "remote runtime {rid} could not be reached",
    AUTH_FAILED: "remote runtime {rid} refused the registry's credentials{status}",
    FORBIDDEN: "remote runtime {rid} accepted the registry's credentials but refused "
    "the request{status}",
    MALFORMED: "remote runtime {rid} sent a reply that is not a valid worker-runtime v1 answer",
    UNSUPPORTED: "remote runtime {rid} does not support the request{status}",
    WORKER_NOT_FOUND: "remote runtime {rid} does not know the worker{status}",
    TOKEN_UNAVAILABLE: "the bearer token for remote runtime {rid} is unavailable",
    KEY_UNAVAILABLE: "the signing key for remote runtime {rid} is unavailable",
}
"""Per code, the message :meth:`RemoteFailure.safe_message` builds from the runtime id."""
_UNEXPECTED_STATUS: Final = "remote runtime {rid} answered with an unexpected status{status}"


class Credentials(Protocol):
    """What a request asks of the source's credentials (``remote_auth.RemoteCredentials``):
    declared here so that this plumbing does not depend on how they are loaded or minted."""

    def authorization(self, permission: str) -> Secret | None:
        """The ``Authorization`` value for a request needing ``permission``, if any."""
        ...


class RemoteFailure(Exception):
    """A typed failure talking to a remote runtime.

    ``remote_code`` is the runtime's own error code (``runtime_stopped``...), used only to
    choose a mapping, never served. ``detail`` is for DEBUG logs only (it may hold a URL).
    """

    def __init__(
        self,
        code: str,
        *,
        status: int | None = None,
        remote_code: str | None = None,
        reason: str | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(code)
        self.code = code
        self.status = status
        self.remote_code = remote_code
        self.reason = reason
        """A safe, fixed explanation (never remote text), shown in the message."""
        self.detail = detail

    def safe_message(self, runtime_id: str) -> str:
        """A message naming the runtime id (and the runtime's error code, a checked token)
        only: safe to serve and to log at any level."""
        status = ""
        if self.status is not None:
            # The runtime's own code, as yoi's backend passes it on (contract-v2 section 1.8.3): one
            # of its snake_case tokens (checked when decoded), never its message.
            code = f" {self.remote_code}" if self.remote_code else ""
            status = f" (HTTP {self.status}{code})"
        template = _SAFE_MESSAGES.get(self.code, _UNEXPECTED_STATUS)
        text = template.format(rid=repr(runtime_id), status=status)
        return f"{text}: {self.reason}" if self.reason else text


class _RemoteErrorBody(msgspec.Struct):
    code: str


class _RemoteErrorEnvelope(msgspec.Struct):
    error: _RemoteErrorBody


_ERROR_DECODER: Final = msgspec.json.Decoder(_RemoteErrorEnvelope)


_REMOTE_CODE_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_FORBIDDEN_REASONS: Final = {
    "forbidden": "the token lacks the permission this request needs",
    "workspace_scope_required": "the credentials name no workspace",
    "server_scope_required": "the token names no server id",
    "workspace_owner_mismatch": "the workspace is bound to another server id at the runtime",
}
"""What a current runtime's 403 codes mean (contract-v2 section 4.5), shown as the reason."""


def failure_for_status(status: int, body: bytes) -> RemoteFailure:
    """Classify a non-2xx answer (contract section 3's failure classes)."""
    try:
        remote_code: str | None = _ERROR_DECODER.decode(body).error.code[:64]
    except (msgspec.DecodeError, msgspec.ValidationError):
        remote_code = None
    if remote_code is not None and not _REMOTE_CODE_RE.fullmatch(remote_code):
        remote_code = None  # not one of yoi's codes: never shown, never used
    if status == 401:
        code = AUTH_FAILED
    elif status == 403:
        reason = _FORBIDDEN_REASONS.get(remote_code or "")
        return RemoteFailure(FORBIDDEN, status=status, remote_code=remote_code, reason=reason)
    elif status == 404:
        code = WORKER_NOT_FOUND
    elif status in (405, 501):
        code = UNSUPPORTED
    else:
        code = HTTP_ERROR
    return RemoteFailure(code, status=status, remote_code=remote_code)


class RemoteResponse(msgspec.Struct, frozen=True):
    status: int
    body: bytes


class _ClosedUnanswered(Exception):
    """The connection ended (closed or reset) before a single byte of the answer came."""


class _Stream(Protocol):
    """What an exchange needs of a connection: trio's ``SSLStream`` or :class:`_TCPStream`."""

    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int) -> bytes | bytearray: ...


class _TCPStream:
    """A plain connection written and read with one scheduling round per actual wait.

    trio's ``SocketStream`` also yields to the scheduler after every call that did not
    have to wait (a checkpoint each), two or three more rounds per poll: about 5% of a
    polling daemon's CPU per poll (0.74 ms against 0.78 ms, same run of
    ``benchmarks/remote_freshness.py``). A request's cancel scope still bounds every wait.
    """

    __slots__ = ("_socket",)

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self._socket.send(view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._socket)

    async def receive_some(self, max_bytes: int) -> bytes:
        while True:
            try:
                return self._socket.recv(max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._socket)


class _Connection:
    """One HTTP/1.1 connection to the runtime: its stream and h11's state of it."""

    __slots__ = ("_poll", "_socket", "idle_since", "protocol", "stream")

    def __init__(self, stream: _Stream, sock: socket.socket | trio.socket.SocketType) -> None:
        self.stream = stream
        self._socket = sock
        self.protocol = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    def ended(self) -> bool:
        """Readable while idle: the runtime closed it (or sent what nobody asked for)."""
        return bool(self._poll.poll(0))

    def close(self) -> None:
        """Close at once: nothing is owed on a connection being dropped (an HTTPS
        runtime's close_notify included, as for any HTTP client)."""
        if isinstance(self._socket, socket.socket):
            trio.lowlevel.notify_closing(self._socket)
        self._socket.close()


class RemoteClient:
    """One runtime's HTTP/1.1 client: its keep-alive connections, base URL, token, timeout
    and size cap.

    Requests are written with h11 (HTTP/1.1's framing and keep-alive rules) straight onto
    trio streams. A poll's request is built once and sent again as long as its credentials
    stay the same; a general-purpose client (httpx, even its connection layer httpcore)
    builds models, takes locks and enters a dozen context managers per request, which was
    most of a poll's CPU (``benchmarks/remote_freshness.py``, ``benchmarks/README.md``).
    """

    def __init__(
        self, base_url: Secret, timeout: float, max_bytes: int, credentials: Credentials
    ) -> None:
        url = urlsplit(base_url.reveal())
        self._tls = url.scheme == "https"
        self._hostname = url.hostname or ""
        self._port = url.port or (443 if self._tls else 80)
        self._host_header = url.netloc.encode("ascii")
        self._prefix = url.path.rstrip("/")
        self._timeout = timeout
        self._max_bytes = max_bytes
        self.credentials = credentials
        self._prepared: dict[tuple[str, str, str], tuple[Secret | None, h11.Request]] = {}
        """Bodiless requests built once per method, path and permission, with the
        ``Authorization`` value they carry (rebuilt when the credentials give another)."""
        self._idle: list[_Connection] = []
        self._busy = 0
        self._closed = False
        self._slot_freed = trio.lowlevel.ParkingLot()

    async def get(self, path: str, permission: str) -> bytes:
        """GET a 2xx body, or raise a typed :class:`RemoteFailure`."""
        response = await self.request("GET", path, permission)
        if not 200 <= response.status < 300:
            raise failure_for_status(response.status, response.body)
        return response.body

    async def post(self, path: str, permission: str, body: bytes) -> RemoteResponse:
        return await self.request("POST", path, permission, body)

    def _build(
        self, method: str, path: str, authorization: Secret | None, body: bytes | None
    ) -> h11.Request:
        headers = [
            (b"Host", self._host_header),
            (b"Accept", b"application/json"),
            (b"Accept-Encoding", ACCEPT_ENCODING.encode()),
            (b"User-Agent", _USER_AGENT),
        ]
        if authorization is not None:
            headers.append((b"Authorization", authorization.reveal().encode("latin-1")))
        if body is not None:
            headers.append((b"Content-Type", b"application/json"))
            headers.append((b"Content-Length", str(len(body)).encode()))
        target = (self._prefix + path).encode("ascii")
        return h11.Request(method=method.encode("ascii"), target=target, headers=headers)

    def _prepare(self, method: str, path: str, permission: str, body: bytes | None) -> h11.Request:
        authorization = self.credentials.authorization(permission)
        if body is not None:
            return self._build(method, path, authorization, body)
        key = (method, path, permission)
        prepared = self._prepared.get(key)
        # The credentials hand out the same object while the value stays the same.
        if prepared is not None and prepared[0] is authorization:
            return prepared[1]
        if len(self._prepared) >= _MAX_PREPARED:
            self._prepared.clear()
        request = self._build(method, path, authorization, None)
        self._prepared[key] = (authorization, request)
        return request

    async def request(
        self, method: str, path: str, permission: str, body: bytes | None = None
    ) -> RemoteResponse:
        """One request under one overall deadline, reading at most ``max_bytes`` of body.

        ``permission`` is the one the route needs (``yoi_registryd.capability``): a minted
        capability token carries exactly it.
        """
        request = self._prepare(method, path, permission, body)
        with trio.CancelScope(deadline=trio.current_time() + self._timeout) as deadline:
            try:
                return await self._send(request, body)
            except _ClosedUnanswered:
                detail = f"{method} {path}: the connection closed before an answer"
                raise RemoteFailure(NETWORK_ERROR, detail=detail) from None
            except h11.ProtocolError as exc:
                # Named, not quoted: h11 quotes the offending bytes, which are the runtime's.
                detail = f"{method} {path}: {type(exc).__name__}: not a valid HTTP/1.1 answer"
                raise RemoteFailure(NETWORK_ERROR, detail=detail) from None
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise RemoteFailure(NETWORK_ERROR, detail=f"{method} {path}: {exc!r}") from None
        assert deadline.cancelled_caught
        raise RemoteFailure(TIMEOUT, detail=f"{method} {path}: overall deadline")

    async def _send(self, request: h11.Request, body: bytes | None) -> RemoteResponse:
        """Send on an idle connection (or a new one) and read the answer. A reused
        connection that ends before answering is one the runtime closed as it went idle:
        a GET (idempotent) is sent once more on a new connection; a POST is not, as the
        runtime may have acted on it."""
        retry = body is None
        fresh = False
        while True:
            connection, reused = await self._checkout(fresh)
            try:
                response, reusable = await self._exchange(connection, request, body)
            except _ClosedUnanswered:
                self._discard(connection)
                if reused and retry:
                    retry, fresh = False, True
                    continue
                raise
            except BaseException:
                self._discard(connection)
                raise
            if reusable:
                self._checkin(connection)
            else:
                self._discard(connection)
            return response

    async def _checkout(self, fresh: bool = False) -> tuple[_Connection, bool]:
        """A connection for one exchange (True: a kept-alive one; never with ``fresh``), at
        most ``_MAX_CONNECTIONS`` at once."""
        while self._busy >= _MAX_CONNECTIONS:
            await self._slot_freed.park()
        self._busy += 1
        now = trio.current_time()
        while self._idle and not fresh:
            connection = self._idle.pop()
            if now - connection.idle_since < _KEEPALIVE_EXPIRY and not connection.ended():
                return connection, True
            connection.close()
        try:
            return await self._connect(), False
        except BaseException:
            self._release()
            raise

    async def _connect(self) -> _Connection:
        tcp = await trio.open_tcp_stream(self._hostname, self._port)
        if not self._tls:
            # The connected socket itself (TCP_NODELAY set by trio), out of trio's wrapper.
            sock = socket.socket(fileno=tcp.socket.detach())
            sock.setblocking(False)
            return _Connection(_TCPStream(sock), sock)
        stream = trio.SSLStream(
            tcp, tls_context(), server_hostname=self._hostname, https_compatible=True
        )
        try:
            await stream.do_handshake()
        except BaseException:
            tcp.socket.close()
            raise
        return _Connection(stream, tcp.socket)

    def _checkin(self, connection: _Connection) -> None:
        if self._closed:  # the source stopped while this exchange ran
            self._discard(connection)
            return
        connection.idle_since = trio.current_time()
        self._idle.append(connection)
        if len(self._idle) > _MAX_IDLE:
            self._idle.pop(0).close()
        self._release()

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._release()

    def _release(self) -> None:
        self._busy -= 1
        self._slot_freed.unpark()

    def close(self) -> None:
        """Close the idle connections; one in use is closed when its exchange ends."""
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    async def _exchange(
        self, connection: _Connection, request: h11.Request, body: bytes | None
    ) -> tuple[RemoteResponse, bool]:
        """Write the request, read the answer: the response and whether the connection
        may be kept alive (h11's verdict: both sides done, no ``Connection: close``)."""
        protocol = connection.protocol
        data = protocol.send(request)
        if body is not None:
            data += protocol.send(h11.Data(data=body))
        data += protocol.send(_END)
        answered = [False]
        try:
            await connection.stream.send_all(data)
        except (trio.BrokenResourceError, ConnectionError):
            raise _ClosedUnanswered from None
        event = await self._next_event(connection, answered)
        while type(event) is h11.InformationalResponse:
            event = await self._next_event(connection, answered)
        if type(event) is not h11.Response:
            raise h11.RemoteProtocolError("no response")
        status = event.status_code
        limit = self._max_bytes
        encoding = b""
        for name, value in event.headers.raw_items():
            lowered = name.lower()
            if lowered == b"content-length" and value.isdigit():
                if len(value) > 19 or int(value) > limit:
                    raise RemoteFailure(MALFORMED, reason=_TOO_LARGE)
            elif lowered == b"content-encoding":
                encoding = value
        received = BoundedBody(encoding.decode("latin-1"), limit)
        while True:
            event = await self._next_event(connection, answered)
            if isinstance(event, h11.Data):
                received.feed(event.data)
            elif type(event) is h11.EndOfMessage:
                break
            else:
                raise h11.RemoteProtocolError("the answer ended early")
        data = received.finish()
        try:
            check_depth(data)
        except TooDeep:
            raise RemoteFailure(MALFORMED, reason=_TOO_DEEP) from None
        reusable = protocol.our_state is h11.DONE and protocol.their_state is h11.DONE
        if reusable:
            protocol.start_next_cycle()
        return RemoteResponse(status, data), reusable

    @staticmethod
    async def _next_event(connection: _Connection, answered: list[bool]) -> h11.Event:
        """h11's next event, reading from the stream as it needs; the connection ending
        before any byte of the answer is :class:`_ClosedUnanswered`."""
        protocol = connection.protocol
        while True:
            event = protocol.next_event()
            if event is not h11.NEED_DATA:
                if event is h11.PAUSED:
                    raise h11.RemoteProtocolError("more than one answer")
                return cast(h11.Event, event)
            try:
                chunk = await connection.stream.receive_some(_RECEIVE_BYTES)
            except (trio.BrokenResourceError, ConnectionError):
                if not answered[0]:
                    raise _ClosedUnanswered from None
                raise
            if not chunk and not answered[0]:
                raise _ClosedUnanswered
            answered[0] = True
            protocol.receive_data(cast(bytes, chunk))  # h11 takes a bytearray as well


_TOO_LARGE: Final = "the response is larger than max_response_bytes"
_TOO_DEEP: Final = f"the response nests JSON deeper than {MAX_JSON_DEPTH} levels"
ACCEPT_ENCODING: Final = "gzip, deflate"
"""The content codings :class:`BoundedBody` decodes, and so the only ones asked for."""
_WBITS: Final = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}


class BoundedBody:
    """A response body decoded as it arrives, never holding more than ``limit`` bytes of it.

    A decoder that inflates each compressed chunk whole (httpx's does) turns 64 KiB of a gzip
    bomb into 64 MiB before a size check could see them. Here the raw bytes are inflated with
    zlib's ``max_length``: output past the limit is never produced.
    """

    def __init__(self, content_encoding: str, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        coding = content_encoding.strip().lower()
        self._inflate = None
        if coding not in ("", "identity"):
            if coding not in _WBITS:
                raise RemoteFailure(MALFORMED, reason="the response has an unsupported encoding")
            self._inflate = zlib.decompressobj(_WBITS[coding])

    def feed(self, raw: bytes) -> None:
        inflate = self._inflate
        if inflate is None:
            self._keep(raw)
            return
        try:
            while raw and not inflate.eof:
                self._keep(inflate.decompress(raw, self._room()))
                raw = inflate.unconsumed_tail
        except zlib.error:
            raise RemoteFailure(
                MALFORMED, reason="the response is not validly compressed"
            ) from None
        if inflate.eof and (raw or inflate.unused_data):
            # Else a runtime could stream bytes after the compressed end until the deadline.
            raise RemoteFailure(MALFORMED, reason="the response has data after its compressed end")

    def finish(self) -> bytes:
        if self._inflate is not None:
            try:
                self._keep(self._inflate.flush(self._room()))
            except zlib.error:
                raise RemoteFailure(
                    MALFORMED, reason="the response is not validly compressed"
                ) from None
            if not self._inflate.eof:
                raise RemoteFailure(MALFORMED, reason="the response is not validly compressed")
        return b"".join(self._chunks)

    def _room(self) -> int:
        """How much more output may be produced: one byte past the limit tells it was hit."""
        return self._limit - self._size + 1

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise RemoteFailure(MALFORMED, reason=_TOO_LARGE)
        if data:
            self._chunks.append(data)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every remote client of the process: loading CAs is the costly part."""
    return ssl.create_default_context(cafile=certifi.where())


@contextmanager
def open_client(
    base_url: Secret, timeout: float, max_bytes: int, credentials: Credentials
) -> Iterator[RemoteClient]:
    """One runtime's client for as long as its source runs; its connections closed after.

    One client per runtime, each with its own few connections: nothing is walked per
    request, whatever the number of runtimes. No proxy variables, ``.netrc`` or redirects:
    nothing is read from the environment and nothing is followed.
    """
    client = RemoteClient(base_url, timeout, max_bytes, credentials)
    try:
        yield client
    finally:
        client.close()
