"""What a poll costs the runtime: one request while nothing changed, the summary as needed.

A polled runtime is asked ``GET /v1/workers`` on every poll and ``GET /v1/runtime`` only
every ``SUMMARY_EVERY`` polls, or at once when its workers changed or an operation was
sent: the runtime's own state still reaches the registry, in the same observation as a
change of its workers.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.conftest import StartDaemon, wait_for
from tests.fake_runtime import FakeRuntime, remote_source_toml, start_fake
from yoi_registryd.sources.remote import SUMMARY_EVERY

TOKEN = "polling-token-77c1"
OPTIONS = {"poll_interval": "20ms", "timeout": "1s", "stale_after": "5s", "expire_after": "10s"}


async def test_an_unchanged_runtime_costs_one_request_per_poll(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeRuntime("older", token=TOKEN)
    fake.add("w-1")
    server = await start_fake(nursery, ("/yoi", fake))
    token = tmp_path / "token"
    token.write_text(TOKEN)
    config = remote_source_toml("r", server.url("/yoi"), token_file=str(token), **OPTIONS)
    d = await start_daemon(config)

    async def listed(n: int) -> bool:
        body = await d.get_json("/api/runtimes/r/workers")
        return len(body["items"]) == n

    await wait_for(lambda: listed(1), message="the first poll")
    start_workers, start_runtime = fake.count("workers"), fake.count("runtime")
    await wait_for(lambda: fake.count("workers") >= start_workers + 6 * SUMMARY_EVERY)
    polls = fake.count("workers") - start_workers
    summaries = fake.count("runtime") - start_runtime
    assert polls // SUMMARY_EVERY - 1 <= summaries <= polls // SUMMARY_EVERY + 1, (
        polls,
        summaries,
    )

    # The runtime's own state alone still shows within SUMMARY_EVERY polls...
    fake.display_name = "renamed"

    async def renamed() -> bool:
        return bool((await d.get_json("/api/runtimes/r"))["label"] == "renamed")

    await wait_for(renamed, message="the new label")

    # ... and together with a change of its workers, in the same observation.
    assert not (await d.get_json("/api/runtimes/r"))["capabilities"]["can_spawn_worker"]
    fake.worker_creation_available = True
    fake.add("w-2")
    await wait_for(lambda: listed(2), message="the new worker")
    assert (await d.get_json("/api/runtimes/r"))["capabilities"]["can_spawn_worker"]
