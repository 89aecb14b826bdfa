"""A daemon with something wrong in every way an operator should be told about, for the
tests of ``yoi-registryd status`` and of the status page (with tokens on and off)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio

from tests.conftest import RunningDaemon, StartDaemon, local_source_toml, wait_for
from tests.scripted_source import Script, failing_spec

OPERATOR_TOKEN = "unwell-daemon-operator-token-0123456789"
WORKSPACE_TOKEN = "unwell-daemon-workspace-token-0123456789"


def clients_toml() -> str:
    """An operator (every workspace) and a client of one workspace."""

    def sha(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    return (
        f'[[clients]]\nname = "ops"\nworkspaces = ["*"]\ntoken_sha256 = "{sha(OPERATOR_TOKEN)}"\n'
        f'[[clients]]\nname = "web"\nworkspaces = ["ws1"]\n'
        f'token_sha256 = "{sha(WORKSPACE_TOKEN)}"\n'
    )


async def unwell_daemon(
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    data_dir: Path,
    runtime_dir: Path,
    tmp_path: Path,
    tokens: bool,
) -> RunningDaemon:
    """The fixture workers (with a malformed metadata file), a runtime whose data dir is
    missing (degraded), a healthy scripted runtime and a source that keeps failing
    (unavailable); with ``tokens``, :func:`clients_toml`'s clients."""
    body = local_source_toml(data_dir, runtime_dir) + (
        '[[sources]]\nkind = "local"\nruntime_id = "no-data"\nlabel = "Missing data dir"\n'
        f'data_dir = "{tmp_path / "absent"}"\nruntime_dir = "{runtime_dir}"\n'
    )
    d = await start_daemon(body + (clients_toml() if tokens else ""))
    script = Script("scripted-runtime", label="Embedded build runtime")
    await d.daemon.supervisor.start(nursery, script.spec())
    await script.observe("builder", "tester", "planner", state="idle", duration=0.012)
    await d.daemon.supervisor.start(nursery, failing_spec("unreachable-runtime", stale_after=60))

    def settled() -> bool:
        runtimes = d.daemon.actor.snapshot.runtimes
        return (
            len(runtimes) == 4
            and runtimes["unreachable-runtime"].record.supervisor.restarts >= 1
            and runtimes["no-data"].record.registry_status == "degraded"
            and runtimes["scripted-runtime"].record.worker_count == 3
            and runtimes["local-worker-runtime"].record.worker_count > 0
        )

    await wait_for(settled)
    # Added after start-up, these sources are waited for as if known at start-up:
    d.daemon.lifecycle.ready_since = None
    return d
