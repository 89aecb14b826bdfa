"""Unbounded inputs (issue 13, item 5): each attack, and that it now gets a typed answer.

Query parameters too long to parse (``?limit=`` with 5,000 digits answered 500 with a
traceback), a remote's gzip bomb (200 MB of zeros held a peak RSS of 181 MB against an
8 MiB ``max_response_bytes``), remote JSON nested thousands of levels (``RecursionError``: the
source crashed and restarted) and a local ``metadata.json`` nested as deep (the catch-all
internal-error diagnostic and a traceback on every rescan).
"""

from __future__ import annotations

import functools
import logging
import zlib
from pathlib import Path

import pytest
import trio

from tests.conftest import StartDaemon, local_source_toml, wait_for
from tests.test_api import assert_error, fixture_daemon
from tests.test_faults import (
    Handler,
    RawServer,
    _peak_rss_reset,
    _rss_kib,
    audit_toml,
    healthy_neighbour,
    neighbour_toml,
    read_head,
    remote_toml,
    start_beside_an_oversized_remote,
    start_raw,
    status_of,
    wait_status,
)
from tests.test_local_bad_input import diagnostic_for
from tests.test_local_live import RID, runtime, write_worker
from yoi_registryd.json_depth import MAX_JSON_DEPTH, json_depth
from yoi_registryd.sources import local_metadata
from yoi_registryd.sources.local_metadata import LocalOptions

THOUSANDS_OF_DIGITS = "1" * 5000
DEEP = 5000


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- query parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        (f"limit={THOUSANDS_OF_DIGITS}", "limit"),
        (f"index={THOUSANDS_OF_DIGITS}", "index"),
        (f"index=1&wait={THOUSANDS_OF_DIGITS}", "wait"),
        (f"index=1&wait={THOUSANDS_OF_DIGITS}.5", "wait"),
        (f"index=1&wait={THOUSANDS_OF_DIGITS}s", "wait"),
        ("index=99999999999999999999", "index"),
    ],
)
async def test_numbers_too_long_to_parse_are_a_typed_400(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, query: str, parameter: str
) -> None:
    d = await fixture_daemon(start_daemon, data_dir, runtime_dir)
    for path in ("/api/workers", "/api/runtimes", "/api/runtimes/local-worker-runtime/workers"):
        error = assert_error(await d.client.get(f"{path}?{query}"), 400, "invalid_query")
        assert error["parameter"] == parameter
    if parameter != "limit":  # detail routes take the blocking-query parameters only
        response = await d.client.get(f"/api/runtimes/local-worker-runtime?{query}")
        assert assert_error(response, 400, "invalid_query")["parameter"] == parameter
    assert (await d.client.get("/api/workers")).status_code == 200


@pytest.mark.parametrize("operation", ["stop", "cancel", "input"])
async def test_an_operation_body_nested_thousands_deep_is_invalid_request(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, operation: str
) -> None:
    d = await fixture_daemon(start_daemon, data_dir, runtime_dir)
    worker = (await d.get_json("/api/workers"))["items"][0]
    path = f"/api/runtimes/{worker['runtime_id']}/workers/{worker['worker_id']}/{operation}"
    for body in (b'{"reason": ' + nested(DEEP) + b"}", b'{"x": ' + nested(DEEP) + b"}"):
        error = assert_error(await d.client.post(path, content=body), 400, "invalid_request")
        assert f"nested deeper than {MAX_JSON_DEPTH} levels" in error["message"]


def test_json_depth_ignores_brackets_in_strings_and_escapes() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[[\\"]]"}]}') == 3
    assert json_depth(b'["\\\\", ["\\\\\\"[["]]') == 2
    assert json_depth(nested(DEEP)) == DEEP
    assert json_depth(b'"' + b'\\"' * 100_000) == 0  # never closed: linear, no backtracking


# -- a remote runtime's body ----------------------------------------------------------------


def answer_every_request(body: bytes, headers: bytes = b"") -> Handler:
    """A raw remote runtime that answers each request with ``body``, then closes."""

    async def handler(stream: trio.SocketStream, server: RawServer) -> None:
        await read_head(stream)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
        head += headers + b"content-length: %d\r\n\r\n" % len(body)
        await stream.send_all(head + body)
        server.sent += len(body)

    return handler


@functools.cache
def gzip_bomb(megabytes: int) -> bytes:
    """``megabytes`` MiB of zeros, gzipped as tightly as zlib can (about 1/1000 on the wire)."""
    compress = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    return b"".join([*(compress.compress(zeros) for _ in range(megabytes)), compress.flush()])


async def test_a_remote_gzip_bomb_is_refused_holding_about_max_response_bytes(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    if not _peak_rss_reset():
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    limit = 8 * 1024 * 1024
    bomb = await trio.to_thread.run_sync(gzip_bomb, 200)
    server = await start_raw(nursery, answer_every_request(bomb, b"content-encoding: gzip\r\n"))
    key = "bomb-neighbour"
    baseline = _rss_kib("VmRSS")
    assert _peak_rss_reset()
    d, record = await start_beside_an_oversized_remote(start_daemon, tmp_path, server, limit, key)
    await wait_for(lambda: server.accepted >= 3, message="several refusals")
    await healthy_neighbour(d, key)
    # Inflated only up to the limit: the peak grows by about the limit (the body kept, then
    # joined), never by the 200 MB the bomb holds (181 MB before the fix).
    growth_mib = (_rss_kib("VmHWM") - baseline) / 1024
    assert growth_mib < 3 * limit / 2**20 + 16, growth_mib
    assert record["supervisor"]["restarts"] == 0


@pytest.mark.parametrize("where", ["runtime", "error"])
async def test_remote_json_nested_thousands_deep_is_a_typed_malformed_response(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path, where: str
) -> None:
    body = b'{"runtime": ' + nested(DEEP) + b"}"
    if where == "error":  # the error body a non-2xx answer is classified by
        body = b'{"error": {"code": ' + nested(DEEP) + b"}}"
    server = await start_raw(nursery, answer_every_request(body))
    key = f"deep-{where}"
    d = await start_daemon(
        audit_toml(tmp_path / "a.jsonl") + remote_toml(server) + neighbour_toml(key)
    )
    await wait_status(d, "faulty", "unavailable", "remote_runtime_malformed_response")
    await wait_for(lambda: server.accepted >= 3, message="several polls")
    record = await status_of(d, "faulty")
    assert f"nests JSON deeper than {MAX_JSON_DEPTH} levels" in record["last_error"]["message"]
    # The source did not crash: it kept polling, never restarted (6 restarts in 15 s before).
    assert record["supervisor"]["restarts"] == 0
    assert record["supervisor"]["state"] == "running"
    await healthy_neighbour(d, key)


# -- a local metadata file ------------------------------------------------------------------


async def test_local_metadata_nested_thousands_deep_is_invalid_without_a_traceback(
    start_daemon: StartDaemon,
    data_dir: Path,
    runtime_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pods = data_dir / "pods"
    path = write_worker(pods, "deep")
    path.write_bytes(
        b'{"worker_name": "deep", "resolved_manifest_snapshot": ' + nested(DEEP) + b"}"
    )
    caplog.set_level(logging.INFO)
    d = await start_daemon(local_source_toml(data_dir, runtime_dir, rescan_interval="50ms"))

    async def diagnosed() -> bool:
        return bool(diagnostic_for(await runtime(d), "deep"))

    await wait_for(diagnosed, message="a diagnostic for the deep file")
    (diagnostic,) = diagnostic_for(await runtime(d), "deep")
    assert diagnostic["code"] == local_metadata.METADATA_INVALID, diagnostic
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in diagnostic["message"]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert (await runtime(d))["supervisor"]["restarts"] == 0


def test_deep_local_metadata_is_not_read_again_while_the_file_is_unchanged(
    data_dir: Path, runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its result depends on the file alone: a rescan's ``lstat`` keeps it, no re-read."""
    path = write_worker(data_dir / "pods", "deep")
    path.write_bytes(b'{"worker_name": "deep", "active": ' + nested(DEEP) + b"}")
    options = LocalOptions(RID, data_dir / "pods", runtime_dir, None, True, None, 1 << 20)
    caplog.set_level(logging.DEBUG)
    hosts = local_metadata.WorkspaceHosts()
    result = local_metadata.evaluate_entry("deep", options, hosts=hosts)
    assert [d.code for d in result.diagnostics] == [local_metadata.METADATA_INVALID]
    assert result.unchanged(options, hosts)
    assert not caplog.records
