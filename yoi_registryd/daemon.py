"""Wiring: one trio nursery holding the registry actor, the supervised sources and hypercorn.

The daemon owns its signals: the first SIGTERM or SIGINT stops accepting connections, lets
in-flight requests finish within ``server.shutdown_grace`` and then cancels the sources; a
second one exits at once. SIGHUP reloads the configuration (``yoi_registryd.reload``).
Under systemd it reports READY/STATUS/RELOADING/STOPPING and feeds the watchdog
(``yoi_registryd.systemd``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig

from yoi_registryd.config import (
    Config,
    EmbeddedSourceConfig,
    LocalSourceConfig,
    RemoteSourceConfig,
    SourceConfig,
    parse_listen,
)
from yoi_registryd.http.app import ApiState, create_app
from yoi_registryd.http.middleware import PathGuard
from yoi_registryd.http.server import serve
from yoi_registryd.operations import OperationRouter
from yoi_registryd.registry import RegistryActor, Snapshot
from yoi_registryd.reload import ReloadStatus, reload_config
from yoi_registryd.sources import build_source
from yoi_registryd.supervisor import SourceSpec, Supervisor
from yoi_registryd.systemd import Notifier, listen_sockets, monotonic_usec, run_watchdog

log = logging.getLogger(__name__)


def source_spec(config: SourceConfig) -> SourceSpec:
    """How the supervisor runs the source configured by ``config``."""
    if isinstance(config, LocalSourceConfig):
        return SourceSpec(
            runtime_id=config.runtime_id,
            source_kind="local_compatibility",
            label=config.label,
            stale_after=config.stale_after,
            expire_after=None,
            factory=lambda: build_source(config),
            key=config,
        )
    if isinstance(config, RemoteSourceConfig):
        return SourceSpec(
            runtime_id=config.runtime_id,
            source_kind="remote_http",
            label=config.label or config.runtime_id,
            stale_after=config.stale_after,
            expire_after=config.expire_after,
            factory=lambda: build_source(config),
            key=config,
        )
    if isinstance(config, EmbeddedSourceConfig):
        from yoi_registryd.sources.embedded import embedded_source_factory

        return SourceSpec(
            runtime_id=config.runtime_id,
            source_kind="embedded_worker_runtime",
            label=config.label or config.runtime_id,
            stale_after=config.stale_after,
            expire_after=None,
            factory=embedded_source_factory(config),  # the runtime outlives source restarts
            key=config,
        )
    raise TypeError(f"unsupported source configuration {type(config).__name__}")


def open_listener(address: str, unix_mode: str = "0660") -> socket.socket:
    """Bind and listen on ``host:port``, ``[v6]:port`` or ``unix:/path``."""
    kind, host, port = parse_listen(address)
    if kind == "unix":
        path = Path(host)
        try:
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()  # a stale socket from an earlier run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        os.chmod(path, int(unix_mode, 8))
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, type_, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, type_, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
    sock.listen(1024)
    return sock


def describe_socket(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"http://[{name[0]}]:{name[1]}"
    return f"http://{name[0]}:{name[1]}"


def activated_listeners() -> list[socket.socket] | None:
    """The sockets systemd passed (socket activation), or None to bind from the config."""
    activated = listen_sockets()
    for a in activated:
        log.info("socket activation: serving on %s (%s)", describe_socket(a.sock), a.name)
    return [a.sock for a in activated] or None


def status_summary(snapshot: Snapshot) -> str:
    """The one-line ``STATUS=`` shown by ``systemctl status``."""
    entries = snapshot.runtimes.values()
    available = sum(1 for e in entries if e.record.status == "available")
    workers = sum(len(e.workers) for e in entries)
    return f"runtimes: {available}/{len(entries)} available, workers: {workers}"


@dataclass
class Daemon:
    """The running daemon's parts, for tests and for the CLI."""

    config: Config
    actor: RegistryActor = field(init=False)
    supervisor: Supervisor = field(init=False)
    router: OperationRouter = field(init=False)
    shutdown: trio.Event = field(default_factory=trio.Event)
    addresses: list[str] = field(default_factory=list)
    config_path: Path | None = None
    """Where SIGHUP re-reads the configuration from (None: the built-in defaults)."""
    log_level_override: str | None = None
    """``--log-level``: wins over ``logging.level`` at start and on reload."""
    notifier: Notifier = field(default_factory=lambda: Notifier(None))
    watchdog_interval: float | None = None
    """systemd's ``WatchdogSec`` in seconds; pings go out at half of it."""
    socket_activated: bool = False
    """The listeners belong to systemd's socket unit: what is queued on them at shutdown
    waits for the next start instead of being drained."""
    reloads: ReloadStatus = field(default_factory=ReloadStatus)
    config_transform: Callable[[Config], Config] | None = None
    """Applied to a reloaded configuration as it was to the first (``--demo``)."""

    def __post_init__(self) -> None:
        self.actor = RegistryActor(self.config.registry.channel_capacity)
        self.router = OperationRouter()
        self.supervisor = Supervisor(
            self.actor.send_channel, self.config.supervisor, router=self.router
        )

    async def run(
        self,
        listeners: Sequence[socket.socket] | None = None,
        *,
        handle_signals: bool = False,
        task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until :attr:`shutdown` is set (or a signal arrives, with ``handle_signals``)."""
        config = self.config
        socks = (
            list(listeners)
            if listeners is not None
            else [open_listener(a, config.server.unix_socket_mode) for a in config.server.listen]
        )
        self.addresses = [describe_socket(s) for s in socks]
        hconfig = HypercornConfig()
        hconfig.graceful_timeout = config.server.shutdown_grace.total_seconds()
        hconfig.errorlog = logging.getLogger("hypercorn.error")
        hconfig.accesslog = None
        hconfig.keep_alive_timeout = 75
        hconfig.include_server_header = False
        self.api = api = ApiState(
            self.actor,
            self.router,
            conceal_invisible_workers=config.server.conceal_invisible_workers,
        )
        app: Any = PathGuard(create_app(api))  # an ASGI app; hypercorn's types are narrower
        self._ready = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.actor.run)
            if self.watchdog_interval is not None:
                nursery.start_soon(
                    run_watchdog, self.notifier, self.watchdog_interval, self.actor.ping
                )
            for source in config.sources:
                await self.supervisor.start(nursery, source_spec(source))
            if handle_signals:
                nursery.start_soon(self._handle_signals, nursery.cancel_scope)
            await nursery.start(self._serve, app, hconfig, socks, nursery.cancel_scope)
            for address in self.addresses:
                log.info("listening on %s", address)
            log.info("yoi-registryd ready: %d sources", len(config.sources))
            status = self.status_line()
            await self.notifier.notify("READY=1", f"STATUS={status}")
            self._ready.set()
            if self.notifier.enabled:
                nursery.start_soon(self._report_status, status)
            task_status.started(self)
        self.notifier.close()
        log.info("yoi-registryd stopped")

    async def _serve(
        self,
        app: Any,
        hconfig: HypercornConfig,
        socks: list[socket.socket],
        scope: trio.CancelScope,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until shutdown; returns once in-flight requests are done (or the grace
        period ran out: ``http.server``). Only then are the sources and the actor cancelled."""

        async def shutdown_trigger() -> None:
            await self.shutdown.wait()
            await self.notifier.notify("STOPPING=1", "STATUS=shutting down")
            log.info("shutting down: no new connections, finishing in-flight requests")

        await serve(
            app,
            hconfig,
            socks,
            shutdown_trigger,
            inherited=self.socket_activated,
            task_status=task_status,
        )
        scope.cancel()

    def status_line(self) -> str:
        line = status_summary(self.actor.snapshot)
        if self.reloads.last_ok is False:
            line += "; last reload failed (see the log)"
        return line

    async def _report_status(self, sent: str) -> None:
        """Keep ``STATUS=`` current: only on change, and at most a few times a second."""
        revision = self.actor.snapshot.revision
        while True:
            revision = (await self.actor.wait_for_change(revision)).revision
            line = self.status_line()
            if self.shutdown.is_set():
                return
            if line != sent:
                await self.notifier.notify(f"STATUS={line}")
                sent = line
                await trio.sleep(0.2)

    async def reload(self) -> bool:
        """Re-read the config file and apply it (SIGHUP); False when it was rejected."""
        await self.notifier.notify(
            "RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading"
        )
        new = await reload_config(
            self.config_path,
            self.config,
            self.supervisor,
            self._nursery,
            source_spec,
            self.reloads,
            log_level_override=self.log_level_override,
            transform=self.config_transform,
            prepare=self._prepare_reload,
        )
        if new is not None:
            self.config = new
        await self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
        return new is not None

    def _prepare_reload(self, new: Config) -> Callable[[], None]:
        """What else the daemon takes from a new config; the returned function swaps it in."""

        def swap_in() -> None:
            self.api.conceal_invisible_workers = new.server.conceal_invisible_workers

        return swap_in

    async def _reload_on_request(self, requests: trio.MemoryReceiveChannel[None]) -> None:
        """One reload at a time; SIGHUPs arriving during a reload coalesce into one more.
        A SIGHUP during start-up waits for READY=1: a reload's READY=1 must not come first."""
        await self._ready.wait()
        async for _ in requests:
            if not self.shutdown.is_set():
                await self.reload()

    async def _handle_signals(self, scope: trio.CancelScope) -> None:
        reload_send, reload_receive = trio.open_memory_channel[None](1)
        self._nursery.start_soon(self._reload_on_request, reload_receive)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if self.shutdown.is_set():
                        log.info("received SIGHUP while shutting down: not reloading")
                        continue
                    log.info("received SIGHUP: reloading the configuration")
                    with contextlib.suppress(trio.WouldBlock):
                        reload_send.send_nowait(None)
                    continue
                if self.shutdown.is_set():
                    log.warning("second signal %s: exiting now", signal.Signals(signum).name)
                    scope.cancel()
                    return
                log.info("received %s", signal.Signals(signum).name)
                self.shutdown.set()
