"""The daemon's discovery entries: started with it, changed by a reload."""

from __future__ import annotations

import functools
import pkgutil
from collections.abc import Callable

import trio

from yoi_registryd.config import DiscoveryConfig, SourceConfig
from yoi_registryd.discovery.runner import Backend, DiscoveryRunner, DiscoveryStatus
from yoi_registryd.sources.base import SourceSpec
from yoi_registryd.supervisor import Supervisor


def backend_factory(entry: DiscoveryConfig) -> Callable[[], Backend]:
    """Builds the backend of ``entry`` (fresh on every restart): the class its kind names
    (``implementation``, imported on first use), called with the entry."""
    backend: Callable[[DiscoveryConfig], Backend] = pkgutil.resolve_name(entry.implementation)
    return functools.partial(backend, entry)


class Discoveries:
    """The running discovery entries, by name."""

    def __init__(
        self, supervisor: Supervisor, make_spec: Callable[[SourceConfig], SourceSpec]
    ) -> None:
        self._supervisor = supervisor
        self._make_spec = make_spec
        self.runners: dict[str, tuple[DiscoveryRunner, trio.CancelScope]] = {}

    def statuses(self) -> list[DiscoveryStatus]:
        return [runner.status() for runner, _ in sorted(self.runners.values(), key=_name)]

    async def apply(self, nursery: trio.Nursery, entries: list[DiscoveryConfig]) -> None:
        """Start new entries, restart changed ones (their runtimes stay until the new
        backend's first set: unchanged ones are not touched) and remove vanished ones."""
        wanted = {entry.name: entry for entry in entries}
        for name in list(self.runners):
            runner, scope = self.runners[name]
            if wanted.get(name) == runner.entry:
                del wanted[name]
                continue
            scope.cancel()
            del self.runners[name]
            if name not in wanted:
                await runner.remove_all()
        for name, entry in wanted.items():
            runner = DiscoveryRunner(
                entry, backend_factory(entry), self._supervisor, nursery, self._make_spec
            )
            scope = trio.CancelScope()
            self.runners[name] = (runner, scope)
            nursery.start_soon(_run_in, scope, runner, name=f"discovery:{name}")


async def _run_in(scope: trio.CancelScope, runner: DiscoveryRunner) -> None:
    with scope:
        await runner.run()


def _name(item: tuple[DiscoveryRunner, trio.CancelScope]) -> str:
    return item[0].entry.name
