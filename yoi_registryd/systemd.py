"""systemd integration: readiness notification, the watchdog and socket activation.

These are small, documented protocols (sd_notify(3), sd_watchdog_enabled(3),
sd_listen_fds(3)); speaking them directly keeps libsystemd out of the dependencies. Every
function here is a no-op when the daemon does not run under systemd, so the same code path
serves a developer's terminal and a hardened unit.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Final

import trio

log = logging.getLogger(__name__)

LISTEN_FDS_START: Final = 3
"""systemd passes activated sockets as consecutive file descriptors from 3 on."""

_SEND_TIMEOUT: Final = 1.0
"""A notification that cannot be sent within this time is dropped, never waited on."""


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``RELOADING=1`` wants in ``MONOTONIC_USEC=``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _notify_address(value: str) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as a sendto() address: a path, or ``@name`` for the abstract
    namespace (a leading NUL byte on the wire)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other transports are not used for services on this host


class Notifier:
    """Sends sd_notify datagrams to the service manager; silent when there is none."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._target = _notify_address(address) if address else None
        if address and self._target is None:
            log.warning("NOTIFY_SOCKET %r is not a unix socket address; not notifying", address)
        self._socket: trio.socket.SocketType | None = None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._target is not None

    async def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; True when it was sent.

        A failure is logged once and otherwise ignored: the manager being unreachable must
        never stop the daemon from serving.
        """
        if self._target is None:
            return False
        for line in assignments:
            if "\n" in line or "=" not in line:
                raise ValueError(f"not a KEY=VALUE notification line: {line!r}")
        data = "\n".join(assignments).encode()
        if self._socket is None:
            self._socket = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with trio.move_on_after(_SEND_TIMEOUT) as scope:
            try:
                await self._socket.sendto(data, self._target)
            except OSError as exc:
                self._warn(f"cannot notify the service manager: {exc}")
                return False
            return True
        if scope.cancelled_caught:
            self._warn("the service manager did not take a notification in time")
        return False

    def _warn(self, message: str) -> None:
        if not self._warned:
            log.warning(message)
            self._warned = True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(
    environ: Mapping[str, str] = os.environ, pid: int | None = None
) -> float | None:
    """The watchdog timeout in seconds when systemd expects pings from this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None  # the variable was meant for another process (e.g. our parent)
    return int(usec) / 1_000_000


async def run_watchdog(
    notifier: Notifier,
    interval: float,
    alive: Callable[[float], Awaitable[bool]],
) -> None:
    """Ping ``WATCHDOG=1`` every half ``interval`` while ``alive(within)`` answers True.

    Running at all proves the event loop turns; ``alive`` proves the rest (the registry
    actor). When it does not answer within half the interval the ping is withheld, so
    systemd's watchdog fires and restarts a daemon that still accepts connections but no
    longer works.
    """
    period = interval / 2
    healthy = True
    while True:
        started = trio.current_time()
        if await alive(period):
            if not healthy:
                log.warning("liveness restored; resuming watchdog pings")
            healthy = True
            await notifier.notify("WATCHDOG=1")
        elif healthy:
            log.error(
                "the registry actor did not answer within %.3fs; withholding watchdog pings", period
            )
            healthy = False
        await trio.sleep_until(started + period)


@dataclass(frozen=True, slots=True)
class ActivatedSocket:
    name: str
    """From ``FileDescriptorName=`` (``LISTEN_FDNAMES``); systemd's default is the socket
    unit's name."""
    sock: socket.socket


class SocketActivationError(Exception):
    """systemd passed something the daemon cannot serve on."""


def listen_sockets(
    environ: MutableMapping[str, str] = os.environ, pid: int | None = None
) -> list[ActivatedSocket]:
    """The listening sockets systemd passed (``$LISTEN_FDS``), empty when none were.

    Like ``sd_listen_fds(1)`` the variables are removed afterwards, so nothing this process
    starts mistakes the descriptors for its own. The descriptors are made close-on-exec.
    """
    owner = environ.get("LISTEN_PID", "")
    count_text = environ.get("LISTEN_FDS", "")
    names_text = environ.get("LISTEN_FDNAMES")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(var, None)
    if not owner or not count_text:
        return []
    if owner != str(os.getpid() if pid is None else pid):
        return []  # meant for another process
    if not count_text.isdigit():
        raise SocketActivationError(f"LISTEN_FDS={count_text!r} is not a number")
    count = int(count_text)
    names = names_text.split(":") if names_text else []
    sockets: list[ActivatedSocket] = []
    for i in range(count):
        fd = LISTEN_FDS_START + i
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise SocketActivationError(f"passed descriptor {fd} is not a socket: {exc}") from None
        name = names[i] if i < len(names) else "unknown"
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            sock.detach()
            raise SocketActivationError(
                f"passed descriptor {fd} ({name}) is not a listening stream socket; "
                "the socket unit needs Accept=no and ListenStream="
            )
        sockets.append(ActivatedSocket(name, sock))
    return sockets
