"""Which HTTP a connection speaks, and the bounds HTTP/2 gets when it is allowed.

hypercorn switches a cleartext connection to HTTP/2 on its own when the first request is the
prior-knowledge preface (``PRI * HTTP/2.0``) or carries ``Upgrade: h2c``. Unbounded, that
lets one peer hold the server: streams whose receive window is 0 keep their response, and
the app task sending it, forever (also after the peer disconnected), so connections never
end and memory grows by a response per stream.

So HTTP/2 is off unless ``server.http2`` says otherwise (:class:`Http11Only`: the preface is
answered with GOAWAY ``HTTP_1_1_REQUIRED``, an upgrade request is served over HTTP/1.1).
When on, :class:`BoundedH2Protocol` adds what HTTP/1.1 has and HTTP/2 needs besides:

* at most ``http2_max_streams`` concurrent streams (told to the peer; more is an error);
* a response held up by the peer's flow control for ``http2_stall_timeout`` is reset;
* at most ``http2_max_buffered_bytes`` of responses waiting for the peer's window per
  connection: a response that would pass it is reset, unless nothing else is buffered;
* a header block (HEADERS + CONTINUATION) must be complete within ``keep_alive_timeout``;
* a closed connection releases every buffer, and with them the tasks sending into them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Final

import h2.errors
import h2.exceptions
import trio
from hyperframe.frame import GoAwayFrame, SettingsFrame

from yoi_registryd.http.hypercorn_internals import (
    Body,
    Closed,
    Data,
    H2Protocol,
    H11Protocol,
    RawData,
    Updated,
)
from yoi_registryd.http.hypercorn_internals import Event as StreamEvent

REAP_INTERVAL_MAX: Final = 1.0


@dataclass(frozen=True)
class Http2Limits:
    """``[server]``'s HTTP/2 bounds (``http2_*``) and the header deadline it shares with
    HTTP/1.1 (``keep_alive_timeout``)."""

    max_streams: int
    stall_timeout: float
    max_buffered_bytes: int
    header_timeout: float


class Http2Refused(Exception):
    """The connection asked for HTTP/2 by prior knowledge while it is off: answered, closed."""


REFUSAL: Final = (
    SettingsFrame(0).serialize()
    + GoAwayFrame(
        0, last_stream_id=0, error_code=h2.errors.ErrorCodes.HTTP_1_1_REQUIRED
    ).serialize()
)
"""What an HTTP/2 client expects first (SETTINGS), then a GOAWAY telling it to use HTTP/1.1."""


class Http11Only(H11Protocol):
    """hypercorn's HTTP/1.1, without its switch to HTTP/2."""

    async def _check_protocol(self, event: Any) -> None:
        if event.method == b"PRI" and event.target == b"*" and event.http_version == b"2.0":
            await self.send(RawData(data=REFUSAL))
            await self.send(Closed())
            raise Http2Refused()
        # ``Upgrade: h2c`` is ignored: the request is answered over HTTP/1.1 (RFC 9110 §7.8).


class BoundedH2Protocol(H2Protocol):
    """hypercorn's HTTP/2 with the bounds the module docstring lists."""

    def __init__(self, *args: Any, limits: Http2Limits) -> None:
        super().__init__(*args)
        self.limits = limits
        self._stalled_since: dict[int, float] = {}
        self._headers_since: float | None = None
        self._ended = trio.Event()
        self.going_away = False
        """Shutting down: a stream the peer opens now is refused, not served."""

    async def initiate(
        self, headers: list[tuple[bytes, bytes]] | None = None, settings: bytes | None = None
    ) -> None:
        await super().initiate(headers, settings)
        if not self.streams:
            # The HTTP/1.1 request that switched to HTTP/2 stopped the idle timer; hypercorn
            # restarts it only when a stream ends, so an idle connection lived for ever.
            await self.send(Updated(idle=True))
        self.task_group.spawn(self._reap)

    @property
    def buffered_bytes(self) -> int:
        return sum(len(buffer.buffer) for buffer in self.stream_buffers.values())

    async def handle(self, event: Any) -> None:
        await super().handle(event)
        if isinstance(event, RawData):
            pending = getattr(self.connection.incoming_buffer, "_headers_buffer", None)
            if not pending:
                self._headers_since = None
            elif self._headers_since is None:
                self._headers_since = trio.current_time()
        elif isinstance(event, Closed):
            await self._release_all()

    async def _release_all(self) -> None:
        """The connection is gone: free every buffer, which wakes the tasks sending into
        them (hypercorn leaves them waiting for a window that will never open)."""
        self.closed = True
        self._ended.set()
        for buffer in list(self.stream_buffers.values()):
            await buffer.close()
        self.stream_buffers.clear()
        self._stalled_since.clear()

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, Body | Data) and event.stream_id in self.stream_buffers:
            held = self.buffered_bytes
            if held and held + len(event.data) > self.limits.max_buffered_bytes:
                await self._reset(event.stream_id, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                return
        await super().stream_send(event)

    async def _reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        """Reset a stream and free its buffer. hypercorn's sending task drops the stream
        when it next looks at it (its flow-control window is gone with it)."""
        self._stalled_since.pop(stream_id, None)
        with contextlib.suppress(h2.exceptions.ProtocolError):  # already closed
            self.connection.reset_stream(stream_id, code)
        buffer = self.stream_buffers.get(stream_id)
        if buffer is not None:
            await buffer.close()
        await self._close_stream(stream_id)
        await self._window_updated(stream_id)
        await self._flush()

    async def _reap(self) -> None:
        """Reset stalled streams; end a connection whose header block drips."""
        tick = min(REAP_INTERVAL_MAX, self.limits.stall_timeout / 4)
        while not self.closed:
            with trio.move_on_after(tick):
                await self._ended.wait()
            now = trio.current_time()
            for stream_id, buffer in list(self.stream_buffers.items()):
                if not buffer.buffer:
                    self._stalled_since.pop(stream_id, None)
                    continue
                since = self._stalled_since.setdefault(stream_id, now)
                if now - since >= self.limits.stall_timeout:
                    await self._reset(stream_id, h2.errors.ErrorCodes.CANCEL)
            started = self._headers_since
            if started is not None and now - started >= self.limits.header_timeout:
                await self.goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                await self.send(Closed())
                return

    async def _send_data(self, stream_id: int) -> None:
        buffer = self.stream_buffers.get(stream_id)
        before = len(buffer.buffer) if buffer is not None else 0
        await super()._send_data(stream_id)
        if buffer is not None and len(buffer.buffer) < before:
            self._stalled_since.pop(stream_id, None)  # progress: the peer reads

    @property
    def answered(self) -> bool:
        """Every response this connection took is on the wire (hypercorn lets a stream's
        sender go once its buffer is taken, before the last DATA and END_STREAM are sent:
        closing then cut answers that were already audited)."""
        return not self.streams and not self.stream_buffers

    def refuse_new_streams(self) -> None:
        """Reset every stream the peer opens from now on with ``REFUSED_STREAM`` (RFC 9113
        §8.7: not processed, safe to retry); streams already open finish."""
        self.going_away = True

    async def goaway(self, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """Tell the peer no stream after the last one it opened will be served. The h2
        library sends nothing after it: only once every answer is out (or to end the
        connection)."""
        self.going_away = True
        with contextlib.suppress(
            h2.exceptions.ProtocolError,
            trio.BusyResourceError,  # hypercorn is closing the connection itself
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ):
            self.connection.close_connection(code)
            await self._flush()

    async def _create_stream(self, request: Any) -> None:
        if self.going_away:
            # REFUSED_STREAM: the peer knows it was not processed.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.connection.reset_stream(request.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        await super()._create_stream(request)
