"""A backend reporting records by key (etcd's watch) has each change applied on its own:
the running sources and the refusals are always what the whole set, applied at once in key
order, would give (duplicates, ``max_runtimes``, ids ``[[sources]]`` hold included)."""

from __future__ import annotations

import math
import random
from functools import partial
from typing import Any

import msgspec
import trio

from yoi_registryd.config import FileDiscoveryConfig, RemoteSourceConfig, SupervisorConfig
from yoi_registryd.discovery.records import to_sources
from yoi_registryd.discovery.runner import DiscoveryRunner
from yoi_registryd.messages import SourceMessage
from yoi_registryd.model import SourceKind
from yoi_registryd.reload import apply_sources
from yoi_registryd.secrets import Secret
from yoi_registryd.sources.base import Reporter, SourceSpec
from yoi_registryd.supervisor import Supervisor

ENTRY = msgspec.convert(
    {"kind": "file", "name": "n", "path": "/x.json", "max_runtimes": 3}, FileDiscoveryConfig
)


class _Idle:
    """A source that never looks at its runtime: only what runs is under test."""

    source_kind: SourceKind = "remote_http"

    def __init__(self, runtime_id: str) -> None:
        self.runtime_id = runtime_id

    async def run(self, reporter: Reporter) -> None:
        await trio.sleep_forever()


class _Backend:
    """Never runs: the test reports to the runner itself."""

    async def run(self, reporter: Any) -> None:
        await trio.sleep_forever()


def idle_spec(config: Any) -> SourceSpec:
    return SourceSpec.of(config, partial(_Idle, config.runtime_id), label=config.runtime_id)


def record(key: str, rid: str, port: int) -> tuple[str, Any]:
    """Port 0: a record that is not a runtime description at all."""
    base = {"runtime_id": rid, "base_url": f"http://127.0.0.1:{port}"}
    return key, base if port else "not a JSON object"


def running(supervisor: Supervisor, owner: str) -> dict[str, Any]:
    specs = supervisor.specs
    return {rid: spec.config for rid, spec in specs.items() if spec.owner == owner}


def refusals(runner: DiscoveryRunner) -> list[tuple[str, str]]:
    return sorted((r.record, r.code) for r in runner.status().refused)


async def test_changes_applied_one_by_one_equal_the_whole_set_applied_at_once() -> None:
    rng = random.Random(18)
    send, receive = trio.open_memory_channel[SourceMessage](math.inf)
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(send, SupervisorConfig())
        # A [[sources]] entry holds one id the records may name too.
        held = RemoteSourceConfig(runtime_id="rt-3", base_url=Secret("http://h:1"))
        await apply_sources(supervisor, nursery, [idle_spec(held)], "config")
        runner = DiscoveryRunner(ENTRY, lambda: _Backend(), supervisor, nursery, idle_spec)
        records: dict[str, tuple[str, Any]] = {}
        await runner.found_keyed({})
        plain = 0
        for _ in range(300):
            key = f"k{rng.randrange(8)}"
            before = runner.status().refreshes
            if rng.random() < 0.3:
                records.pop(key, None)
                await runner.changed({}, {key})
            else:
                # Few ids for 8 keys: duplicates and the bound of 3 come and go.
                put = {key: record(key, f"rt-{rng.randrange(7)}", rng.choice((0, 1, 2)))}
                records.update(put)
                await runner.changed(put, ())
            assert runner.status().refreshes == before + 1
            plain += runner._keyed is not None and runner._keyed.plain

            whole = [records[k] for k in sorted(records)]
            sources, refused = to_sources(ENTRY, whole)
            expected = {s.runtime_id: s for s in sources if s.runtime_id != "rt-3"}
            expected_refused = sorted((r.record, r.code) for r in refused)
            if any(s.runtime_id == "rt-3" for s in sources):
                expected_refused = sorted([*expected_refused, ("rt-3", "runtime_id_in_use")])
            got = running(supervisor, runner.owner)
            assert {rid: (c.base_url.reveal(), c.label) for rid, c in got.items()} == {
                rid: (c.base_url.reveal(), c.label) for rid, c in expected.items()
            }
            assert refusals(runner) == expected_refused
            assert runner.status().runtime_count == len(expected)
        assert running(supervisor, "config") == {"rt-3": held}
        assert plain > 30, "the set was hardly ever plain: changes were not applied alone"
        nursery.cancel_scope.cancel()
    receive.close()
