"""Reloading the configuration of a running daemon (SIGHUP, ``systemctl reload``).

Like Prometheus: the new file is loaded and validated completely before anything changes,
and a bad file keeps the running configuration (the reason is logged and recorded in
:class:`ReloadStatus`). A good file is applied as the smallest change: sources that
appeared start, sources that disappeared stop, sources whose configuration changed restart
(keeping their runtime's last known state until they observe again), and unchanged sources
are not touched at all, so their runtimes keep their state and records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import trio

from yoi_registryd.clock import utcnow
from yoi_registryd.config import Config, ConfigError, SourceConfig, load_config
from yoi_registryd.sources.base import SourceSpec
from yoi_registryd.supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass
class ReloadStatus:
    """The outcome of reloads so far, for ``STATUS=``, probes and metrics."""

    attempts: int = 0
    failures: int = 0
    last_ok: bool | None = None
    """None until the first reload."""
    last_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: str | None = None
    """Why the last reload was rejected: for the operator (it may name the config file)."""

    def succeeded(self) -> None:
        self.attempts += 1
        self.last_ok = True
        self.last_at = self.last_success_at = utcnow()
        self.last_error = None

    def failed(self, reason: str) -> None:
        self.attempts += 1
        self.failures += 1
        self.last_ok = False
        self.last_at = utcnow()
        self.last_error = reason


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """What a reload does to the running sources."""

    stop: tuple[str, ...] = ()
    restart: tuple[SourceSpec, ...] = ()
    start: tuple[SourceSpec, ...] = ()
    unchanged: tuple[str, ...] = ()
    taken: tuple[str, ...] = ()
    """Wanted ids left alone because another owner runs them."""


CONFIG_OWNER: Final = "config"
"""The owner of ``[[sources]]``: it wins a runtime id another owner (discovery) holds."""


def plan_sources(
    running: Mapping[str, SourceSpec], wanted: Iterable[SourceSpec], owner: str = CONFIG_OWNER
) -> SourcePlan:
    """Compare running and wanted sources by runtime id and by configuration (``key``).

    Only ``owner``'s running sources are stopped; a wanted id another owner runs is
    taken over (restarted) by the configuration, and left to its owner otherwise.
    """
    wanted_by_id = {spec.runtime_id: spec for spec in wanted}
    held = {rid for rid, spec in running.items() if spec.owner != owner}
    taken: tuple[str, ...] = ()
    if owner != CONFIG_OWNER:
        taken = tuple(rid for rid in wanted_by_id if rid in held)
        wanted_by_id = {rid: spec for rid, spec in wanted_by_id.items() if rid not in held}
    stop = tuple(rid for rid in running if rid not in wanted_by_id and rid not in held)
    restart: list[SourceSpec] = []
    start: list[SourceSpec] = []
    unchanged: list[str] = []
    for rid, spec in wanted_by_id.items():
        current = running.get(rid)
        if current is None:
            start.append(spec)
        elif current.config != spec.config or current.owner != spec.owner:
            restart.append(spec)
        else:
            unchanged.append(rid)
    return SourcePlan(stop, tuple(restart), tuple(start), tuple(unchanged), taken)


def plan_changes(
    running: Mapping[str, SourceSpec],
    put: Iterable[SourceSpec],
    gone: Iterable[str],
    owner: str,
) -> SourcePlan:
    """The plan of a few of ``owner``'s sources, ``put`` (wanted as given) and ``gone`` (no
    longer wanted), every other source left as it is: what one discovered change costs,
    whatever the number of sources. It is :func:`plan_sources` over the running sources
    these ids name."""
    put = list(put)
    named = [spec.runtime_id for spec in put] + [rid for rid in gone]
    return plan_sources({rid: running[rid] for rid in named if rid in running}, put, owner)


async def apply_sources(
    supervisor: Supervisor, nursery: trio.Nursery, wanted: Iterable[SourceSpec], owner: str
) -> SourcePlan:
    """Make ``owner``'s running sources the ``wanted`` ones by the smallest change: the one
    path by which reloads and discovery change what runs."""
    async with supervisor.changing:
        plan = plan_sources(supervisor.specs, wanted, owner)
        await apply_source_plan(supervisor, nursery, plan)
    return plan


async def apply_source_changes(
    supervisor: Supervisor,
    nursery: trio.Nursery,
    put: Iterable[SourceSpec],
    gone: Iterable[str],
    owner: str,
) -> SourcePlan:
    """Start, restart or stop only the sources ``put`` and ``gone`` name (see
    :func:`plan_changes`), by the same path as :func:`apply_sources`."""
    async with supervisor.changing:
        plan = plan_changes(supervisor.specs, put, gone, owner)
        await apply_source_plan(supervisor, nursery, plan)
    return plan


async def apply_source_plan(
    supervisor: Supervisor, nursery: trio.Nursery, plan: SourcePlan
) -> None:
    """Stop, restart and start sources as planned; unchanged ones are left alone."""
    for rid in plan.stop:
        await supervisor.stop(rid)
        log.info("reload: stopped source %s", rid)
    for spec in plan.restart:
        # forget=False: the registry keeps the runtime's last known state for the new task.
        await supervisor.stop(spec.runtime_id, forget=False)
        await supervisor.start(nursery, spec)
        log.info("reload: restarted source %s (its configuration changed)", spec.runtime_id)
    for spec in plan.start:
        await supervisor.start(nursery, spec)
        log.info("reload: started source %s", spec.runtime_id)


RESTART_ONLY: Final = (
    "server.listen",
    "server.unix_socket_mode",
    "server.shutdown_grace",
    "server.max_connections",
    "server.max_header_bytes",
    "server.max_body_bytes",
    "server.body_timeout",
    "server.keep_alive_timeout",
    "server.http2",
    "server.http2_max_streams",
    "server.http2_stall_timeout",
    "server.http2_max_buffered_bytes",
    "server.cursor_key_file",
    "registry.channel_capacity",
    "audit",
)
"""Settings a running process keeps until it restarts: listeners, buffers, the audit sink."""


def settings_needing_restart(old: Config, new: Config) -> list[str]:
    """The :data:`RESTART_ONLY` settings that differ between ``old`` and ``new``."""
    return [key for key in RESTART_ONLY if _setting(old, key) != _setting(new, key)]


def _setting(config: Config, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value


def _load(
    path: Path | None,
    transform: Callable[[Config], Config] | None,
    make_spec: Callable[[SourceConfig], SourceSpec],
    prepare: Callable[[Config], Callable[[], None]] | None,
) -> tuple[Config, list[SourceSpec], Callable[[], None] | None]:
    """Everything that can fail, done before anything changes (in a worker thread: it
    reads files)."""
    new = Config() if path is None else load_config(path)
    if transform is not None:
        new = transform(new)
    specs = [make_spec(source) for source in new.sources]
    return new, specs, prepare(new) if prepare is not None else None


async def reload_config(
    path: Path | None,
    current: Config,
    supervisor: Supervisor,
    nursery: trio.Nursery,
    make_spec: Callable[[SourceConfig], SourceSpec],
    status: ReloadStatus,
    *,
    log_level_override: str | None = None,
    transform: Callable[[Config], Config] | None = None,
    prepare: Callable[[Config], Callable[[], None]] | None = None,
) -> Config | None:
    """Load, validate and apply the configuration at ``path``.

    ``transform`` adjusts the loaded configuration as the command line did at start-up.
    ``prepare(new)`` builds what else the daemon needs from the new configuration (it may
    raise :class:`ConfigError`, rejecting the reload) and returns the function that swaps
    it in once the sources are applied. Returns the new configuration, or None when it was
    rejected and ``current`` stays.
    """
    try:
        new, specs, swap_in = await trio.to_thread.run_sync(
            _load, path, transform, make_spec, prepare
        )
    except ConfigError as exc:
        where = exc.source or "the configuration"
        for problem in exc.problems:
            log.error("reload rejected, keeping the running configuration: %s: %s", where, problem)
        status.failed("; ".join(exc.problems))
        return None
    except Exception as exc:  # a bug must not take down a daemon that was running fine
        log.exception("reload failed, keeping the running configuration")
        status.failed(f"internal error ({type(exc).__name__})")
        return None
    supervisor.config = new.supervisor
    plan = await apply_sources(supervisor, nursery, specs, CONFIG_OWNER)
    if swap_in is not None:
        swap_in()
    level = log_level_override or new.logging.level
    logging.getLogger().setLevel(level.upper())
    for key in settings_needing_restart(current, new):
        log.warning("reload: %s changed; it takes effect when the daemon restarts", key)
    status.succeeded()
    log.info(
        "reloaded %s: %d sources started, %d stopped, %d restarted, %d unchanged",
        path or "the built-in defaults",
        len(plan.start),
        len(plan.stop),
        len(plan.restart),
        len(plan.unchanged),
    )
    return new
