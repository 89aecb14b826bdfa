"""The local compatibility source: a read-only projection of yoi's on-disk Worker metadata.

Not a runtime: it runs no workers and offers no operations (every capability that needs a
live runtime is false). It watches ``<data_dir>/pods`` with watchfiles so that a change to
one Worker file is re-read on its own (work proportional to that file), and rescans on an
interval as a safety net that also catches what a watch cannot see (liveness sockets
vanishing, metadata ageing, a watch lost with its directory).
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import anyio
import trio
import watchfiles

from yoi_registryd.config import LocalSourceConfig
from yoi_registryd.messages import RuntimeDescriptor
from yoi_registryd.model import Capabilities, Diagnostic, HostSpec, SourceKind, WorkerRecord
from yoi_registryd.sources.base import Reporter
from yoi_registryd.sources.local_metadata import (
    REGISTRY_UNAVAILABLE,
    REGISTRY_UNREADABLE,
    EntryResult,
    LocalOptions,
    evaluate_entry,
    is_utf8_name,
    local_host_id,
    normalize_root,
    workspace_id_for_root,
)

log = logging.getLogger(__name__)

RUNTIME_KIND: Final = "local_pod"
HOST_KIND: Final = "local-worker-host"
NOTE: Final = (
    "read-only compatibility projection over local Worker metadata; "
    "no socket, session, or path authority is exposed"
)
REGISTRY_SUBJECT: Final = ""
"""Diagnostics subject of the registry directory itself (entries use their worker id)."""

_WATCH_DEBOUNCE_MS: Final = 400
_WATCH_STEP_MS: Final = 15
_WATCH_TIMEOUT_MS: Final = 1000
"""A quiet watch still yields this often; its first yield starts the catch-up rescan of what
changed while the watch was being set up, so this bounds how late such a change shows."""
_WATCH_EACH_DIR_TIMEOUT_MS: Final = 250
"""The same while watching each Worker directory on its own, which watches anew for every
new directory (each wake-up costs a thread round trip: about 0.4% of a core at 250 ms)."""
_MISSING_DIR_POLL: Final = 1.0
_WATCH_RETRY_MAX: Final = 60.0


def _platform_os() -> str:
    """``std::env::consts::OS`` spelling, as upstream reports it."""
    return {"darwin": "macos"}.get(platform.system().lower(), platform.system().lower())


def _platform_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


class LocalCompatibilitySource:
    """Projects ``<data_dir>/pods/*/metadata.json`` into worker records."""

    source_kind: SourceKind = "local_compatibility"

    def __init__(self, config: LocalSourceConfig) -> None:
        self.config = config
        self.runtime_id = config.runtime_id
        self.data_dir = config.resolved_data_dir()
        self.pods_dir = self.data_dir / "pods"
        bound = normalize_root(config.workspace_root) if config.workspace_root else None
        self.options = LocalOptions(
            runtime_id=config.runtime_id,
            pods_dir=self.pods_dir,
            runtime_dir=config.resolved_runtime_dir(),
            bound_root=bound,
            liveness_check=config.liveness_check,
            max_age_seconds=(
                config.max_metadata_age.total_seconds() if config.max_metadata_age else None
            ),
            max_bytes=config.max_metadata_bytes,
        )
        self._bound_host_id = local_host_id(workspace_id_for_root(bound)) if bound else None
        self._entries: dict[str, EntryResult] = {}
        self._registry_problem: Diagnostic | None = None
        self._hosts: tuple[HostSpec, ...] = ()
        self._lock = trio.Lock()
        self._watching_each_dir = False
        """A name in the pods dir is not UTF-8: each Worker directory has its own watch."""

    # -- descriptors -------------------------------------------------------------------

    def _capabilities(self, readable: bool) -> Capabilities:
        return Capabilities(
            can_list_hosts=True,
            can_list_workers=readable,
            can_get_worker=readable,
            workspace_scope="current_workspace" if self._bound_host_id else "all_workspaces",
            os=_platform_os(),
            arch=_platform_arch(),
        )

    def _descriptor(self) -> RuntimeDescriptor:
        readable = self._registry_problem is None
        return RuntimeDescriptor(
            label=self.config.label,
            kind=RUNTIME_KIND,
            capabilities=self._capabilities(readable),
            note=NOTE,
            degraded=not readable,
        )

    def _compute_hosts(self) -> tuple[HostSpec, ...]:
        caps = self._capabilities(self._registry_problem is None)
        host_ids: set[str] = set()
        if self._bound_host_id is not None:
            host_ids.add(self._bound_host_id)
        else:
            host_ids.update(e.worker.host_id for e in self._entries.values() if e.worker)
        return tuple(
            HostSpec(host_id=h, label="Local Worker host", kind=HOST_KIND, capabilities=caps)
            for h in sorted(host_ids)
        )

    # -- scanning (runs in a worker thread) --------------------------------------------

    def _list_names(self) -> list[str] | Diagnostic:
        """The Worker directory names, or the registry-level diagnostic why there are none."""
        if not self.data_dir.is_dir():
            return Diagnostic(
                REGISTRY_UNAVAILABLE,
                "warning",
                "local Worker data directory is not available; worker discovery is unavailable",
            )
        try:
            with os.scandir(self.pods_dir) as it:
                return sorted(
                    e.name for e in it if e.is_dir(follow_symlinks=False) or e.is_symlink()
                )
        except FileNotFoundError:
            reason = "the pods directory does not exist"
        except NotADirectoryError:
            reason = "the pods path is not a directory"
        except PermissionError:
            reason = "permission denied"
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else "I/O error"
        return Diagnostic(
            REGISTRY_UNREADABLE, "warning", f"local Worker registry could not be read: {reason}"
        )

    def _scan(
        self, known: dict[str, EntryResult]
    ) -> tuple[Diagnostic | None, dict[str, EntryResult], set[str]]:
        """Full scan: ``lstat`` every entry, re-read only those that may have changed.

        Returns the registry problem (if any), the entries that changed, and the names that
        are gone.
        """
        names = self._list_names()
        if isinstance(names, Diagnostic):
            return names, {}, set(known)
        changed: dict[str, EntryResult] = {}
        for name in names:
            old = known.get(name)
            if old is not None and old.unchanged(self.options):
                continue
            result = evaluate_entry(name, self.options)
            if old is None or old.fingerprint != result.fingerprint:
                changed[name] = result
        return None, changed, set(known) - set(names)

    def _evaluate(self, names: Iterable[str]) -> dict[str, EntryResult | None]:
        """Re-read the named entries; ``None`` for an entry whose directory is gone."""
        out: dict[str, EntryResult | None] = {}
        for name in names:
            path = self.pods_dir / name
            if path.is_symlink() or path.is_dir():
                out[name] = evaluate_entry(name, self.options)
            else:
                out[name] = None
        return out

    # -- applying and reporting ----------------------------------------------------------

    def _worker_map(self) -> tuple[WorkerRecord, ...]:
        return tuple(e.worker for e in self._entries.values() if e.worker is not None)

    async def _report_full(self, reporter: Reporter, duration: float) -> None:
        self._hosts = self._compute_hosts()
        diagnostics = {r.worker_id: r.diagnostics for r in self._entries.values() if r.diagnostics}
        if self._registry_problem is not None:
            diagnostics[REGISTRY_SUBJECT] = (self._registry_problem,)
        await reporter.observed(
            self._descriptor(), self._hosts, self._worker_map(), diagnostics, duration=duration
        )

    async def _apply(
        self,
        reporter: Reporter,
        problem: Diagnostic | None,
        changed: dict[str, EntryResult],
        gone: set[str],
        duration: float,
    ) -> None:
        """Fold a change into the source's view and send the delta (or a heartbeat)."""
        registry_changed = problem != self._registry_problem
        self._registry_problem = problem
        upserts: list[WorkerRecord] = []
        removals: list[str] = []
        diagnostics: dict[str, tuple[Diagnostic, ...]] = {}
        for name in gone:
            old = self._entries.pop(name, None)
            if old is None:
                continue
            if old.worker is not None:
                removals.append(old.worker_id)
            if old.diagnostics:
                diagnostics[old.worker_id] = ()
        for name, result in changed.items():
            old = self._entries.get(name)
            self._entries[name] = result
            if result.worker is not None:
                upserts.append(result.worker)
            elif old is not None and old.worker is not None:
                removals.append(old.worker_id)
            if result.diagnostics or (old is not None and old.diagnostics):
                diagnostics[result.worker_id] = result.diagnostics
        if registry_changed:
            diagnostics[REGISTRY_SUBJECT] = (problem,) if problem else ()
        hosts = self._compute_hosts()
        new_hosts = hosts if hosts != self._hosts else None
        self._hosts = hosts
        if upserts or removals or diagnostics or new_hosts is not None or registry_changed:
            await reporter.changed(
                upserts=tuple(upserts),
                removals=tuple(removals),
                diagnostics=diagnostics,
                hosts=new_hosts,
                runtime=self._descriptor() if registry_changed else None,
                duration=duration,
            )
        else:
            await reporter.succeeded(duration=duration)

    async def _rescan(self, reporter: Reporter) -> None:
        async with self._lock:
            known = dict(self._entries)
            started = trio.current_time()
            problem, changed, gone = await trio.to_thread.run_sync(self._scan, known)
            await self._apply(reporter, problem, changed, gone, trio.current_time() - started)

    async def _refresh(self, reporter: Reporter, names: set[str]) -> None:
        async with self._lock:
            started = trio.current_time()
            results = await trio.to_thread.run_sync(self._evaluate, names)
            changed = {
                n: r
                for n, r in results.items()
                if r is not None
                and (n not in self._entries or self._entries[n].fingerprint != r.fingerprint)
            }
            gone = {n for n, r in results.items() if r is None}
            duration = trio.current_time() - started
            await self._apply(reporter, self._registry_problem, changed, gone, duration)

    # -- the task ------------------------------------------------------------------------

    async def run(self, reporter: Reporter) -> None:
        async with self._lock:
            started = trio.current_time()
            problem, changed, _ = await trio.to_thread.run_sync(self._scan, {})
            self._registry_problem = problem
            self._entries = dict(changed)
            await self._report_full(reporter, trio.current_time() - started)
        log.info(
            "local source %s: %d worker entries under %s",
            self.runtime_id,
            len(self._entries),
            self.pods_dir,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._rescan_loop, reporter)
            if self.config.watch:
                nursery.start_soon(self._watch_loop, reporter)

    async def _rescan_loop(self, reporter: Reporter) -> None:
        interval = self.config.rescan_interval.total_seconds()
        while True:
            await trio.sleep(interval)
            await self._rescan(reporter)

    async def _watch_loop(self, reporter: Reporter) -> None:
        """Watch the pods dir; when it is missing, wait for it; when lost, rescan and rewatch."""
        retry = _MISSING_DIR_POLL
        while True:
            if not self.pods_dir.is_dir():
                await trio.sleep(_MISSING_DIR_POLL)
                if self.pods_dir.is_dir():
                    await self._rescan(reporter)
                continue
            failed = await self._watch_once(reporter)
            # The watch ended (its directory vanished or was replaced, or it failed, e.g. on
            # a name that is not UTF-8): catch up in full. A watch that keeps failing is
            # retried with a growing delay; the interval rescan covers the gap.
            await self._rescan(reporter)
            if failed:
                await trio.sleep(retry)
                retry = min(retry * 2, _WATCH_RETRY_MAX)
            else:
                retry = _MISSING_DIR_POLL

    async def _watch_once(self, reporter: Reporter) -> bool:
        """Watch until the watch ends; True when it failed (rather than lost its dir)."""
        stop = anyio.Event()
        async with trio.open_nursery() as nursery:

            async def stopper() -> None:
                # watchfiles waits in a thread that only notices ``stop``; set it as soon
                # as we are cancelled so shutdown and reload are prompt.
                try:
                    await trio.sleep_forever()
                finally:
                    stop.set()

            nursery.start_soon(stopper)
            caught_up = False
            failed = False
            paths, recursive = await trio.to_thread.run_sync(self._watch_plan)
            watched_dirs = {path.name for path in paths[1:]}  # paths[0] is the pods dir
            if not recursive and not self._watching_each_dir:
                log.warning(
                    "local source %s: a name under %s is not UTF-8, which a recursive watch "
                    "cannot report; watching each Worker directory on its own",
                    self.runtime_id,
                    self.pods_dir,
                )
            self._watching_each_dir = not recursive
            try:
                async for changes in watchfiles.awatch(
                    *paths,
                    watch_filter=None,
                    debounce=_WATCH_DEBOUNCE_MS,
                    step=_WATCH_STEP_MS,
                    stop_event=stop,
                    rust_timeout=_WATCH_TIMEOUT_MS if recursive else _WATCH_EACH_DIR_TIMEOUT_MS,
                    yield_on_timeout=True,
                    recursive=recursive,
                    ignore_permission_denied=True,
                ):
                    names, lost = self._affected(changes)
                    if lost:
                        break
                    if not caught_up:
                        # The first yield (a change or a timeout) comes after the watch is
                        # in place: rescan once so that nothing written between the last
                        # scan and the watch starting waits for the next interval rescan.
                        caught_up = True
                        await self._rescan(reporter)
                    elif names:
                        await self._refresh(reporter, names)
                    if not recursive and names - watched_dirs:
                        break  # a new Worker directory: watch again, with it
            except* (OSError, RuntimeError) as group:
                # awatch runs in a task group, so its errors come grouped. The rescan remains
                # the safety net; the caller waits before watching again.
                failed = True
                log.warning(
                    "local source %s: watch failed (%s); rescanning",
                    self.runtime_id,
                    "; ".join(str(e) for e in group.exceptions),
                )
            nursery.cancel_scope.cancel()
        return failed

    def _watch_plan(self) -> tuple[list[Path], bool]:
        """The paths to watch, and whether recursively: the pods dir, recursively; or, when a
        name in it is not UTF-8 (the watcher cannot decode it, so a recursive watch fails
        to start), the pods dir and each other Worker directory on its own."""
        try:
            names = os.listdir(self.pods_dir)
        except OSError:
            return [self.pods_dir], True
        decodable = [name for name in names if is_utf8_name(name)]
        if len(decodable) == len(names):
            return [self.pods_dir], True
        entries = (self.pods_dir / name for name in decodable)
        return [self.pods_dir, *(entry for entry in entries if entry.is_dir())], False

    def _affected(self, changes: set[tuple[watchfiles.Change, str]]) -> tuple[set[str], bool]:
        """Worker directory names touched by ``changes``; True if the pods dir itself was."""
        names: set[str] = set()
        pods = str(self.pods_dir)
        for _change, raw in changes:
            path = Path(raw)
            try:
                rel = path.relative_to(pods)
            except ValueError:
                return names, True
            if not rel.parts:
                return names, True
            names.add(rel.parts[0])
        return names, False
