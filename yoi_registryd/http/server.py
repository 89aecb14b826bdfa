"""Serving the app: hypercorn's HTTP handling, with a shutdown that loses no accepted request.

``hypercorn.trio.serve`` shuts down by closing its listeners, which resets the connections
still queued in the kernel, and by closing every connection it thinks idle. That includes
connections whose request it has not read yet, and races with a request that arrives on a
keep-alive connection at that moment: the app handles it but the response is lost. So this
module runs hypercorn's per-connection server itself and shuts down the way Go's
``http.Server.Shutdown`` does:

1. stop the kernel from queueing new connections on the listeners this process bound (a
   TCP listener drops new SYNs, so clients retry and then see "connection refused"; a
   unix listener refuses at once), then accept everything already queued. Listeners
   passed by systemd are shared with the socket unit and left alone: what is queued on
   them waits for the next start of the service;
2. from then on every response says ``Connection: close``, and a connection is closed
   as soon as it is idle: no request in flight, nothing received since its last response
   and nothing waiting to be read. A connection that has not sent its first request yet
   gets ``fresh_grace`` seconds to do so;
3. requests still running when ``config.graceful_timeout`` passes are cancelled, and every
   connection still open is closed, also one whose client does not read: nothing a peer
   does keeps the process beyond the grace period (nor beyond a second signal).

HTTP/2 connections (only with ``server.http2``; see ``http/http2.py``) refuse new streams
(``REFUSED_STREAM``: the peer may retry them elsewhere) from step 2, and get GOAWAY and FIN
once their open streams are answered.
"""

from __future__ import annotations

import array
import contextlib
import contextvars
import errno
import logging
import math
import select
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any, Final, cast

import trio
from hypercorn.config import Config as HypercornConfig

from yoi_registryd.backoff import Backoff
from yoi_registryd.errors import RegistryError, TooManyConnections, render_error
from yoi_registryd.http import reason_phrase
from yoi_registryd.http.http2 import BoundedH2Protocol, Http2Limits, Http2Refused, Http11Only
from yoi_registryd.http.hypercorn_internals import (
    Closed,
    ConnectionState,
    H2CProtocolRequiredError,
    H2ProtocolAssumedError,
    Lifespan,
    ProtocolWrapper,
    RawData,
    TaskGroup,
    TCPServer,
    Updated,
    WorkerContext,
    parse_socket_addr,
    wrap_app,
)

log = logging.getLogger(__name__)

_CAPACITY_ERRNOS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_RETRY: Final = 0.1
"""Seconds between tries to accept while out of descriptors or memory (a steady retry:
connections close at their own pace, waiting longer would only delay the next client)."""
_SO_ATTACH_FILTER: Final = 26  # <asm-generic/socket.h>; not exported by the socket module
_DRAIN_LIMIT: Final = 2.0
"""At most this long accepting queued connections at shutdown (a flood cannot hold it)."""
_DRAIN_SETTLE: Final = 0.1
"""The queue must stay empty this long: handshakes begun before new SYNs were dropped
complete within a round trip."""

_H2_POLL: Final = 0.01
"""How often the shutdown looks whether an HTTP/2 connection has sent all its answers."""
_H2_LINGER: Final = 1.0
"""At shutdown, how long an HTTP/2 connection that has all its answers waits for its peer
to close before it is closed (a peer that keeps it open cannot hold the shutdown)."""

# Classic BPF, run on the TCP header: drop a segment whose flags are SYN without ACK (a new
# connection attempt), keep everything else (handshakes already under way, established
# connections). struct sock_filter is {u16 code; u8 jt; u8 jf; u32 k}.
_DROP_NEW_SYN: Final = b"".join(
    struct.pack("HBBI", *insn)
    for insn in (
        (0x30, 0, 0, 13),  # ldb [13]          the TCP flags byte
        (0x54, 0, 0, 0x12),  # and #(SYN|ACK)
        (0x15, 0, 1, 0x02),  # jeq #SYN, drop, keep
        (0x06, 0, 0, 0),  # drop: ret #0
        (0x06, 0, 0, 0xFFFFFFFF),  # keep: ret #-1 (the whole segment)
    )
)


class _Connection:
    """What the shutdown needs to know about one accepted connection."""

    __slots__ = (
        "active",
        "fin_sent_at",
        "h2",
        "peer_closed",
        "received",
        "receives",
        "requests",
        "sending",
        "stream",
    )

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.requests = 0
        """Requests that reached the app on this connection."""
        self.active = 0
        """Requests whose response has not been sent completely."""
        self.received = False
        """Bytes arrived since the last complete response (a request may be on its way)."""
        self.receives = 0
        """Reads that returned bytes, to tell whether any arrived during a response."""
        self.peer_closed = False
        """The client closed its side: no request is coming."""
        self.h2: BoundedH2Protocol | None = None
        """Set once the connection speaks HTTP/2."""
        self.fin_sent_at: float | None = None
        """HTTP/2 at shutdown: when our side was shut down (FIN after the last answer)."""
        self.sending: set[trio.CancelScope] = set()
        """The shielded sends in progress, cancelled when the connection is forced closed."""

    def response_sent(self, receives_before: int) -> None:
        self.active -= 1
        if self.receives == receives_before:
            self.received = False

    def force_close(self) -> None:
        """Close now, whatever is in flight: wakes every task blocked on this connection."""
        for scope in self.sending:
            scope.cancel()
        self.stream.socket.close()

    def idle(self) -> bool:
        """Closing now loses nothing: nothing in flight, nothing received or waiting.
        For HTTP/2, once GOAWAY went out: a stream the peer opens after it is not served,
        and the peer knows it (GOAWAY names the last stream served)."""
        if self.h2 is not None:
            return not self.active and self.h2.answered
        if self.active or self.received:
            return False
        fd = self.stream.socket.fileno()
        if fd < 0:
            return True  # hypercorn closed it already
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return not poller.poll(0)


_CONNECTION: contextvars.ContextVar[_Connection] = contextvars.ContextVar("connection")


class _Connections:
    """The open connections, and whether the server is closing them."""

    def __init__(self) -> None:
        self.open: set[_Connection] = set()
        self.closing = False
        self._changed = trio.Event()

    def changed(self) -> None:
        """Wake :meth:`close_when_idle`. Only it waits, and only once closing has begun: while
        serving this costs nothing (it runs for every response and every closed peer)."""
        if self.closing:
            self._changed.set()
            self._changed = trio.Event()

    async def close_when_idle(self, fresh_grace: float) -> None:
        """Close each connection once it is idle; return when none is left open."""
        self.closing = True
        for conn in self.open:
            if conn.h2 is not None:
                conn.h2.refuse_new_streams()
        fresh_until = trio.current_time() + fresh_grace
        while self.open:
            now = trio.current_time()
            for conn in list(self.open):
                if conn.h2 is not None:
                    await self._close_h2_when_answered(conn, now)
                elif not conn.active and (
                    conn.peer_closed or (conn.idle() and (conn.requests or now >= fresh_until))
                ):
                    # No checkpoint between the check and the close: nothing can arrive
                    # for hypercorn in between. The connection's task sees it closed.
                    conn.stream.socket.close()
                    self.open.discard(conn)
            if not self.open:
                return
            wake = fresh_until if now < fresh_until else float("inf")
            if any(conn.h2 is not None for conn in self.open):
                wake = min(wake, now + _H2_POLL)  # its last frames go out without a signal
            with trio.move_on_at(wake):
                await self._changed.wait()

    async def _close_h2_when_answered(self, conn: _Connection, now: float) -> None:
        """Once every answer is sent: GOAWAY and FIN, then close when the peer closes its
        side (or after :data:`_H2_LINGER`). GOAWAY waits for the last answer because the
        h2 library sends nothing on a connection after it (hypercorn then drops the rest of
        the answers in flight silently). Closing at once would reset the connection, since
        an HTTP/2 peer keeps sending frames (WINDOW_UPDATE, acknowledgements), and a reset
        destroys the answers the peer has not read yet."""
        assert conn.h2 is not None
        if conn.peer_closed and not conn.active:
            conn.stream.socket.close()
            self.open.discard(conn)
        elif conn.fin_sent_at is None:
            if conn.idle():
                conn.fin_sent_at = now
                await conn.h2.goaway()
                with contextlib.suppress(OSError):
                    conn.stream.socket.shutdown(socket.SHUT_WR)
        elif conn.peer_closed or now >= conn.fin_sent_at + _H2_LINGER:
            conn.stream.socket.close()
            self.open.discard(conn)

    def force_close(self) -> None:
        """Close every connection still open (the grace period ran out, or a second signal)."""
        for conn in self.open:
            conn.force_close()


class _AppAdapter:
    """ASGI wrapper between hypercorn and the app.

    It keeps each connection's request bookkeeping (hypercorn runs the app in a task
    spawned from the connection's task, so the context variable is inherited), and once
    the server is closing it marks every response ``Connection: close``.

    It also shields the app's body sends: hypercorn finishes a response inside the last
    one (recycling the connection for keep-alive, or closing it), and quart-trio cancels
    that very task as soon as the disconnect this causes reaches it, so unshielded that
    bookkeeping is cut short and the connection is left open. Writing to the socket itself
    is shielded by hypercorn already. A shielded send is registered with its connection so
    that a forced close can still end it (an HTTP/2 stream waiting for flow control). The
    start message writes the head (a write hypercorn shields) and finishes nothing: it is
    passed on as it is. This runs for every request: what only the shutdown needs is done
    once it has begun.
    """

    def __init__(self, app: Any, connections: _Connections) -> None:
        self.app = app
        self.connections = connections

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        conn = _CONNECTION.get(None)
        if conn is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn.requests += 1
        conn.active += 1
        responding = True

        def sent(receives_before: int) -> None:
            nonlocal responding
            if responding:
                responding = False
                conn.response_sent(receives_before)
                self.connections.changed()

        async def tracked_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                # hypercorn writes the head here (the write itself shielded) and
                # finishes nothing with it: nothing to shield, nothing to finish.
                if self.connections.closing:
                    headers = [*message["headers"], (b"connection", b"close")]
                    message = {**message, "headers": headers}
                await send(message)
                return
            final = message["type"] == "http.response.body" and not message.get("more_body")
            receives_before = conn.receives
            with trio.CancelScope(shield=True) as sending:
                conn.sending.add(sending)
                try:
                    await send(message)
                finally:
                    conn.sending.discard(sending)
            if final:
                # After the send: until the response is written the connection is busy.
                # Bytes read meanwhile belong to the next request, which keeps it busy.
                sent(receives_before)

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            sent(conn.receives)


class _Protocols(ProtocolWrapper):
    """hypercorn's choice of HTTP/1.1 or HTTP/2 for a connection, with HTTP/2 refused
    (``http2`` None) or bounded (``http/http2.py``)."""

    def __init__(self, *args: Any, http2: Http2Limits | None) -> None:
        super().__init__(*args)
        self.args = args[:-1]  # the protocols take all but ``alpn_protocol``
        self.http2 = http2
        if http2 is None:
            self.protocol = Http11Only(*self.args)

    def _switch_to_h2(self) -> BoundedH2Protocol:
        assert self.http2 is not None
        protocol = BoundedH2Protocol(*self.args, limits=self.http2)
        self.protocol = protocol
        conn = _CONNECTION.get(None)
        if conn is not None:
            conn.h2 = protocol
        return protocol

    async def handle(self, event: Any) -> None:
        try:
            return await self.protocol.handle(event)
        except Http2Refused:
            return None
        except H2ProtocolAssumedError as error:
            h2 = self._switch_to_h2()
            await h2.initiate()
            data = error.data
        except H2CProtocolRequiredError as error:
            h2 = self._switch_to_h2()
            await h2.initiate(error.headers, error.settings)
            data = error.data
        if data:
            await h2.handle(RawData(data=data))
        return None


class _TCPServer(TCPServer):
    """hypercorn's connection server for plain (not TLS) streams, speaking HTTP/2 only if
    allowed, ending as soon as the client has gone, and cheaper per request.

    hypercorn's read loop returns once the peer closed and every request it sent was
    answered, but its keep-alive timer lives on, and with it the connection (socket in
    CLOSE-WAIT, task, a place under ``max_connections``) for up to ``keep_alive_timeout``:
    a client that opens and closes connections quickly would fill the server.

    Per request, hypercorn stops its keep-alive timer task and starts a new one (a task
    spawned and started, two lock acquisitions), and takes its send lock with a trip
    through the scheduler for every write, also for the empty write that ends a body with
    a Content-Length. Here the timer is one task per connection whose deadline moves, the
    lock is taken without a checkpoint when it is free (``send_all`` checkpoints anyway),
    and an empty write is skipped: the same bytes and the same timeouts, with a fraction of
    the scheduling (about 30% fewer instructions per request for a 1,000-worker list,
    measured with callgrind).
    """

    def __init__(self, *args: Any, http2: Http2Limits | None) -> None:
        super().__init__(*args)
        self.http2 = http2
        self.reading = True
        """The read loop runs: the client may still send."""
        self.idle_deadline = trio.CancelScope()
        """Its deadline is when the idle connection is closed (infinite while busy)."""
        self.keep_alive = trio.CancelScope()
        """The keep-alive timer's task, cancelled (without closing) once reading ends."""

    async def run(self) -> None:
        """As hypercorn's, without TLS, with :class:`_Protocols`."""
        sock = self.stream.socket
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = _Protocols(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    False,
                    client,
                    server,
                    self.protocol_send,
                    "http/1.1",
                    http2=self.http2,
                )
                await self.protocol.initiate()
                self._idle(True)
                task_group.spawn(self._close_when_kept_idle)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    def _idle(self, idle: bool) -> None:
        """Start (``idle``) or stop the keep-alive timer."""
        timeout = self.config.keep_alive_timeout
        self.idle_deadline.deadline = trio.current_time() + timeout if idle else math.inf

    async def _close_when_kept_idle(self) -> None:
        """hypercorn's keep-alive timer (``_idle_timeout``) as one task per connection."""
        with self.keep_alive:
            with self.idle_deadline:
                await self.context.terminated.wait()
            with trio.CancelScope(shield=True):
                await self._initiate_server_close()

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            self.reading = False
            self.keep_alive.cancel()

    async def protocol_send(self, event: Any) -> None:
        if isinstance(event, RawData):
            if not event.data:
                return  # h11 ends a body with a Content-Length with no bytes at all
            lock = self.send_lock
            if lock.locked():
                await lock.acquire()
            else:
                # Free: taken without a trip through the scheduler. send_all still yields,
                # but under the shield below it is not a cancel point: a cancelled sender
                # still writes what it was given (the response head included).
                lock.acquire_nowait()
            try:
                with trio.CancelScope(shield=True):
                    await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
            finally:
                lock.release()
        elif isinstance(event, Updated):
            # A stream that ends after the client has gone (HTTP/2: the tasks released when
            # its buffers are) reports the connection idle, which would start the keep-alive
            # timer again and hold the dead connection for keep_alive_timeout.
            if self.reading:
                self._idle(event.idle)
        else:
            await super().protocol_send(event)


class _TrackedStream(trio.abc.HalfCloseableStream):
    """A socket stream that notes what the shutdown needs: bytes arrived, peer closed."""

    def __init__(self, conn: _Connection, connections: _Connections):
        self._stream = conn.stream
        self.socket = conn.stream.socket
        self._conn = conn
        self._connections = connections

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError:
            self._conn.peer_closed = True
            self._connections.changed()
            raise
        if data:
            self._conn.received = True
            self._conn.receives += 1
        else:
            self._conn.peer_closed = True
            self._connections.changed()
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


def _refuse_new_connections(sock: socket.socket) -> None:
    """Stop the kernel from queueing new connections on ``sock``; queued ones stay."""
    try:
        if sock.family == socket.AF_UNIX:
            sock.shutdown(socket.SHUT_RD)  # connect() now fails with ECONNREFUSED
        else:
            # struct sock_fprog {unsigned short len; struct sock_filter *filter;}. An array
            # gives the program an address without ctypes (whose callbacks need W+X memory,
            # which MemoryDenyWriteExecute= forbids); the kernel copies it during the call.
            program = array.array("B", _DROP_NEW_SYN)
            fprog = struct.pack("HP", len(_DROP_NEW_SYN) // 8, program.buffer_info()[0])
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError as exc:  # best effort: draining still serves what is queued
        log.debug("cannot stop new connections on %s before closing: %s", sock, exc)


def _accept_queued(sock: socket.socket) -> list[socket.socket]:
    """The connections queued on a non-blocking listener right now."""
    accepted: list[socket.socket] = []
    while True:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return accepted
        except OSError as exc:
            if exc.errno == errno.ECONNABORTED:
                continue
            # EINVAL: a unix listener after shutdown() has nothing left.
            if exc.errno not in (errno.EINVAL, *_CAPACITY_ERRNOS):
                log.warning("accepting queued connections at shutdown failed: %s", exc)
            return accepted
        accepted.append(conn)


def _refusal(error: RegistryError) -> bytes:
    """The whole HTTP/1.1 answer to a connection refused before any request was read."""
    status, headers, body = render_error(error, None)
    head = [
        b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode("ascii")),
        *(b"%s: %s" % header for header in headers),
        b"connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


REFUSE_S: Final = 1.0
"""How long a refused connection may take to get its answer and close."""


async def refuse_connection(stream: trio.SocketStream) -> None:
    """Answer a connection over the limit with a typed 503 without running any app code.

    The request is read (what has arrived, within :data:`REFUSE_S`) only so that closing
    does not reset the connection before the client has read the answer.
    """
    with trio.move_on_after(REFUSE_S):
        try:
            await stream.send_all(_refusal(TooManyConnections()))
            await stream.send_eof()
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)


async def serve(
    app: Any,
    config: HypercornConfig,
    sockets: Sequence[socket.socket],
    shutdown_trigger: Callable[[], Awaitable[None]],
    *,
    inherited: bool = False,
    fresh_grace: float = 2.0,
    max_connections: int | None = None,
    http2: Http2Limits | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the listening ``sockets`` until ``shutdown_trigger`` returns, then
    shut down as the module docstring says. ``inherited``: the sockets belong to systemd's
    socket unit. This process's descriptors for them are closed on return.
    ``max_connections``: a connection beyond it is answered 503 and closed at once.
    ``http2``: serve HTTP/2 within these limits; None: HTTP/1.1 only."""
    reason_phrase.install()
    connections = _Connections()
    wrapped = wrap_app(_AppAdapter(app, connections), config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)

    async def handle(stream: trio.SocketStream) -> None:
        conn = _Connection(stream)
        _CONNECTION.set(conn)
        connections.open.add(conn)
        try:
            state = ConnectionState(lifespan_state.copy())
            tracked = _TrackedStream(conn, connections)
            # TCPServer is annotated for TLS streams; it serves plain ones as well.
            await _TCPServer(wrapped, config, context, state, cast(Any, tracked), http2=http2)
        finally:
            connections.open.discard(conn)
            connections.changed()
            await trio.aclose_forcefully(stream)

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        retry = Backoff(_ACCEPT_RETRY, _ACCEPT_RETRY)
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                delay = retry.next_delay()
                log.error(
                    "cannot accept a connection (%s); retrying in %.0fms",
                    exc.strerror,
                    delay * 1000,
                )
                await trio.sleep(delay)
            else:
                retry.reset()
                if max_connections is not None and len(connections.open) >= max_connections:
                    nursery.start_soon(refuse_connection, stream)
                else:
                    nursery.start_soon(handle, stream)

    async def drain(nursery: trio.Nursery) -> None:
        for sock in sockets:
            _refuse_new_connections(sock)
        quiet_since: float | None = None
        deadline = trio.current_time() + _DRAIN_LIMIT
        while (now := trio.current_time()) < deadline:
            queued = [conn for sock in sockets for conn in _accept_queued(sock)]
            for conn in queued:
                nursery.start_soon(handle, trio.SocketStream(trio.socket.from_stdlib_socket(conn)))
            if queued:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= _DRAIN_SETTLE:
                return
            await trio.sleep(0.005)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connection_nursery:
            listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(accept_loop, listener, connection_nursery)
                task_status.started()
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            try:
                with trio.move_on_after(config.graceful_timeout) as grace:
                    if not inherited:
                        await drain(connection_nursery)
                    for listener in listeners:
                        await listener.aclose()
                    await connections.close_when_idle(fresh_grace)
                if grace.cancelled_caught:
                    log.warning(
                        "shutdown grace of %gs passed: closing %d connections",
                        config.graceful_timeout,
                        len(connections.open),
                    )
            finally:
                # Also on cancellation (a second signal): shielded sends to a client that
                # does not read would otherwise hold the connection nursery open.
                connections.force_close()
                connection_nursery.cancel_scope.cancel()
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
