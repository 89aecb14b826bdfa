"""What the operator's log says: why a runtime is unwell, once; "ready" only when it is true."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tests.conftest import StartDaemon, listen_socket, local_source_toml, wait_for


def messages(caplog: pytest.LogCaptureFixture, text: str, level: int | None = None) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if text in r.getMessage() and (level is None or r.levelno == level)
    ]


async def test_ready_is_logged_only_once_readyz_answers_200(
    start_daemon: StartDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    """A remote runtime that accepts connections but never answers holds readiness for its
    start-up grace (its ``stale_after``): while /readyz answers 503 the log has no "ready"
    line. Its status change is then a WARNING with the reason."""
    caplog.set_level(logging.INFO, "yoi_registryd")
    mute = listen_socket()  # the kernel accepts; nobody reads or answers
    port = mute.getsockname()[1]
    d = await start_daemon(
        "[[sources]]\n"
        'kind = "remote"\n'
        'runtime_id = "silent"\n'
        f'base_url = "http://127.0.0.1:{port}"\n'
        'poll_interval = "100ms"\n'
        'timeout = "1500ms"\n'
        'stale_after = "1s"\n'
    )
    seen_503 = False

    async def ready() -> bool:
        nonlocal seen_503
        # Looked at before asking: the grace may end, and "ready" be logged, while a 503
        # is on its way back; only a line logged before the question contradicts it.
        logged_before = bool(messages(caplog, "yoi-registryd ready"))
        response = await d.client.get("/readyz")
        if response.status_code == 503:
            seen_503 = True
            assert not logged_before, "logged ready, then /readyz answered 503"
        return response.status_code == 200

    await wait_for(ready, deadline_s=10, message="/readyz to answer 200")
    assert seen_503
    await wait_for(lambda: bool(messages(caplog, "yoi-registryd ready")), message="ready log")
    assert len(messages(caplog, "yoi-registryd ready")) == 1
    change = "runtime silent: unknown -> unavailable: remote_runtime_"
    await wait_for(lambda: bool(messages(caplog, change, logging.WARNING)), message="a warning")
    assert str(port) not in messages(caplog, change)[0]  # the served reason: no endpoint
    mute.close()


async def test_a_missing_data_dir_is_a_warning_naming_the_directory(
    start_daemon: StartDaemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "yoi_registryd")
    missing = tmp_path / "no-such-data-dir"
    await start_daemon(local_source_toml(missing, tmp_path))
    await wait_for(
        lambda: bool(messages(caplog, str(missing), logging.WARNING)),
        message="the source's warning naming the directory",
    )
    [source] = messages(caplog, str(missing), logging.WARNING)
    assert "local_pod_registry_unavailable" in source
    # The actor logs the status change once it has applied the source's report: later.
    await wait_for(
        lambda: bool(messages(caplog, "unknown -> degraded", logging.WARNING)),
        message="the registry's warning about the status change",
    )
    [change] = messages(caplog, "unknown -> degraded", logging.WARNING)
    assert "local_pod_registry_unavailable" in change
    assert str(missing) not in change  # the registry's reason is the served diagnostic


async def test_diagnostics_are_logged_when_they_appear_and_clear_not_on_each_rescan(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "yoi_registryd")
    shutil.rmtree(data_dir / "pods" / "broken")
    d = await start_daemon(
        local_source_toml(data_dir, runtime_dir, rescan_interval="50ms", watch=False)
    )

    async def observations() -> int:
        [source] = (await d.get_json("/api/sources"))["items"]
        return int(source["observations"])

    bad = data_dir / "pods" / "mangled"
    bad.mkdir()
    (bad / "metadata.json").write_text('{"worker_name": ')
    appeared = "local_pod_metadata_invalid on "
    await wait_for(lambda: bool(messages(caplog, appeared)), message="the diagnostic to be logged")
    start = await observations()

    async def rescanned() -> bool:
        return await observations() >= start + 5

    await wait_for(rescanned, message="five more rescans")
    [line] = messages(caplog, appeared, logging.WARNING)
    assert line.startswith("runtime local-worker-runtime: warning local_pod_metadata_invalid on ")
    shutil.rmtree(bad)
    cleared = "local_pod_metadata_invalid cleared"
    await wait_for(lambda: bool(messages(caplog, cleared)), message="the diagnostic to clear")
    start = await observations()
    await wait_for(rescanned, message="five more rescans")
    assert len(messages(caplog, cleared, logging.INFO)) == 1
    assert len(messages(caplog, appeared)) == 1
