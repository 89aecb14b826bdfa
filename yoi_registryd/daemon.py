"""Wiring: one trio nursery holding the registry actor, the supervised sources and hypercorn.

The daemon owns its signals: the first SIGTERM or SIGINT stops accepting connections, lets
in-flight requests finish within ``server.shutdown_grace`` and then cancels the sources; a
second one exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

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
from yoi_registryd.operations import OperationRouter
from yoi_registryd.registry import RegistryActor
from yoi_registryd.sources import build_source
from yoi_registryd.supervisor import SourceSpec, Supervisor

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


@dataclass
class Daemon:
    """The running daemon's parts, for tests and for the CLI."""

    config: Config
    actor: RegistryActor = field(init=False)
    supervisor: Supervisor = field(init=False)
    router: OperationRouter = field(init=False)
    shutdown: trio.Event = field(default_factory=trio.Event)
    addresses: list[str] = field(default_factory=list)

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
        hconfig.bind = [f"fd://{s.detach()}" for s in socks]
        hconfig.graceful_timeout = config.server.shutdown_grace.total_seconds()
        hconfig.errorlog = logging.getLogger("hypercorn.error")
        hconfig.accesslog = None
        hconfig.keep_alive_timeout = 75
        hconfig.include_server_header = False
        api = ApiState(
            self.actor,
            self.router,
            conceal_invisible_workers=config.server.conceal_invisible_workers,
        )
        app: Any = PathGuard(create_app(api))  # an ASGI app; hypercorn's types are narrower
        async with trio.open_nursery() as nursery:
            await nursery.start(self.actor.run)
            for source in config.sources:
                await self.supervisor.start(nursery, source_spec(source))
            if handle_signals:
                nursery.start_soon(self._handle_signals, nursery.cancel_scope)
            await nursery.start(self._serve, app, hconfig, nursery.cancel_scope)
            for address in self.addresses:
                log.info("listening on %s", address)
            log.info("yoi-registryd ready: %d sources", len(config.sources))
            task_status.started(self)
        log.info("yoi-registryd stopped")

    async def _serve(
        self,
        app: Any,
        hconfig: HypercornConfig,
        scope: trio.CancelScope,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until shutdown; hypercorn returns once in-flight requests are done (or the
        grace period ran out). Only then are the sources and the actor cancelled."""

        async def shutdown_trigger() -> None:
            await self.shutdown.wait()
            log.info("shutting down: no new connections, finishing in-flight requests")

        await serve(
            app,
            hconfig,
            shutdown_trigger=shutdown_trigger,
            task_status=task_status,
        )
        scope.cancel()

    async def _handle_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self.shutdown.is_set():
                    log.warning("second signal %s: exiting now", signal.Signals(signum).name)
                    scope.cancel()
                    return
                log.info("received %s", signal.Signals(signum).name)
                self.shutdown.set()
