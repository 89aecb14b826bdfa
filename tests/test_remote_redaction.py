"""Secrets never leave (contract section 5), checked with canaries over real HTTP.

A canary is planted in every sensitive place of a remote source: the bearer token, the base
URL's path, the token file's path, and the remote runtime's own error text (which names the
URL and the token, as a careless runtime might). With capability tokens, the registry's
signing key and every token it minted are the canaries. The daemon is then driven through every
failure class; at each step every route, every error body and every operation answer is
searched, and so is every log line at INFO and above.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
import trio

from tests import fake_runtime as fr
from tests.conftest import RunningDaemon, StartDaemon, wait_for
from tests.fake_runtime import FakeRuntime, remote_source_toml, start_fake
from tests.test_remote_source import wait_status
from yoi_registryd.capability import SigningKey
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


async def test_no_key_or_token_in_any_response_log_line_or_audit_record(
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    tmp_path: Path,
    state_directory: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Capability tokens: the signing key and every token the registry minted are searched
    for in every answer, every log line at every level (debug included) and the audit
    trail, through success, refusals (401, 403) and failed operations."""
    caplog.set_level(logging.DEBUG)
    key, key_path = fr.registry_identity(tmp_path)
    key_text = key.key_string().reveal()
    key_body = key_text.removeprefix("yoi-ed25519-pkcs8:v1:")
    fake = fr.current_runtime(RID, key)
    ids = [fr.new_worker_id() for _ in range(2)]
    fake.add(fr.FakeWorker(ids[0], status="idle"), fr.FakeWorker(ids[1], status="cancelled"))
    server = await start_fake(nursery, ("/rt", fake))
    d = await start_daemon(
        fr.capability_source_toml(
            RID,
            server.url("/rt"),
            key_path,
            poll_interval="50ms",
            timeout="300ms",
            backoff_max="100ms",
            stale_after="30s",
            expire_after="60s",
            token_reuse="0s",  # a new token for every request: more tokens to look for
        )
    )
    await wait_status(d, RID, "available")
    # The runtime's error text echoes what a careless runtime might: our token.
    fake.error_message = "bad Bearer token: " + "".join(filter(None, fake.auth_headers[-1:]))
    responses: list[str] = []

    async def crawl_all() -> None:
        for path in [*crawl_paths(), f"/api/runtimes/{RID}/workers/{ids[0]}"]:
            response = await d.client.get(path)
            responses.append(response.text + str(dict(response.headers)))
        for wid in ids:
            for op, body in (("stop", {}), ("input", {"kind": "user", "content": "c"})):
                response = await d.client.post(f"/api/runtimes/{RID}/workers/{wid}/{op}", json=body)
                responses.append(response.text + str(dict(response.headers)))

    await crawl_all()
    fake.trusted_servers = {fr.SERVER_ID: SigningKey.generate().public_key_string()}  # 401
    await wait_status(d, RID, "unavailable", "remote_runtime_auth_failed")
    await crawl_all()
    fake.trusted_servers = {fr.SERVER_ID: key.public_key_string()}
    fake.workspace_owners[fr.WORKSPACE_ID] = "another-backend"  # 403
    await wait_status(d, RID, "unavailable", "remote_runtime_forbidden")
    await crawl_all()
    fake.workspace_owners.clear()
    await wait_status(d, RID, "available")
    fake.fault, fake.fault_routes = "error500", frozenset({"operation"})
    await crawl_all()

    def tokens_seen() -> set[str]:
        return {h.removeprefix("Bearer ") for h in fake.auth_headers if h}

    # Enough tokens for the search to mean something. How many reached the runtime so far
    # depends on timing: the polls that overlapped the steps above, and the operations that
    # did reach it (one sent on a keep-alive connection the runtime was closing, as happens
    # under load, never does). Polling goes on every 50 ms, so wait for them.
    await wait_for(lambda: len(tokens_seen()) > 20, message="more than 20 tokens minted")
    tokens = tokens_seen()
    # Each token's signature is unique to it; the claims segment may repeat.
    needles = [key_text, key_body, *(t.rsplit(".", 1)[1] for t in tokens)]
    audit = (state_directory / "audit.jsonl").read_text()
    assert RID in audit  # the trail was written: the search below can fail
    logs = [
        r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
        for r in caplog.records
    ]
    assert any(r.levelno < logging.INFO for r in caplog.records)
    for needle in needles:
        for text in responses:
            assert needle not in text
        assert needle not in audit
        for line in logs:
            assert needle not in line, line
