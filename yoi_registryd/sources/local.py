"""The local compatibility source: a read-only projection of yoi's on-disk Worker metadata.

Not a runtime: it runs no workers and offers no operations (every capability that needs a
live runtime is false). It reads every layout yoi has written (contract-v2 section 3.2):
``<data_dir>/workers/<name>/``, the older ``<data_dir>/pods/<name>/`` and each runtime
store's ``workers/<id>/``; a name found in more than one is read from the first of them, in
that order (a Worker yoi moved from ``pods`` to ``workers`` keeps its id and is shown once).
It watches those directories with watchfiles so that a change to one Worker file is
re-read on its own (work proportional to that file), and rescans on an interval as a safety
net that also catches what a watch cannot see (liveness sockets vanishing, metadata ageing,
a watch lost with its directory, a workspace identity file written later).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Final

import trio
import watchfiles

from yoi_registryd.backoff import Backoff
from yoi_registryd.config import LocalSourceConfig
from yoi_registryd.files import watch_changes, watch_stop_event
from yoi_registryd.ids import normalize_root
from yoi_registryd.messages import RuntimeDescriptor
from yoi_registryd.model import Capabilities, Diagnostic, HostSpec, SourceKind, WorkerRecord
from yoi_registryd.sources.base import Reporter, SourceSpec
from yoi_registryd.sources.local_metadata import (
    REGISTRY_UNAVAILABLE,
    REGISTRY_UNREADABLE,
    EntryResult,
    LocalOptions,
    WorkspaceHosts,
    evaluate_entry,
    is_utf8_name,
)
from yoi_registryd.vocabulary import RUNTIME_KINDS, WORKSPACE_SCOPES, machine_arch, machine_os

log = logging.getLogger(__name__)

RUNTIME_KIND: Final = RUNTIME_KINDS["local_compatibility"]
HOST_KIND: Final = "local-worker-host"
NOTE: Final = (
    "read-only compatibility projection over local Worker metadata; "
    "no socket, session, or path authority is exposed"
)
REGISTRY_SUBJECT: Final = ""
"""Diagnostics subject of the registry directory itself (entries use their worker id)."""

_WATCH_DEBOUNCE_MS: Final = 400
_WATCH_STEP_MS: Final = 2
"""watchfiles checks for events every ``step`` and reports them once a step passes without a
new one, so a write shows ``step`` to ``2 * step`` after it happened (15 ms made that most
of the local freshness p99). Each check takes the GIL for a few microseconds: 2 ms costs
about 0.4% of a core more than 15 ms on an idle daemon (measured with 100 Workers)."""
_WATCH_TIMEOUT_MS: Final = 1000
"""A quiet watch still yields this often; its first yield starts the catch-up rescan of what
changed while the watch was being set up, so this bounds how late such a change shows."""
_WATCH_EACH_DIR_TIMEOUT_MS: Final = 250
"""The same while watching each Worker directory on its own, which watches anew for every
new directory (each wake-up costs a thread round trip: about 0.4% of a core at 250 ms)."""
_MISSING_DIR_POLL: Final = 1.0
_WATCH_RETRY_MAX: Final = 60.0


BoundHost = tuple[str, Diagnostic | None]
"""A bound source's host: its id, and the note when the id is a fallback."""


class LocalCompatibilitySource:
    """Projects the Worker metadata of every layout (module doc) into worker records."""

    source_kind: SourceKind = LocalSourceConfig.source_kind

    @classmethod
    def spec(cls, config: LocalSourceConfig) -> SourceSpec:
        """A fresh source on every (re)start, under the configured label."""
        return SourceSpec.of(config, partial(cls, config), label=config.label)

    def __init__(self, config: LocalSourceConfig) -> None:
        self.config = config
        self.runtime_id = config.runtime_id
        self.data_dir = config.resolved_data_dir()
        bound = normalize_root(config.workspace_root) if config.workspace_root else None
        self.bound_root = bound
        legacy = LocalOptions(
            runtime_id=config.runtime_id,
            directory=self.data_dir / "workers",
            runtime_dir=config.resolved_runtime_dir(),
            bound_root=bound,
            liveness_check=config.liveness_check,
            max_age_seconds=(
                config.max_metadata_age.total_seconds() if config.max_metadata_age else None
            ),
            max_bytes=config.max_metadata_bytes,
        )
        stores = config.resolved_runtime_stores(self.data_dir)
        layouts = (
            legacy,
            replace(legacy, directory=self.data_dir / "pods"),
            *(replace(legacy, directory=d / "workers", runtime_managed=True) for d in stores),
        )
        unique: dict[Path, LocalOptions] = {}
        for layout in layouts:
            unique.setdefault(layout.directory, layout)
        self.layouts: tuple[LocalOptions, ...] = tuple(unique.values())
        """Where Worker directories are read from, first match first."""
        self._bound_host: BoundHost | None = None
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
            local_pod_inspection="available" if readable else "unavailable",
            workspace_scope=WORKSPACE_SCOPES[self.source_kind],
            os=machine_os(),
            arch=machine_arch(),
            registry_workspace_scope=("current_workspace" if self.bound_root else "all_workspaces"),
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
        """One host per workspace: the bound one, else each one a Worker belongs to."""
        caps = self._capabilities(self._registry_problem is None)
        notes: dict[str, Diagnostic | None] = {}
        if self._bound_host is not None:
            notes[self._bound_host[0]] = self._bound_host[1]
        else:
            for entry in self._entries.values():
                if entry.worker is not None:
                    notes.setdefault(entry.worker.host_id, entry.host_note)
        return tuple(
            HostSpec(
                host_id=h,
                label="Local Worker host",
                kind=HOST_KIND,
                capabilities=caps,
                diagnostics=(note,) if note is not None else (),
            )
            for h, note in sorted(notes.items())
        )

    # -- scanning (runs in a worker thread) --------------------------------------------

    def _list_names(self) -> tuple[dict[str, LocalOptions], Diagnostic | None]:
        """The Worker directory names, each with the layout it is read from (the first that
        has it), and the registry-level diagnostic when a layout could not be listed."""
        found: dict[str, LocalOptions] = {}
        problems: list[str] = []
        listed = 0
        for layout in self.layouts:
            try:
                with os.scandir(layout.directory) as it:
                    names = [
                        e.name for e in it if e.is_dir(follow_symlinks=False) or e.is_symlink()
                    ]
            except FileNotFoundError:
                continue  # a layout this installation does not use (yet)
            except NotADirectoryError:
                reason = "it is not a directory"
            except PermissionError:
                reason = "permission denied"
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else "I/O error"
            else:
                listed += 1
                for name in sorted(names):
                    found.setdefault(name, layout)
                continue
            problems.append(f"{_layout_name(layout, self.data_dir)}: {reason}")
        if problems:
            message = "local Worker registry could not be read: " + "; ".join(problems)
            return found, Diagnostic(REGISTRY_UNREADABLE, "warning", message)
        if listed:
            return found, None
        if not self.data_dir.is_dir():
            return found, Diagnostic(
                REGISTRY_UNAVAILABLE,
                "warning",
                "local Worker data directory is not available; worker discovery is unavailable",
            )
        return found, Diagnostic(
            REGISTRY_UNREADABLE,
            "warning",
            "local Worker registry could not be read: no Worker metadata directory exists",
        )

    def _bound(self, hosts: WorkspaceHosts) -> BoundHost | None:
        return hosts.for_root(self.bound_root) if self.bound_root is not None else None

    def _scan(
        self, known: dict[str, EntryResult]
    ) -> tuple[Diagnostic | None, dict[str, EntryResult], set[str], BoundHost | None]:
        """Full scan: ``lstat`` every entry, re-read only those that may have changed.

        Returns the registry problem (if any), the entries that changed, the names that
        are gone, and the bound host.
        """
        hosts = WorkspaceHosts()
        found, problem = self._list_names()
        changed: dict[str, EntryResult] = {}
        for name, layout in found.items():
            old = known.get(name)
            if (
                old is not None
                and old.directory == layout.directory
                and old.unchanged(layout, hosts)
            ):
                continue
            result = evaluate_entry(name, layout, hosts=hosts)
            if _differs(old, result):
                changed[name] = result
        return problem, changed, set(known) - set(found), self._bound(hosts)

    def _evaluate(
        self, names: Iterable[str]
    ) -> tuple[dict[str, EntryResult | None], BoundHost | None]:
        """Re-read the named entries; ``None`` for an entry whose directory is gone."""
        hosts = WorkspaceHosts()
        out: dict[str, EntryResult | None] = {}
        for name in names:
            out[name] = None
            for layout in self.layouts:
                path = layout.directory / name
                if path.is_symlink() or path.is_dir():
                    out[name] = evaluate_entry(name, layout, hosts=hosts)
                    break
        return out, self._bound(hosts)

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

    def _log_registry_problem(self, problem: Diagnostic | None) -> None:
        """The data dir's problem (or its end) once, naming the directory: the served
        diagnostic cannot say which path, the operator's log must."""
        if problem is None:
            log.info("local source %s: %s is readable again", self.runtime_id, self.data_dir)
        else:
            log.warning(
                "local source %s: %s: %s (%s)",
                self.runtime_id,
                problem.code,
                problem.message,
                self.data_dir,
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
        if registry_changed:
            self._log_registry_problem(problem)
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
        await reporter.changed(
            upserts=tuple(upserts),
            removals=tuple(removals),
            diagnostics=diagnostics,
            hosts=new_hosts,
            runtime=self._descriptor() if registry_changed else None,
            duration=duration,
        )

    async def _rescan(self, reporter: Reporter) -> None:
        async with self._lock:
            known = dict(self._entries)
            started = trio.current_time()
            problem, changed, gone, bound = await trio.to_thread.run_sync(self._scan, known)
            self._bound_host = bound
            await self._apply(reporter, problem, changed, gone, trio.current_time() - started)

    async def _refresh(self, reporter: Reporter, names: set[str]) -> None:
        async with self._lock:
            started = trio.current_time()
            results, bound = await trio.to_thread.run_sync(self._evaluate, names)
            self._bound_host = bound
            changed = {
                n: r
                for n, r in results.items()
                if r is not None and _differs(self._entries.get(n), r)
            }
            gone = {n for n, r in results.items() if r is None}
            duration = trio.current_time() - started
            await self._apply(reporter, self._registry_problem, changed, gone, duration)

    # -- the task ------------------------------------------------------------------------

    async def run(self, reporter: Reporter) -> None:
        async with self._lock:
            started = trio.current_time()
            problem, changed, _, bound = await trio.to_thread.run_sync(self._scan, {})
            self._bound_host = bound
            self._registry_problem = problem
            self._entries = dict(changed)
            await self._report_full(reporter, trio.current_time() - started)
        if problem is not None:
            self._log_registry_problem(problem)
        log.info(
            "local source %s: %d worker entries under %s",
            self.runtime_id,
            len(self._entries),
            ", ".join(str(layout.directory) for layout in self.layouts),
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

    def _present_layouts(self) -> tuple[Path, ...]:
        return tuple(layout.directory for layout in self.layouts if layout.directory.is_dir())

    async def _watch_loop(self, reporter: Reporter) -> None:
        """Watch the layouts' directories that exist; when none does, wait for one; when a
        watch is lost or another directory appears, rescan and watch again."""
        retry = Backoff(_MISSING_DIR_POLL, _WATCH_RETRY_MAX)
        while True:
            present = self._present_layouts()
            if not present:
                await trio.sleep(_MISSING_DIR_POLL)
                if self._present_layouts():
                    await self._rescan(reporter)
                continue
            failed = await self._watch_once(reporter, present)
            # The watch ended (a directory vanished, was replaced or appeared, or it failed,
            # e.g. on a name that is not UTF-8): catch up in full. A watch that keeps failing
            # is retried with a growing delay; the interval rescan covers the gap.
            await self._rescan(reporter)
            if failed:
                await trio.sleep(retry.next_delay())
            else:
                retry.reset()

    async def _watch_once(self, reporter: Reporter, present: tuple[Path, ...]) -> bool:
        """Watch ``present`` until the watch ends; True when it failed (rather than lost or
        gained a directory)."""
        async with trio.open_nursery() as nursery:
            stop = watch_stop_event(nursery)
            caught_up = False
            failed = False
            paths, recursive = await trio.to_thread.run_sync(self._watch_plan, present)
            watched_dirs = {path.name for path in paths if path not in present}
            if not recursive and not self._watching_each_dir:
                log.warning(
                    "local source %s: a name under %s is not UTF-8, which a recursive watch "
                    "cannot report; watching each Worker directory on its own",
                    self.runtime_id,
                    ", ".join(map(str, present)),
                )
            self._watching_each_dir = not recursive
            try:
                async for changes in watch_changes(
                    paths,
                    stop,
                    debounce_ms=_WATCH_DEBOUNCE_MS,
                    step_ms=_WATCH_STEP_MS,
                    timeout_ms=_WATCH_TIMEOUT_MS if recursive else _WATCH_EACH_DIR_TIMEOUT_MS,
                    recursive=recursive,
                    ignore_permission_denied=True,
                ):
                    names, lost = self._affected(changes, present)
                    if lost or self._present_layouts() != present:
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

    def _watch_plan(self, present: tuple[Path, ...]) -> tuple[list[Path], bool]:
        """The paths to watch, and whether recursively: the layouts' directories,
        recursively; or, when a name in one is not UTF-8 (the watcher cannot decode it, so
        a recursive watch fails to start), those directories and each Worker directory in
        them on its own."""
        entries: list[Path] = []
        whole = True
        for directory in present:
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            decodable = [name for name in names if is_utf8_name(name)]
            whole = whole and len(decodable) == len(names)
            entries.extend(directory / name for name in decodable)
        if whole:
            return list(present), True
        return [*present, *(entry for entry in entries if entry.is_dir())], False

    def _affected(
        self, changes: set[tuple[watchfiles.Change, str]], present: tuple[Path, ...]
    ) -> tuple[set[str], bool]:
        """Worker directory names touched by ``changes``; True if a watched layout
        directory itself was (removed, replaced)."""
        names: set[str] = set()
        for _change, raw in changes:
            path = Path(raw)
            for directory in present:
                try:
                    rel = path.relative_to(directory)
                except ValueError:
                    continue
                if not rel.parts:
                    return names, True
                names.add(rel.parts[0])
                break
            else:
                return names, True
        return names, False


def _differs(old: EntryResult | None, new: EntryResult) -> bool:
    """Whether ``new`` must be reported in place of ``old``."""
    return old is None or old.fingerprint != new.fingerprint or old.directory != new.directory


def _layout_name(layout: LocalOptions, data_dir: Path) -> str:
    """A layout's directory named for a diagnostic, without its path."""
    if layout.runtime_managed:
        return "a runtime store's workers directory"
    return (
        f"the {layout.directory.name} directory"
        if layout.directory.parent == data_dir
        else ("a Worker metadata directory")
    )
