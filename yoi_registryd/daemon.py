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
import math
import os
import resource
import signal
import socket
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio
from hypercorn.config import Config as HypercornConfig

from yoi_registryd.audit import AuditTrail
from yoi_registryd.config import Config, ServerConfig, parse_listen
from yoi_registryd.discovery.manager import Discoveries
from yoi_registryd.http import probes
from yoi_registryd.http.app import create_app
from yoi_registryd.http.cursors import CursorKey
from yoi_registryd.http.fastpath import MemoizedRouteTable, ReadFastPath
from yoi_registryd.http.http2 import Http2Limits
from yoi_registryd.http.middleware import PathGuard
from yoi_registryd.http.probes import Lifecycle
from yoi_registryd.http.security import AccessControl, SecurityMiddleware
from yoi_registryd.http.server import serve
from yoi_registryd.http.state import ApiState
from yoi_registryd.metrics import Metrics
from yoi_registryd.operations import OperationRouter
from yoi_registryd.registry import RegistryActor, Snapshot
from yoi_registryd.reload import ReloadStatus, reload_config
from yoi_registryd.sources.factory import source_spec
from yoi_registryd.sources.remote_auth import check_signing_keys
from yoi_registryd.supervisor import Supervisor
from yoi_registryd.systemd import Notifier, listen_sockets, monotonic_usec, run_watchdog

log = logging.getLogger(__name__)


def check_config_keys(config: Config) -> None:
    """The signing keys of capability sources and discovery entries load (ConfigError)."""
    check_signing_keys(config.sources)
    templates = [
        entry.remote_template(entry.name, "http://discovered.invalid:1", None, ())
        for entry in config.discovery
    ]
    check_signing_keys(templates, section="discovery")


def open_listener(address: str, unix_mode: str = "0660") -> socket.socket:
    """Bind and listen on ``host:port``, ``[v6]:port`` or ``unix:/path``.

    An ``OSError`` names the address at fault (``cannot listen on 127.0.0.1:38790: Address
    already in use``): with several listen addresses, the bare error would not say which."""
    try:
        return _open_listener(address, unix_mode)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror or exc}") from None


def _open_listener(address: str, unix_mode: str) -> socket.socket:
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
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
        except OSError:
            sock.close()
            raise
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
    available = sum(1 for e in entries if e.record.registry_status == "available")
    workers = sum(len(e.workers) for e in entries)
    return f"runtimes: {available}/{len(entries)} available, workers: {workers}"


FD_RESERVE: Final = 256
"""Descriptors kept for everything but client connections: sources, audit, listeners."""


def http2_limits(server: ServerConfig) -> Http2Limits | None:
    """HTTP/2's bounds when ``server.http2`` allows it; None: HTTP/1.1 only."""
    if not server.http2:
        return None
    return Http2Limits(
        max_streams=server.http2_max_streams,
        stall_timeout=server.http2_stall_timeout.total_seconds(),
        max_buffered_bytes=server.http2_max_buffered_bytes,
        header_timeout=server.keep_alive_timeout.total_seconds(),
    )


def apply_server_limits(hconfig: HypercornConfig, server: ServerConfig) -> None:
    """The ``[server]`` limits hypercorn enforces, and room for ``max_connections``.

    The soft open-files limit is raised (up to the hard one) so that the connection cap,
    not a failing ``accept``, is what bounds clients; sources keep their descriptors.
    """
    hconfig.keep_alive_timeout = server.keep_alive_timeout.total_seconds()
    hconfig.h11_max_incomplete_size = server.max_header_bytes
    hconfig.h2_max_header_list_size = server.max_header_bytes
    hconfig.h2_max_concurrent_streams = server.http2_max_streams
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = server.max_connections + FD_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if raised > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised < wanted:
        log.warning(
            "server.max_connections = %d needs %d open files but the limit is %d: "
            "raise LimitNOFILE or lower max_connections",
            server.max_connections,
            wanted,
            raised,
        )


@dataclass
class Daemon:
    """The running daemon's parts, for tests and for the CLI."""

    config: Config
    actor: RegistryActor = field(init=False)
    supervisor: Supervisor = field(init=False)
    router: OperationRouter = field(init=False)
    metrics: Metrics = field(init=False)
    lifecycle: Lifecycle = field(init=False)
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
        self.metrics = Metrics(self.actor)
        self.metrics.reloads = self.reloads
        self.lifecycle = Lifecycle(self.shutdown)
        self.router = OperationRouter()
        # Token files, signing keys, the custom policy and the audit file are read here: a
        # problem with any of them is a ConfigError before anything starts.
        check_config_keys(self.config)
        self.access = AccessControl.from_config(self.config)
        self.cursor_key = (
            CursorKey.random()
            if self.config.server.cursor_key_file is None
            else CursorKey.from_file(self.config.server.cursor_key_file)
        )
        self.audit = AuditTrail.from_config(self.config.audit)
        """Queue depth and counters for the metrics; ``reopen()`` after log rotation."""
        self.metrics.audit = self.audit
        self.supervisor = Supervisor(
            self.actor.send_channel, self.config.supervisor, router=self.router
        )
        self.discoveries = Discoveries(self.supervisor, source_spec)
        self.metrics.discoveries = self.discoveries.statuses

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
        hconfig.include_server_header = False
        apply_server_limits(hconfig, config.server)
        self.api = api = ApiState(
            self.actor,
            self.router,
            conceal_invisible_workers=config.conceals_invisible_workers(),
            metrics=self.metrics,
            lifecycle=self.lifecycle,
            cursor_key=self.cursor_key,
            discoveries=self.discoveries.statuses,
        )
        # An ASGI app; hypercorn's types are narrower. One middleware frame counts every
        # request (metrics), then: request id -> authentication -> policy -> audit -> the
        # app, whose plain reads the fast path answers before quart (http/fastpath.py).
        quart_app = create_app(api)
        quart_app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
        quart_app.config["BODY_TIMEOUT"] = config.server.body_timeout.total_seconds()
        self.fastpath = ReadFastPath(quart_app, api)
        actor = self.actor

        def revision() -> int:
            """For the X-Registry-Index of an answer refused before the app."""
            return actor.snapshot.revision

        self.security = SecurityMiddleware(
            PathGuard(self.fastpath, revision, max_head_bytes=config.server.max_header_bytes),
            routes=MemoizedRouteTable(quart_app.url_map),
            access=self.access,
            audit=self.audit,
            revision=revision,
            metrics=self.metrics,
        )
        app: Any = self.security
        self._ready = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.actor.run)
            await nursery.start(self.audit.run)
            if self.watchdog_interval is not None:
                nursery.start_soon(
                    run_watchdog, self.notifier, self.watchdog_interval, self.actor.ping
                )
            for source in config.sources:
                await self.supervisor.start(nursery, source_spec(source))
            await self.discoveries.apply(nursery, config.discovery)
            if handle_signals:
                nursery.start_soon(self._handle_signals, nursery.cancel_scope)
            await nursery.start(self._serve, app, hconfig, socks, nursery.cancel_scope)
            self.lifecycle.listening = True
            for address in self.addresses:
                log.info("listening on %s", address)
            self._log_access_mode()
            nursery.start_soon(self._log_when_ready)
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
            self.api.watches.release_all()

        await serve(
            app,
            hconfig,
            socks,
            shutdown_trigger,
            inherited=self.socket_activated,
            max_connections=self.config.server.max_connections,
            http2=http2_limits(self.config.server),
            task_status=task_status,
        )
        # Every request has finished and queued its audit record: write them all out
        # before the sources and the actor are cancelled.
        await self.audit.aclose()
        scope.cancel()

    async def _log_when_ready(self) -> None:
        """Log "ready" once ``/readyz`` would answer 200 (every source observed once or out of
        start-up grace), not merely when listening: an operator reading the log can trust it."""
        awaited: Iterable[str] | None = None
        while True:
            snapshot = self.actor.snapshot
            # After a change only the sources still awaited are looked at again: looking at
            # every source after each first observation costs sources squared at start-up.
            graces = probes.awaited_sources(
                snapshot, trio.current_time(), self.lifecycle.ready_since, awaited
            )
            awaited = graces.keys()
            if not graces:
                result = await probes.evaluate("readyz", self.actor, self.lifecycle)
                if result.ok:
                    log.info("yoi-registryd ready: %d sources", len(self.config.sources))
                    return
                # A source came meanwhile, or another check failed: look at every source
                # again, so that a newcomer's grace ending wakes this loop too.
                graces = probes.awaited_sources(
                    self.actor.snapshot, trio.current_time(), self.lifecycle.ready_since
                )
                awaited = graces.keys()
            if self.lifecycle.shutting_down:
                return
            # Readiness changes with the registry (a first observation) or the clock (a
            # grace ending): wait for whichever comes first.
            grace = min(graces.values(), default=math.inf)
            with trio.move_on_after(grace + 0.01):
                await self.actor.wait_for_change(snapshot.revision)

    def _log_access_mode(self) -> None:
        """Say at start-up who may call, so an open daemon is never a surprise."""
        if self.access.authenticator.open:
            log.warning(
                "no [[clients]] configured: unauthenticated requests are accepted on "
                "loopback addresses and unix sockets only"
            )
        else:
            log.info(
                "%d clients configured: requests need a bearer token", len(self.config.clients)
            )

    def status_line(self) -> str:
        line = status_summary(self.actor.snapshot)
        if self.reloads.last_ok is False:
            line += "; last reload failed (see the log)"
        return line

    async def _report_status(self, sent: str) -> None:
        """Keep ``STATUS=`` current: only on change, and at most a few times a second.

        The line counts every runtime, so it is derived at most every 200 ms, never once per
        change (which would make each change cost work proportional to the registry)."""
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
            await self.discoveries.apply(self._nursery, new.discovery)
        # SIGHUP is also logrotate's signal: the audit file is reopened either way.
        await self.audit.reopen()
        await self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
        return new is not None

    def _prepare_reload(self, new: Config) -> Callable[[], None]:
        """Check the new config's signing keys and build its access control (reads token
        files: may raise ConfigError); the returned function swaps it in. Requests in
        flight keep theirs."""
        check_config_keys(new)
        access = AccessControl.from_config(new)

        def swap_in() -> None:
            self.access = self.security.access = access
            self.api.conceal_invisible_workers = new.conceals_invisible_workers()

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
