from pathlib import Path

from tests.conftest import StartDaemon, local_source_toml


async def test_daemon_serves_fixture_workers(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await start_daemon(local_source_toml(data_dir, runtime_dir))
    from tests.conftest import wait_for

    async def ready() -> bool:
        body = await d.get_json("/api/workers")
        return len(body["items"]) > 0

    await wait_for(ready)
    body = await d.get_json("/api/workers")
    assert {w["label"] for w in body["items"]} == {
        "coder",
        "reviewer",
        "idle-helper",
        "other-ws",
        "legacy-pod",
        "Ticket#Worker@Reviewer",
    }
