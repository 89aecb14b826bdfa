"""Serving the app: hypercorn's connection handling, with a shutdown that loses no request.

``hypercorn.trio.serve`` closes its listeners, resetting every connection still queued in
the kernel, and in the same step closes each connection it considers idle, including
connections it accepted whose request it has not read yet. Under load both reset requests
that clients had already sent on connections the kernel had already accepted. So this
module runs hypercorn's per-connection server itself and shuts down in this order (Go's
``http.Server.Shutdown`` is the model):

1. stop the kernel from queueing new connections on the listeners this process bound
   (a TCP listener drops new SYNs, so clients retry and then see "connection refused"; a
   unix listener refuses at once), then accept everything already queued. Listeners
   passed by systemd are shared with the socket unit and left alone: what is queued on
   them waits for the next start of the service;
2. give each accepted connection that has not started a request yet up to
   ``fresh_grace`` seconds to do so;
3. only then tell hypercorn to close idle connections and to end each busy one after its
   response; requests still running when ``config.graceful_timeout`` passes are cancelled.
"""

from __future__ import annotations

import array
import contextvars
import errno
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

log = logging.getLogger(__name__)

_CAPACITY_ERRNOS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_SO_ATTACH_FILTER: Final = 26  # <asm-generic/socket.h>; not exported by the socket module
_DRAIN_LIMIT: Final = 2.0
"""At most this long accepting queued connections at shutdown (a flood cannot hold it)."""
_DRAIN_SETTLE: Final = 0.1
"""The queue must stay empty this long: handshakes begun before new SYNs were dropped
complete within a round trip."""

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
    __slots__ = ("peer_closed", "started")

    def __init__(self) -> None:
        self.started = False
        """A request (or the first of several) has reached the app."""
        self.peer_closed = False
        """The client closed its side: no request is coming."""

    @property
    def fresh(self) -> bool:
        """Accepted, and its first request may still be on its way."""
        return not self.started and not self.peer_closed


_CONNECTION: contextvars.ContextVar[_Connection] = contextvars.ContextVar("connection")


class _Connections:
    """The open connections, to tell when none is still waiting for its first request."""

    def __init__(self) -> None:
        self.open: set[_Connection] = set()
        self._changed = trio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def fresh(self) -> int:
        return sum(1 for c in self.open if c.fresh)

    async def wait_until_none_fresh(self) -> None:
        while self.fresh():
            await self._changed.wait()


class _AppAdapter:
    """ASGI wrapper between hypercorn and the app.

    It marks the connection a request arrived on (hypercorn runs the app in a task spawned
    from the connection's task, so the context variable is inherited). And it shields the
    app's ``send``: hypercorn finishes a response inside the app's last send (it recycles
    the connection for keep-alive, or closes it), and quart-trio cancels that very task as
    soon as the disconnect this causes reaches it, so unshielded that bookkeeping is cut
    short: connections are then neither closed after ``Connection: close`` nor closed when
    idle at shutdown. Sending to the socket itself is shielded by hypercorn already.
    """

    def __init__(self, app: Any, connections: _Connections) -> None:
        self.app = app
        self.connections = connections

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        conn = _CONNECTION.get(None)
        if conn is not None and not conn.started:
            conn.started = True
            self.connections.changed()

        async def shielded_send(message: Any) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        await self.app(scope, receive, shielded_send)


class _TrackedStream(trio.abc.HalfCloseableStream):
    """A socket stream that notes when the client closed its side (hypercorn keeps such a
    connection until its idle timer, and it must not hold the shutdown)."""

    def __init__(self, stream: trio.SocketStream, conn: _Connection, connections: _Connections):
        self._stream = stream
        self.socket = stream.socket
        self._conn = conn
        self._connections = connections

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError:
            self._peer_closed()
            raise
        if not data:
            self._peer_closed()
        return bytes(data)

    def _peer_closed(self) -> None:
        if not self._conn.peer_closed:
            self._conn.peer_closed = True
            self._connections.changed()

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
            # gives the program an address without ctypes (whose import needs W+X memory,
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


async def serve(
    app: Any,
    config: HypercornConfig,
    sockets: Sequence[socket.socket],
    shutdown_trigger: Callable[[], Awaitable[None]],
    *,
    inherited: bool = False,
    fresh_grace: float = 2.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the listening ``sockets`` until ``shutdown_trigger`` returns, then
    shut down as the module docstring says. ``inherited``: the sockets belong to systemd's
    socket unit. This process's descriptors for them are closed on return."""
    connections = _Connections()
    wrapped = wrap_app(_AppAdapter(app, connections), config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)

    async def handle(stream: trio.SocketStream) -> None:
        conn = _Connection()
        _CONNECTION.set(conn)
        connections.open.add(conn)
        try:
            state = ConnectionState(lifespan_state.copy())
            tracked = _TrackedStream(stream, conn, connections)
            # TCPServer is annotated for TLS streams; it serves plain ones as well.
            await TCPServer(wrapped, config, context, state, cast(Any, tracked))
        finally:
            connections.open.discard(conn)
            connections.changed()
            await trio.aclose_forcefully(stream)

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                log.error("cannot accept a connection (%s); retrying in 100ms", exc.strerror)
                await trio.sleep(0.1)
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
            if not inherited:
                await drain(connection_nursery)
            for listener in listeners:
                await listener.aclose()
            with trio.move_on_after(min(fresh_grace, config.graceful_timeout)):
                await connections.wait_until_none_fresh()
            await context.terminated.set()
            connection_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
