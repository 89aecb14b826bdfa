"""An HTTP/2 client over a real loopback socket, built on the ``h2`` library: a well-behaved
one for answers, and the knobs an attacker turns (a receive window of 0, many streams, a
header block dripped one CONTINUATION frame at a time, disconnecting mid-response)."""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio
from hyperframe.frame import ContinuationFrame, HeadersFrame

PRIOR_KNOWLEDGE_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Answer:
    status: int | None = None
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None
    """The error code of a RST_STREAM the server sent, if it did."""


class H2Client:
    """One HTTP/2 connection (prior knowledge, cleartext) and what the server sent on it."""

    def __init__(self, stream: trio.SocketStream, *, window: int = 65535) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.window = window
        self.answers: dict[int, Answer] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.closed = False
        """The server closed the connection (EOF or reset)."""

    @classmethod
    async def connect(cls, port: int, *, window: int = 65535) -> H2Client:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port), window=window)
        client.conn.initiate_connection()
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    def request(self, path: str, headers: dict[str, str] | None = None) -> int:
        """Open a GET stream for ``path``; the caller flushes."""
        stream_id: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"registry"),
                (b":path", path.encode()),
                *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
            ],
            end_stream=True,
        )
        self.answers[stream_id] = Answer()
        return stream_id

    def refused(self, stream_id: int) -> bool:
        """The server said (GOAWAY) that it did not and will not process this stream."""
        last = None if self.terminated is None else self.terminated.last_stream_id
        return last is not None and stream_id > last

    async def receive_once(self) -> bool:
        """Read what the server sent once and apply it; False once the server closed the
        connection (after a GOAWAY, streams it names may still be answered)."""
        if self.closed:
            return False
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = True
            return False
        for event in self.conn.receive_data(data):
            self._apply(event)
        try:
            await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
        return not self.closed

    def _apply(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            headers = dict(event.headers)
            self.answers[event.stream_id].status = int(headers[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            self.answers[event.stream_id].body += event.data
            if self.window:  # a window of 0 never reads
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.answers[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.answers[event.stream_id].reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event

    async def get(
        self, path: str, headers: dict[str, str] | None = None, deadline_s: float = 10.0
    ) -> Answer:
        """A well-behaved request: send it and read until its answer is complete (or the
        connection ends: then ``ended`` is False)."""
        stream_id = self.request(path, headers)
        await self.flush()
        answer = self.answers[stream_id]
        with trio.fail_after(deadline_s):
            while not (answer.ended or answer.reset is not None or self.refused(stream_id)):
                if not await self.receive_once():
                    break
        return answer

    async def drip_headers(self, path: str, fragments: int, interval: float) -> int:
        """Send a request's header block as a HEADERS frame without END_HEADERS followed by
        ``fragments`` one-byte CONTINUATION frames, one every ``interval`` seconds (never the
        last). Returns how many were sent before the server closed the connection."""
        block = self.conn.encoder.encode(
            [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/livez")]
            + [(b"x-drip", b"x" * 40)] * 200
        )
        stream_id = self.conn.get_next_available_stream_id()
        await self.stream.send_all(
            HeadersFrame(stream_id, data=block[:1], flags=["END_STREAM"]).serialize()
        )
        for sent in range(fragments):
            try:
                await self.stream.send_all(
                    ContinuationFrame(stream_id, data=block[1 + sent : 2 + sent]).serialize()
                )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return sent
            await trio.sleep(interval)  # the attacker's pace, not synchronisation
        return fragments

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
