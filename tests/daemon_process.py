"""Helpers for tests that run the daemon as operators do: a real ``python -m yoi_registryd``
subprocess, real signals, real sockets, the service manager's sd_notify socket and its socket
activation (listening sockets passed as systemd passes them).

Readiness is awaited by polling (HTTP or notifications) with a deadline, never by sleeping
a fixed time. Shared by the process, signal, reload, systemd, replica, audit and demo tests.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from tests.conftest import wait_for

READY_DEADLINE_S = 15.0
EXIT_DEADLINE_S = 15.0
NOTIFY_DEADLINE_S = 15.0
DAEMON_COMMAND = (sys.executable, "-m", "yoi_registryd")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The parent's environment without anything that would point the daemon elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("YOI_", "XDG_", "NOTIFY_", "WATCHDOG_", "LISTEN_", "JOURNAL_"))
    }
    env["HOME"] = str(home)
    env.update(extra)
    return env


@dataclass
class DaemonProcess:
    process: trio.Process
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait_exit(self, deadline_s: float = EXIT_DEADLINE_S) -> int:
        with trio.fail_after(deadline_s):
            return await self.process.wait()


@asynccontextmanager
async def spawn(
    command: Sequence[str],
    env: Mapping[str, str],
    workdir: Path,
    *,
    stderr_name: str = "stderr.log",
    pass_fds: Sequence[int] = (),
) -> AsyncIterator[DaemonProcess]:
    """Start ``command`` (which ends by running the daemon) with stdout and stderr in
    ``workdir/stderr_name``; kill it if the test leaves it running."""
    stderr_path = workdir / stderr_name
    with stderr_path.open("wb") as err:
        process = await trio.lowlevel.open_process(
            list(command),
            env=dict(env),
            cwd=str(workdir),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            pass_fds=pass_fds,
        )
    try:
        yield DaemonProcess(process, stderr_path)
    finally:
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(5):
                await process.wait()


def run_daemon(
    args: list[str], env: Mapping[str, str], workdir: Path
) -> AbstractAsyncContextManager[DaemonProcess]:
    """Start ``python -m yoi_registryd ARGS``; kill it if the test leaves it running."""
    return spawn([*DAEMON_COMMAND, *args], env, workdir)


async def wait_ready(client: httpx.AsyncClient, daemon: DaemonProcess) -> None:
    """Poll ``/api/runtimes`` until it answers; fail early if the process died."""

    async def answers() -> bool:
        if daemon.process.returncode is not None:
            raise AssertionError(
                f"daemon exited with {daemon.process.returncode}:\n{daemon.stderr}"
            )
        try:
            response = await client.get("/api/runtimes")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    await wait_for(answers, READY_DEADLINE_S, interval=0.05, message="the daemon to answer")


@contextmanager
def short_tmpdir() -> Iterator[Path]:
    """A short directory path, so a unix socket inside it stays under the 108-byte limit."""
    path = Path(tempfile.mkdtemp(prefix="yrd-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_is_listening(port: int) -> bool:
    """Something listens on 127.0.0.1:``port`` (read from /proc/net/tcp: probing by binding
    the port would race with the process about to bind it)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        return any(
            fields[1] == wanted and fields[3] == "0A"  # local address; state LISTEN
            for fields in (line.split() for line in table)
        )


async def raw_get(stream: trio.abc.Stream, path: str) -> tuple[int, bytes]:
    """Send one ``Connection: close`` GET and read the whole response."""
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    assert length is not None and len(body) == int(length.group(1)), data
    return status, body


# -- the service manager's side of sd_notify ------------------------------------------------

Message = dict[str, str]


def parse_notification(data: bytes) -> Message:
    """One sd_notify datagram: newline-separated ``KEY=VALUE`` lines."""
    fields = {}
    for line in data.decode().split("\n"):
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=VALUE line: {line!r}"
        fields[key] = value
    return fields


class NotifySocket:
    """The service manager's side of sd_notify: receives and records every datagram."""

    def __init__(self, sock: trio.socket.SocketType, address: str) -> None:
        self.sock = sock
        self.address = address
        """The value for ``$NOTIFY_SOCKET``."""
        self.messages: list[Message] = []

    async def until(
        self,
        predicate: Callable[[Message], bool],
        daemon: DaemonProcess | None = None,
        deadline_s: float = NOTIFY_DEADLINE_S,
    ) -> Message:
        """Receive until a message matches; every message is recorded on the way. Fails
        at once, with its log, when ``daemon`` exits meanwhile."""
        found: list[Message] = []
        async with trio.open_nursery() as nursery:
            if daemon is not None:
                nursery.start_soon(_fail_on_exit, daemon)
            with trio.fail_after(deadline_s):
                while not found:
                    message = parse_notification(await self.sock.recv(65536))
                    self.messages.append(message)
                    if predicate(message):
                        found.append(message)
            nursery.cancel_scope.cancel()
        return found[0]

    def index(self, predicate: Callable[[Message], bool], start: int = 0) -> int:
        for i in range(start, len(self.messages)):
            if predicate(self.messages[i]):
                return i
        raise AssertionError(f"no such notification after #{start} in {self.messages}")


@asynccontextmanager
async def notify_socket(where: Path | None = None) -> AsyncIterator[NotifySocket]:
    """Bind a datagram socket at ``where`` or, without it, in the abstract namespace."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        if where is None:
            name = f"yoi-registryd-test-{uuid.uuid4().hex}"
            await sock.bind("\0" + name)
            address = "@" + name
        else:
            await sock.bind(str(where))
            address = str(where)
        yield NotifySocket(sock, address)


async def _fail_on_exit(daemon: DaemonProcess) -> None:
    code = await daemon.process.wait()
    raise AssertionError(f"the daemon exited with {code}:\n{daemon.stderr}")


def is_set(key: str, value: str = "1") -> Callable[[Message], bool]:
    return lambda message: message.get(key) == value


@asynccontextmanager
async def ready_daemon(
    config: Path, workdir: Path
) -> AsyncIterator[tuple[DaemonProcess, NotifySocket]]:
    """Run the daemon with ``config`` under a notification socket, until it says READY."""
    async with notify_socket() as manager:
        env = clean_env(workdir, NOTIFY_SOCKET=manager.address)
        async with run_daemon(["--config", str(config)], env, workdir) as daemon:
            await manager.until(is_set("READY"), daemon)
            yield daemon, manager


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def logged_seconds(stderr: str, first: str, then: str) -> float:
    """Seconds between the daemon's log lines containing ``first`` and (after it) ``then``,
    by their timestamps: how long the daemon took, without the interpreter's own start-up
    or exit (seconds of wall time on a machine busy with other work)."""
    from datetime import datetime

    times: list[datetime] = []
    for line in stderr.splitlines():
        wanted = then if times else first
        match = _LOG_TIME.match(line)
        if match and wanted in line:
            times.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f"))
            if len(times) == 2:
                return (times[1] - times[0]).total_seconds()
    raise AssertionError(f"no log line {first!r} followed by {then!r} in:\n{stderr}")


# A stand-in for systemd's exec of a socket-activated service: move the passed listening
# sockets to descriptors 3.., set LISTEN_PID to our own pid (kept across exec) and exec.
_ACTIVATE = """
import os, sys
sep = sys.argv.index("--")
fds, names, argv = [int(a) for a in sys.argv[1:sep:2]], sys.argv[2:sep:2], sys.argv[sep + 1:]
copies = [os.dup(fd) for fd in fds]
for i, fd in enumerate(copies):
    os.dup2(fd, 3 + i)
    os.set_inheritable(3 + i, True)  # dup2 onto itself keeps close-on-exec
for fd in {*copies, *fds} - set(range(3, 3 + len(fds))):
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)),
                  LISTEN_FDNAMES=":".join(names))
os.execv(argv[0], argv)
"""


@asynccontextmanager
async def run_activated(
    sockets: Sequence[tuple[socket.socket, str]],
    args: list[str],
    env: Mapping[str, str],
    workdir: Path,
) -> AsyncIterator[DaemonProcess]:
    """Start the daemon with ``sockets`` passed as systemd passes them (named)."""
    fd_args = [str(part) for sock, name in sockets for part in (sock.fileno(), name)]
    async with spawn(
        [sys.executable, "-c", _ACTIVATE, *fd_args, "--", *DAEMON_COMMAND, *args],
        env,
        workdir,
        stderr_name=f"stderr-{uuid.uuid4().hex[:8]}.log",
        pass_fds=[sock.fileno() for sock, _ in sockets],
    ) as daemon:
        yield daemon
