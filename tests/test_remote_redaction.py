"""Secrets never leave (contract section 5), checked with canaries over real HTTP.

A canary is planted in every sensitive place of a remote source: the bearer token, the base
URL's path, the token file's path, and the remote runtime's own error text (which names the
URL and the token, as a careless runtime might). The daemon is then driven through every
failure class; at each step every route, every error body and every operation answer is
searched, and so is every log line at INFO and above.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
import trio

from tests.conftest import RunningDaemon, StartDaemon
from tests.fake_runtime import FakeRuntime, remote_source_toml, start_fake
from tests.test_remote_source import wait_status
from yoi_registryd.config import parse_config
from yoi_registryd.ids import REMOTE_HOST_PREFIX, derive_id

RID = "remote-canary"


def crawl_paths() -> list[str]:
    host = derive_id(REMOTE_HOST_PREFIX, RID)
    return [
        "/api/runtimes",
        f"/api/runtimes/{RID}",
        f"/api/runtimes/{RID}/workers",
        f"/api/runtimes/{RID}/workers/w-1",
        f"/api/runtimes/{RID}/workers/w-404",
        "/api/runtimes/nope",
        "/api/hosts",
        f"/api/hosts/{host}/workers",
        "/api/workers",
        "/api/sources",
        "/healthz",
        "/livez",
        "/readyz",
        "/metrics",
        "/",
    ]


async def crawl(d: RunningDaemon, canaries: list[str]) -> int:
    """GET every route and POST every operation; assert no canary in any answer."""
    seen = 0
    for path in crawl_paths():
        response = await d.client.get(path)
        text = response.text + "".join(f"{k}: {v}\n" for k, v in response.headers.items())
        for canary in canaries:
            assert canary not in text, (path, canary)
        seen += 1
    for op, body in (
        ("stop", {"reason": "r"}),
        ("cancel", {}),
        ("input", {"kind": "user", "content": "c"}),
    ):
        response = await d.client.post(f"/api/runtimes/{RID}/workers/w-1/{op}", json=body)
        for canary in canaries:
            assert canary not in response.text, (op, canary)
        seen += 1
    return seen


async def test_no_canary_in_any_response_or_info_log_line(
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    tag = uuid.uuid4().hex[:12]
    token = f"canary-token-{tag}"
    path_canary = f"canary-path-{tag}"
    token_dir = tmp_path / f"canary-file-{tag}"
    token_dir.mkdir()
    token_path = token_dir / "token"
    token_path.write_text(token + "\n")

    fake = FakeRuntime("upstream", token=token)
    fake.add("w-1", "w-2")
    server = await start_fake(nursery, (f"/{path_canary}", fake))
    base_url = server.url(f"/{path_canary}")
    fake.error_message = f"store failed at {base_url} using Bearer {token}"
    canaries = [token, path_canary, base_url, str(token_dir)]

    toml = remote_source_toml(
        RID,
        base_url,
        token_file=str(token_path),
        poll_interval="50ms",
        timeout="300ms",
        backoff_max="100ms",
        stale_after="30s",
        expire_after="60s",
    )
    for canary in canaries[:3]:
        assert canary not in repr(parse_config(toml)), canary
    d = await start_daemon(toml)

    await wait_status(d, RID, "available")
    checked = await crawl(d, canaries)

    fake.token = "rotated-elsewhere"  # our token is now refused
    await wait_status(d, RID, "unavailable", "remote_runtime_auth_failed")
    checked += await crawl(d, canaries)
    fake.token = token
    await wait_status(d, RID, "available")

    for fault, code in (
        ("error500", "remote_runtime_http_error"),
        ("garbage", "remote_runtime_malformed_response"),
        ("wrong_shape", "remote_runtime_malformed_response"),
        ("hang", "remote_runtime_timeout"),
    ):
        fake.fault = fault
        await wait_status(d, RID, "unavailable", code)
        checked += await crawl(d, canaries)
        fake.fault = None
        await wait_status(d, RID, "available")

    # The runtime answers, but operations fail in each way (remote text holds canaries).
    for fault in ("error500", "garbage", "unauthorized", "hang"):
        fake.fault, fake.fault_routes = fault, frozenset({"operation"})
        checked += await crawl(d, canaries)
    fake.fault, fake.fault_routes = None, None

    await server.stop()
    await wait_status(d, RID, "unavailable", "remote_runtime_network_error")
    checked += await crawl(d, canaries)
    assert checked > 100

    info_lines = []
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        if record.levelno >= logging.INFO:
            info_lines.append(text)
            for canary in canaries[:3]:
                assert canary not in text, (record.name, record.levelname, text)
    assert any("remote source" in line and RID in line for line in info_lines)
    # The capture is not vacuous: at DEBUG the operator may see the endpoint.
    assert any(path_canary in r.getMessage() for r in caplog.records if r.levelno < logging.INFO)
