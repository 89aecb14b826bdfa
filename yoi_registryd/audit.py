"""The audit trail: one record per request, queued, batched and written by one task.

Every request that reaches the API (denied and failed ones included) yields one
:class:`AuditRecord`. Requests hand records to :class:`AuditTrail` through a bounded queue;
when the queue is full the request waits for room rather than dropping a record. One task
takes records off the queue in batches and gives each batch to the configured
:class:`AuditSink`: the default appends JSON lines to a file and fsyncs once per batch, so
many concurrent requests share one fsync; ``stderr`` sends the lines to the journal; a
custom sink is named as ``module:attribute``.

``audit.durability = "before_response"`` makes a request wait, before its response starts,
until its record is written and fsynced (group commit: one fsync for every record that
arrived while the previous one ran). ``audit.chain = true`` links each record to the one
before it (``seq`` and ``prev``, see :class:`ChainedRecord`), so that ``yoi-registryd audit
verify`` (``audit_verify.py``) finds a record changed, removed or reordered.

Records hold ids, names and numbers only: never a token, a URL, a path, a query or a body.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol, runtime_checkable

import msgspec
import trio

from yoi_registryd.backoff import Backoff
from yoi_registryd.config import AuditConfig, ConfigError, default_state_dir, import_object
from yoi_registryd.errors import AuditUnavailable
from yoi_registryd.policy import Decision

log = logging.getLogger(__name__)

MAX_BATCH: Final = 1024
RETRY_INITIAL_S: Final = 0.1
RETRY_MAX_S: Final = 5.0
CLOSE_ATTEMPTS: Final = 3


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One request, as the audit trail keeps it (also the JSON line written)."""

    time: datetime
    """When the request arrived (UTC)."""
    request_id: str
    client: str | None
    """The authenticated client's name; null for anonymous local callers and for callers
    that failed authentication."""
    workspace: str | None
    """The acting workspace, once it was accepted; null when none was named."""
    method: str
    route: str | None
    """The route template (``/api/runtimes/<runtime_id>/workers``); null when none matched."""
    runtime_id: str | None = None
    worker_id: str | None = None
    host_id: str | None = None
    decision: Decision
    status: int | None
    """The HTTP status sent; null if the request ended before any response started."""
    latency_ms: float
    """From the request's arrival to the start of its response."""


class ChainedRecord(AuditRecord, frozen=True, kw_only=True):
    """A record with its place in the hash chain (``audit.chain = true``)."""

    seq: int
    """1, 2, 3... in the order written; continued across restarts and rotations."""
    prev: str
    """SHA-256 (hex) of the previous record's line as written: its JSON bytes, without the
    newline. :data:`GENESIS` for the first record of a chain."""


GENESIS: Final = "0" * 64

_encoder: Final = msgspec.json.Encoder()


def encode_lines(records: Sequence[AuditRecord]) -> bytes:
    """JSON lines: one record per line, each line complete."""
    return b"".join(_encoder.encode(r) + b"\n" for r in records)


def line_hash(line: bytes) -> str:
    """What the next record's ``prev`` holds: SHA-256 of a line without its newline."""
    return hashlib.sha256(line).hexdigest()


class Chain:
    """The position the next record takes in the hash chain."""

    def __init__(self, seq: int = 0, prev: str = GENESIS) -> None:
        self.seq = seq
        self.prev = prev

    @classmethod
    def after(cls, last_line: bytes | None) -> Chain:
        """Continue the chain a file ends with (a file without records starts a new one;
        records written before the chain was turned on count as number 0)."""
        if not last_line:
            return cls()
        try:
            seq = msgspec.json.decode(last_line, type=_Seq).seq
        except msgspec.DecodeError:
            seq = 0
        return cls(seq, line_hash(last_line))

    def link(self, record: AuditRecord) -> ChainedRecord:
        self.seq += 1
        chained = ChainedRecord(**msgspec.structs.asdict(record), seq=self.seq, prev=self.prev)
        self.prev = line_hash(_encoder.encode(chained))
        return chained


class _Seq(msgspec.Struct):
    seq: int = 0


@runtime_checkable
class AuditSink(Protocol):
    """Where batches of records go. Implemented by the built-in sinks and custom ones.

    ``write`` is awaited by the trail's single writer task, never concurrently with itself
    or ``reopen``. When it raises, the trail logs the error and retries the same batch, so a
    sink must not leave a half-written batch behind.
    """

    async def write(self, records: Sequence[AuditRecord]) -> None: ...

    async def reopen(self) -> None:
        """Reopen output after log rotation (SIGHUP); a no-op for sinks without files."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class AuditContext:
    """What a custom sink's factory is called with."""

    state_dir: Path
    options: Mapping[str, str] = field(default_factory=dict)


class FileSink:
    """Appends JSON lines to a file and fsyncs each batch.

    The file is opened for appending (``O_APPEND``), created ``0640`` in a ``0750``
    directory. A batch that fails half-way is cut back off the file before the error is
    raised, so every line in the file stays one complete record.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o640)

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def open(self) -> None:
        """Open now, so a bad path stops the daemon at start-up rather than at the first
        request."""
        if self._fd is None:
            self._open()

    def last_line(self) -> bytes | None:
        """The file's last record, without its newline (None for an empty file): where a
        hash chain continues after a restart."""
        with self.path.open("rb") as file:
            end = file.seek(0, os.SEEK_END)
            start = end
            tail = b""
            while start > 0 and tail.count(b"\n") < 2:
                start = max(0, start - 4096)
                file.seek(start)
                tail = file.read(end - start)
        lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
        return lines[-1] or None

    def _append(self, data: bytes) -> None:
        if self._fd is None:
            self._open()
        fd = self._fd
        assert fd is not None
        start = os.fstat(fd).st_size
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, start)
            except OSError:
                self._close()  # reopened and retried by the next write
            raise

    async def write(self, records: Sequence[AuditRecord]) -> None:
        await trio.to_thread.run_sync(self._append, encode_lines(records))

    async def reopen(self) -> None:
        def reopen() -> None:
            self._close()
            self._open()

        await trio.to_thread.run_sync(reopen)

    async def aclose(self) -> None:
        self._close()


class StderrSink:
    """Writes JSON lines to stderr: under systemd, into the journal."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream

    async def write(self, records: Sequence[AuditRecord]) -> None:
        stream = self._stream or sys.stderr
        stream.write(encode_lines(records).decode("utf-8"))
        stream.flush()

    async def reopen(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def build_sink(config: AuditConfig) -> AuditSink:
    """The sink ``[audit] sink`` names; a file sink's file is opened here."""
    if config.sink == "file":
        sink = FileSink(config.resolved_path())
        try:
            sink.open()
        except OSError as exc:
            raise ConfigError(
                [f"audit.path: cannot open {str(sink.path)!r} for appending: {exc.strerror}"]
            ) from None
        return sink
    if config.sink == "stderr":
        return StderrSink()
    factory: Any = import_object(config.sink, "audit.sink")
    if not callable(factory):
        raise ConfigError([f"audit.sink: {config.sink!r} is not callable"])
    custom = factory(AuditContext(default_state_dir(), dict(config.options)))
    if not isinstance(custom, AuditSink):
        raise ConfigError(
            [f"audit.sink: {config.sink!r} did not return a sink (write, reopen, aclose)"]
        )
    return custom


OnFailure = Literal["refuse", "serve"]
Durability = Literal["batched", "before_response"]


class Ticket:
    """A queued record, and (``durability = "before_response"``) whether it is on disk."""

    __slots__ = ("chained", "done", "durable", "record")

    def __init__(self, record: AuditRecord, waits: bool) -> None:
        self.record = record
        self.chained: AuditRecord | None = None
        """The record as written: with its place in the chain when ``chain`` is on."""
        self.done = trio.Event() if waits else None
        self.durable = False

    def settle(self, durable: bool) -> None:
        self.durable = durable
        if self.done is not None:
            self.done.set()


class AuditTrail:
    """The bounded queue between requests and the sink, and the task that drains it.

    Start :meth:`run` in a nursery before serving; call :meth:`aclose` after the last
    request finished: it writes what is queued and closes the sink. ``queue_depth`` and the
    counters are read by the metrics.
    """

    def __init__(
        self,
        sink: AuditSink,
        queue_size: int = 1024,
        flush_interval: float = 0.1,
        on_failure: OnFailure = "refuse",
        durability: Durability = "batched",
        chain: Chain | None = None,
    ):
        self.sink = sink
        self.durability: Durability = durability
        self.chain = chain
        """Links each record to the previous one (``audit.chain = true``); None: off."""
        self.queue_size = queue_size
        self.flush_interval = flush_interval
        self.on_failure: OnFailure = on_failure
        self.failing = False
        """The last write failed: records wait in memory until the sink takes them again."""
        self.requests_refused = 0
        """Requests answered 503 ``audit_unavailable`` (``on_failure = "refuse"``)."""
        self.records_dropped = 0
        """Records given up while the sink failed and the queue was full (``"serve"``)."""
        self._send, self._receive = trio.open_memory_channel[Ticket](queue_size)
        self._lock = trio.Lock()
        self._done = trio.Event()
        self._closing = False
        self._started = False
        self._batch: list[Ticket] = []
        self._unsettled: set[Ticket] = set()
        """``before_response`` tickets whose requests wait for the disk."""
        self._waiting_for_room: set[trio.CancelScope] = set()
        self._wake: trio.Event | None = None
        """Set while the writer waits for a batch to fill: ends the wait early."""
        self._queued_while_waiting = 0
        self.records_written = 0
        self.write_failures = 0
        self.records_lost = 0

    @classmethod
    def from_config(cls, config: AuditConfig) -> AuditTrail:
        sink = build_sink(config)
        chain = None
        if config.chain:
            last = sink.last_line() if isinstance(sink, FileSink) else None
            chain = Chain.after(last)
        return cls(
            sink,
            config.queue_size,
            config.flush_interval.total_seconds(),
            config.on_failure,
            config.durability,
            chain,
        )

    @property
    def saturated(self) -> bool:
        """The sink fails and the queue is full: a new record has nowhere to go."""
        return self.failing and self.queue_depth >= self.queue_size

    def admit(self) -> None:
        """Refuse a request whose record could not be kept (``on_failure = "refuse"``).

        Called before a request runs, so that nothing is answered unaudited: while the sink
        fails, records wait in the queue; once it is full, requests get 503 at once instead
        of waiting for a sink that may not come back.
        """
        if self.on_failure == "refuse" and self.saturated:
            raise self.refusal()

    def refusal(self) -> AuditUnavailable:
        """Count a request refused because its record cannot be kept; the error to answer."""
        self.requests_refused += 1
        return AuditUnavailable()

    @property
    def queue_depth(self) -> int:
        """Records queued and not yet taken by the writer."""
        return self._send.statistics().current_buffer_used

    @property
    def waiting_requests(self) -> int:
        """Requests waiting for room in a full queue."""
        return self._send.statistics().tasks_waiting_send

    async def emit(self, record: AuditRecord) -> Ticket | None:
        """Queue a record; while the queue is full and the sink works, wait for room.
        Returns its ticket (None when the record was dropped): with ``before_response``,
        hand it to :meth:`until_durable` before the response starts.

        With room in the queue it returns without yielding to the scheduler, so a request
        is not held up (nor its response reordered with others) by its audit record. With
        the queue full and the sink failing there is no room to wait for: the record is
        dropped (``on_failure = "serve"``) or :class:`AuditUnavailable` raised ("refuse";
        the caller refuses the request with :meth:`refusal`), also for a request that began
        waiting before the sink failed.
        """
        ticket = Ticket(record, waits=self.durability == "before_response")
        if ticket.done is not None:
            self._unsettled.add(ticket)
        while True:
            try:
                self._send.send_nowait(ticket)
            except trio.WouldBlock:
                pass
            else:
                if self._wake is not None:
                    self._queued_while_waiting += 1
                    if self._queued_while_waiting * 2 >= self.queue_size:
                        self._wake.set()
                return ticket
            if self.failing:
                self._unsettled.discard(ticket)
                self._give_up(record)
                return None
            with trio.CancelScope() as waiting:
                self._waiting_for_room.add(waiting)
                try:
                    await self._send.send(ticket)
                    return ticket
                finally:
                    self._waiting_for_room.discard(waiting)
            # Cancelled by :meth:`_start_failing`: decide again.

    async def until_durable(self, ticket: Ticket | None) -> None:
        """``durability = "before_response"``: wait until the record is written and fsynced
        (at once otherwise). While the sink fails, ``refuse`` keeps waiting (the record is
        written first when the sink is back), ``serve`` stops waiting. A record that could
        not be written at all (shutdown with the sink failing) raises
        :class:`AuditUnavailable` under ``refuse``: the response is not sent."""
        if ticket is None or ticket.done is None:
            return
        if self.failing and self.on_failure == "serve":
            return
        await ticket.done.wait()
        if not ticket.durable and self.on_failure == "refuse":
            raise AuditUnavailable()

    def _give_up(self, record: AuditRecord) -> None:
        if self.on_failure == "refuse":
            raise AuditUnavailable()
        self.records_dropped += 1
        if self.records_dropped == 1 or self.records_dropped % 1000 == 0:
            log.error(
                "audit: the sink fails and the queue is full: %d records dropped "
                '(on_failure = "serve")',
                self.records_dropped,
            )

    def _start_failing(self) -> None:
        self.failing = True
        log.error(
            "audit sink failing: records wait in memory (at most %d queued); then requests are %s",
            self.queue_size,
            "refused (503 audit_unavailable)"
            if self.on_failure == "refuse"
            else "answered and their records dropped",
        )
        for waiting in self._waiting_for_room:
            waiting.cancel()
        if self.on_failure == "serve":  # degrade: stop holding responses for the disk
            for ticket in self._unsettled:
                ticket.settle(durable=False)
            self._unsettled.clear()

    async def reopen(self) -> None:
        """Reopen the sink's output (wire to SIGHUP for logrotate). Waits for a batch being
        written to finish, so no batch is split across two files."""
        async with self._lock:
            try:
                await self.sink.reopen()
            except Exception:
                # A read-only or full disk must not take the daemon down: the writer keeps
                # retrying (the file sink opens the file again), and requests are refused
                # once the queue is full.
                log.exception("audit sink could not be reopened; writing will retry")
                return
        log.info("audit sink reopened")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take batches off the queue and write them until :meth:`aclose` (or cancellation,
        in which case what is queued is still written, shielded, before returning)."""
        self._started = True
        task_status.started()
        try:
            while True:
                try:
                    self._batch.append(await self._receive.receive())
                except trio.EndOfChannel:
                    break
                await self._gather()
                await self._write()
        finally:
            with trio.CancelScope(shield=True):
                self._closing = True
                await self._drain()
                await self.sink.aclose()
                self._done.set()

    async def _gather(self) -> None:
        """Wait ``flush_interval``, then take what the queue holds: one fsync for the lot,
        and one wake-up of this task per batch rather than one per record (a request's
        record is then a plain append to the queue). The wait ends early once half the
        queue is used, so that requests do not wait for room while this task sleeps."""
        if self.flush_interval > 0 and self.durability == "batched":
            self._wake = trio.Event()
            self._queued_while_waiting = self.queue_depth
            with trio.move_on_after(self.flush_interval):
                await self._wake.wait()
            self._wake = None
        batch = self._batch
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    async def _drain(self) -> None:
        """Write the batch in hand and everything still queued."""
        while True:
            while len(self._batch) < MAX_BATCH:
                try:
                    self._batch.append(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            if not self._batch:
                return
            await self._write()

    async def _write(self) -> None:
        """Write the batch in hand, retrying with backoff while the sink fails (requests
        wait on the full queue meanwhile). Once closing, a batch gets a few tries, then
        counts as lost. The batch is only let go once written, so a cancellation in between
        leaves it for the shielded drain."""
        batch = self._batch
        for ticket in batch:
            if ticket.chained is None:  # once: a retried batch keeps its place in the chain
                ticket.chained = (
                    ticket.record if self.chain is None else self.chain.link(ticket.record)
                )
        records = [ticket.chained for ticket in batch if ticket.chained is not None]
        backoff = Backoff(RETRY_INITIAL_S, RETRY_MAX_S)
        attempts = 0
        while True:
            attempts += 1
            try:
                async with self._lock:
                    await self.sink.write(records)
            except Exception:
                self.write_failures += 1
                if not self.failing:
                    self._start_failing()
                log.exception("audit sink failed to write %d records; retrying", len(batch))
                if self._closing and attempts >= CLOSE_ATTEMPTS:
                    self.records_lost += len(batch)
                    log.error("audit: %d records could not be written at shutdown", len(batch))
                    self._batch = []
                    self._settle(batch, durable=False)
                    return
                await trio.sleep(backoff.next_delay())
            else:
                self.records_written += len(batch)
                self._batch = []
                self._settle(batch, durable=True)
                if self.failing:
                    self.failing = False
                    log.warning("audit sink recovered: %d records written", len(batch))
                return

    def _settle(self, batch: list[Ticket], durable: bool) -> None:
        for ticket in batch:
            ticket.settle(durable)
            self._unsettled.discard(ticket)

    async def aclose(self) -> None:
        """No more records: write what is queued, close the sink, wait until done."""
        self._send.close()
        if self._wake is not None:
            self._wake.set()
        if self._started:
            await self._done.wait()
        else:
            await self.sink.aclose()
