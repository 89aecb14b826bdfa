"""The backend API over real HTTP (contract section 4): shapes, typed errors, scoping, paging.

Every test starts the real daemon on a loopback port with local sources on real data dirs.
The helpers at the top are shared with the projection and canary tests.
"""

from __future__ import annotations

import json
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningDaemon, StartDaemon, local_source_toml, wait_for
from yoi_registryd.ids import local_worker_id

REVISION_HEADER = "x-registry-index"
LIST_KEYS = {"items", "diagnostics", "limit", "next_cursor", "source", "workspace_id"}
RUNTIME_KEYS = {
    "runtime_id",
    "label",
    "kind",
    "status",
    "source",
    "host_ids",
    "capabilities",
    "diagnostics",
    "registry_status",
}
HOST_KEYS = {
    "runtime_id",
    "host_id",
    "label",
    "kind",
    "status",
    "observed_at",
    "last_seen_at",
    "capabilities",
    "diagnostics",
    "registry_status",
}
WORKER_KEYS = {
    "runtime_id",
    "worker_id",
    "resource_key",
    "host_id",
    "display_name",
    "label",
    "role",
    "profile",
    "singleton_key",
    "tags",
    "workspace",
    "state",
    "status",
    "last_seen_at",
    "pinned",
    "retention_state",
    "implementation",
    "capabilities",
    "diagnostics",
    "registry_state",
}
CAPABILITY_FLAGS = (
    "can_list_workers",
    "can_get_worker",
    "can_spawn_worker",
    "can_stop_worker",
    "can_accept_input",
    "can_stream_events",
)
ROOT = "/srv/yoi/workspaces/demo"


# -- helpers shared with the other API-level tests -----------------------------------------------


def _epoch_ms(iso: str | None) -> str:
    """yoi's registry timestamp (epoch milliseconds as a string) of an RFC 3339 time."""
    return "" if iso is None else str(int(datetime.fromisoformat(iso).timestamp() * 1000))


def write_worker(data_dir: Path, dir_name: str, metadata: dict[str, Any]) -> Path:
    """Write ``<data_dir>/pods/<dir_name>/metadata.json`` as yoi does (pretty-printed)."""
    entry = data_dir / "pods" / dir_name
    entry.mkdir(parents=True, exist_ok=True)
    path = entry / "metadata.json"
    path.write_text(json.dumps(metadata, indent=2))
    return path


def sources_toml(*sources: tuple[str, Path, Path], **extra: object) -> str:
    """Several local sources: ``(runtime_id, data_dir, runtime_dir)`` each."""
    return "".join(
        local_source_toml(data, run, runtime_id=rid, **extra) for rid, data, run in sources
    )


async def wait_observed(d: RunningDaemon, runtime_id: str, workers: int | None = None) -> None:
    """Wait until ``runtime_id`` was observed at least once (and lists ``workers`` workers)."""

    async def observed() -> bool:
        response = await d.client.get(f"/api/runtimes/{runtime_id}")
        if response.status_code != 200:
            return False
        body = response.json()
        if body["registry_status"] not in ("available", "degraded"):
            return False
        return workers is None or body["worker_count"] == workers

    await wait_for(observed, message=f"runtime {runtime_id} observed")


def revision_of(response: httpx.Response) -> int:
    value = response.headers.get(REVISION_HEADER)
    assert value is not None, (str(response.url), "no revision header")
    assert value.isdigit(), value
    return int(value)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A typed error: status, a JSON body in yoi's error shape (``error`` the reason phrase,
    ``message``, ``diagnostics``) with our ``code`` beside it, and the revision."""
    assert response.status_code == status, (str(response.url), response.text)
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] == HTTPStatus(status).phrase, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert body["diagnostics"] == [
        {"code": code, "severity": "error", "message": body["message"]}
    ], body
    revision_of(response)
    return body


async def walk(d: RunningDaemon, path: str, limit: int) -> list[list[dict[str, Any]]]:
    """Every page of a list, following ``next_cursor``; each page checked for shape."""
    pages: list[list[dict[str, Any]]] = []
    params: dict[str, str | int] = {"limit": limit}
    while True:
        body = await d.get_json(path, params=params)
        assert set(body) == LIST_KEYS
        assert body["limit"] == limit
        pages.append(body["items"])
        assert len(pages) < 1000, "the cursor never ends"
        if body["next_cursor"] is None:
            return pages
        assert len(body["items"]) == limit, "only the last page may be short"
        params = {"limit": limit, "cursor": body["next_cursor"]}


async def fixture_daemon(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, **extra: object
) -> RunningDaemon:
    d = await start_daemon(local_source_toml(data_dir, runtime_dir, **extra))
    await wait_observed(d, "local-worker-runtime")
    return d


# -- shapes -------------------------------------------------------------------------------------


async def test_every_route_has_the_contract_shape(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await fixture_daemon(start_daemon, data_dir, runtime_dir)

    runtimes = await d.get_json("/api/runtimes")
    assert set(runtimes) == LIST_KEYS
    assert runtimes["source"] == "worker_runtime_registry"
    assert runtimes["limit"] == 200
    assert runtimes["next_cursor"] is None
    assert runtimes["workspace_id"] == ""  # no acting workspace
    assert isinstance(runtimes["diagnostics"], list)
    [runtime] = runtimes["items"]
    assert set(runtime) >= RUNTIME_KEYS
    assert runtime["runtime_id"] == "local-worker-runtime"
    assert runtime["registry_status"] in ("available", "degraded")
    assert runtime["source"] == {
        "kind": "local_compatibility",
        "status": "active",
        "identity_authority": "runtime_registry_projection",
        "note": runtime["source"]["note"],
    }
    assert runtime["worker_count"] == 6
    caps = runtime["capabilities"]
    for flag in CAPABILITY_FLAGS:
        assert isinstance(caps[flag], bool), flag
    assert {"workspace_scope", "os", "arch", "max_workers", "has_workspace_fs"} <= set(caps)
    assert caps["workspace_scope"] == "current_workspace"  # yoi's value for a local source
    assert caps["registry_workspace_scope"] == "all_workspaces"  # not bound to a workspace
    # A capability is true only when it really works: the local source only reads.
    assert caps["can_list_workers"] and caps["can_get_worker"]
    for flag in ("can_spawn_worker", "can_stop_worker", "can_accept_input", "can_stream_events"):
        assert caps[flag] is False, flag
    assert await d.get_json("/api/runtimes/local-worker-runtime") == runtime

    hosts = await d.get_json("/api/hosts")
    assert set(hosts) == LIST_KEYS and hosts["source"] == "worker_runtime_registry"
    assert {h["host_id"] for h in hosts["items"]} == set(runtime["host_ids"])
    for host in hosts["items"]:
        assert set(host) >= HOST_KEYS
        assert host["runtime_id"] == "local-worker-runtime"
        for flag in CAPABILITY_FLAGS:
            assert isinstance(host["capabilities"][flag], bool)

    workers = await d.get_json("/api/workers")
    assert set(workers) == LIST_KEYS and workers["source"] == "worker_runtime_registry"
    items = workers["items"]
    assert len(items) == 6
    assert [(w["runtime_id"], w["worker_id"]) for w in items] == sorted(
        (w["runtime_id"], w["worker_id"]) for w in items
    )
    for worker in items:
        assert set(worker) >= WORKER_KEYS
        assert set(worker["workspace"]) == {
            "visibility",
            "identity",
            "workspace_id",
            "registry_visibility",
        }
        assert set(worker["implementation"]) == {"kind", "display_hint"}
        assert all(isinstance(v, bool) for v in worker["capabilities"].values())
        detail = await d.get_json(
            f"/api/runtimes/local-worker-runtime/workers/{worker['worker_id']}"
        )
        assert detail.pop("updated_at") == _epoch_ms(worker["last_seen_at"])
        assert detail == worker

    runtime_workers = await d.get_json("/api/runtimes/local-worker-runtime/workers")
    assert set(runtime_workers) == LIST_KEYS
    assert runtime_workers["items"] == items

    by_host: list[dict[str, Any]] = []
    for host in hosts["items"]:
        page = await d.get_json(f"/api/hosts/{host['host_id']}/workers")
        assert set(page) == LIST_KEYS and page["source"] == "worker_runtime_registry"
        assert page["items"], host
        assert {w["host_id"] for w in page["items"]} == {host["host_id"]}
        by_host.extend(page["items"])
    assert sorted(by_host, key=lambda w: w["worker_id"]) == items

    assert await d.get_json("/healthz") == {"status": "ok"}


async def test_revision_header_on_every_response(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await fixture_daemon(start_daemon, data_dir, runtime_dir)
    worker = f"/api/runtimes/local-worker-runtime/workers/{local_worker_id('coder')}"
    host = (await d.get_json("/api/hosts"))["items"][0]["host_id"]
    paths = [
        "/api/runtimes",
        "/api/runtimes/local-worker-runtime",
        "/api/runtimes/local-worker-runtime/workers",
        worker,
        "/api/hosts",
        f"/api/hosts/{host}/workers",
        "/api/workers",
        "/healthz",
        # errors carry it too
        "/api/runtimes/nope",
        "/api/runtimes/a.b",
        "/api/runtimes/a%2Fb",
        "/api/workers?limit=0",
        "/api/nope",
    ]
    first = None
    for path in paths:
        response = await d.client.get(path)
        revision = revision_of(response)
        assert revision >= 1
        first = revision if first is None else first
        assert revision >= first  # never goes back
    response = await d.client.post("/api/workers")
    assert revision_of(response) >= 1


# -- typed errors -------------------------------------------------------------------------------


async def test_invalid_identifier(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await fixture_daemon(start_daemon, data_dir, runtime_dir)
    rid = "local-worker-runtime"
    wid = local_worker_id("coder")
    long_id = "x" * 121
    cases = [
        (f"/api/runtimes/{long_id}", "runtime_id"),
        (f"/api/runtimes/{long_id}/workers", "runtime_id"),
        (f"/api/runtimes/{long_id}/workers/{wid}", "runtime_id"),
        (f"/api/runtimes/{rid}/workers/{long_id}", "worker_id"),
        (f"/api/hosts/{long_id}/workers", "host_id"),
        ("/api/runtimes/a.b", "runtime_id"),
        ("/api/runtimes/a@b/workers", "runtime_id"),
        (f"/api/runtimes/{rid}/workers/coder.x", "worker_id"),
        (f"/api/runtimes/{rid}/workers/%2e%2e", "worker_id"),
        (f"/api/runtimes/{rid}/workers/a%20b", "worker_id"),
        (f"/api/runtimes/{rid}/workers/%C3%A9", "worker_id"),
        (f"/api/runtimes/{rid}/workers/a%25b", "worker_id"),
        ("/api/hosts/a~b/workers", "host_id"),
        # encoded separators must never split a segment
        ("/api/runtimes/a%2Fb", None),
        (f"/api/runtimes/{rid}%2Fworkers", None),
        (f"/api/runtimes/{rid}/workers/{wid}%2f..", None),
        (f"/api/runtimes/{rid}/workers/a%5Cb", None),
        ("/api/hosts/x%00/workers", None),
    ]
    for path, parameter in cases:
        error = assert_error(await d.client.get(path), 400, "invalid_identifier")
        if parameter is not None:
            assert error["parameter"] == parameter, path
    # 120 bytes is a valid id: it is looked up (and not found), not rejected.
    assert_error(await d.client.get(f"/api/runtimes/{'x' * 120}"), 404, "unknown_runtime")
    assert_error(
        await d.client.get(f"/api/runtimes/{rid}/workers/{'x' * 120}"), 404, "unknown_worker"
    )
    # ':' is allowed in ids.
    assert_error(await d.client.get("/api/runtimes/remote:gpu-1"), 404, "unknown_runtime")


@pytest.mark.parametrize(
    "path",
    [
        "/api/runtimes",
        "/api/workers",
        "/api/hosts",
        "/api/runtimes/local-worker-runtime/workers",
        "HOST_WORKERS",
    ],
)
async def test_invalid_query(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, path: str
) -> None:
    d = await fixture_daemon(start_daemon, data_dir, runtime_dir)
    if path == "HOST_WORKERS":
        host = (await d.get_json("/api/hosts"))["items"][0]["host_id"]
        path = f"/api/hosts/{host}/workers"
    bad = [
        ("unknown=1", "query"),
        ("limit=5&limit=6", "limit"),
        ("cursor=a&cursor=b", "cursor"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("limit=-1", "limit"),
        ("limit=1.5", "limit"),
        ("limit=", "limit"),
        ("limit=%EF%BC%91", "limit"),  # a fullwidth digit one
        ("limit=99999999999999999999999", "limit"),
        ("cursor=", "cursor"),
        ("cursor=garbage!!", "cursor"),
        ("cursor=WzEsMl0", "cursor"),  # base64 of [1,2]: not ours
        ("cursor=WyJhIiwiYiIsImMiXQ", "cursor"),  # ["a","b","c"]: wrong shape for any list
        ("cursor=" + "A" * 2000, "cursor"),
        ("cursor=%E2%98%83", "cursor"),
    ]
    for query, parameter in bad:
        error = assert_error(await d.client.get(f"{path}?{query}"), 400, "invalid_query")
        assert error.get("parameter") == parameter, (path, query, error)
    assert_error(await d.client.get(f"{path}?%FF=1"), 400, "invalid_query")
    # limit 1 and 1000 are the bounds that work.
    assert (await d.get_json(f"{path}?limit=1"))["limit"] == 1
    assert (await d.get_json(f"{path}?limit=1000"))["limit"] == 1000


async def test_cursor_of_one_list_is_refused_by_another(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await fixture_daemon(start_daemon, data_dir, runtime_dir)
    workers_cursor = (await d.get_json("/api/workers?limit=1"))["next_cursor"]
    assert workers_cursor
    error = assert_error(
        await d.client.get("/api/runtimes", params={"cursor": workers_cursor}), 400, "invalid_query"
    )
    assert error["parameter"] == "cursor"


async def test_detail_routes_take_no_query(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await fixture_daemon(start_daemon, data_dir, runtime_dir)
    wid = local_worker_id("coder")
    for path in (
        "/api/runtimes/local-worker-runtime?limit=1",
        f"/api/runtimes/local-worker-runtime/workers/{wid}?x=",
    ):
        assert_error(await d.client.get(path), 400, "invalid_query")


async def test_unknown_runtime_host_worker(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await fixture_daemon(start_daemon, data_dir, runtime_dir)
    wid = local_worker_id("coder")
    error = assert_error(await d.client.get("/api/runtimes/nope"), 404, "unknown_runtime")
    assert error["runtime_id"] == "nope"
    assert_error(await d.client.get("/api/runtimes/nope/workers"), 404, "unknown_runtime")
    assert_error(await d.client.get(f"/api/runtimes/nope/workers/{wid}"), 404, "unknown_runtime")
    error = assert_error(
        await d.client.get("/api/runtimes/local-worker-runtime/workers/local-worker-nope"),
        404,
        "unknown_worker",
    )
    assert error["runtime_id"] == "local-worker-runtime"
    assert error["worker_id"] == "local-worker-nope"
    # Excluded entries are not workers: no root, broken metadata, no metadata file.
    for name in ("no-root", "broken", "no-metadata-dir"):
        path = f"/api/runtimes/local-worker-runtime/workers/{local_worker_id(name)}"
        assert_error(await d.client.get(path), 404, "unknown_worker")
    # A display name is never a key.
    assert_error(
        await d.client.get("/api/runtimes/local-worker-runtime/workers/coder"),
        404,
        "unknown_worker",
    )
    error = assert_error(await d.client.get("/api/hosts/local-nope/workers"), 404, "unknown_host")
    assert error["host_id"] == "local-nope"


async def test_unknown_routes_and_methods_answer_json(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await fixture_daemon(start_daemon, data_dir, runtime_dir)
    wid = local_worker_id("coder")
    for path in (
        "/api",
        "/api/",
        "/api/nope",
        "/api/runtimes/",
        "/api/workers/",
        "/api/hosts/local-x",
        "/api/runtimes/local-worker-runtime/workers/",
        f"/api/runtimes/local-worker-runtime/workers/{wid}/transcript",
        "/api//runtimes",
        "/api/runtimes//workers",
        "/api/../api/nope",
    ):
        response = await d.client.get(path)
        assert_error(response, 404, "not_found")
        assert "location" not in response.headers, path
        assert not response.text.lstrip().startswith("<"), path
    for method, path in (
        ("POST", "/api/workers"),
        ("DELETE", "/api/runtimes/local-worker-runtime"),
        ("PUT", f"/api/runtimes/local-worker-runtime/workers/{wid}"),
        ("POST", "/api/hosts"),
        ("GET", f"/api/runtimes/local-worker-runtime/workers/{wid}/stop"),
        ("OPTIONS", "/api/runtimes"),
        ("PATCH", "/healthz"),
    ):
        response = await d.client.request(method, path)
        assert_error(response, 405, "method_not_allowed")


async def test_operations_on_a_local_worker(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await fixture_daemon(start_daemon, data_dir, runtime_dir)
    base = f"/api/runtimes/local-worker-runtime/workers/{local_worker_id('coder')}"
    # The local source offers no operations: well-formed requests are answered as yoi
    # answers a runtime without them, 200 ``unsupported`` with the typed reason.
    for operation, body in (
        ("stop", b""),
        ("stop", b'{"reason": "done"}'),
        ("cancel", b"{}"),
        ("input", b'{"kind": "user", "content": "hello"}'),
        ("input", b'{"content": "hello"}'),
    ):
        response = await d.client.post(f"{base}/{operation}", content=body)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["state"] == "unsupported"
        assert result["operation"] == operation
        assert (result["runtime_id"], result["worker_id"]) == (
            "local-worker-runtime",
            local_worker_id("coder"),
        )
        assert [d["code"] for d in result["diagnostics"]] == ["operation_unsupported"]
    # Bad bodies are 400 invalid_request, whatever the runtime supports.
    for operation, body in (
        ("input", b""),
        ("input", b"{not json"),
        ("input", b'{"kind": "shout", "content": "x"}'),
        ("input", b'{"kind": "user"}'),
        ("input", b'{"kind": "user", "content": 5}'),
        ("input", b"\xff\xfe"),
        ("stop", b'{"reason": 5}'),
        ("cancel", b"[]"),
    ):
        assert_error(
            await d.client.post(f"{base}/{operation}", content=body), 400, "invalid_request"
        )
    # Lookups and ids are checked as for reads.
    assert_error(
        await d.client.post("/api/runtimes/local-worker-runtime/workers/local-worker-x/stop"),
        404,
        "unknown_worker",
    )
    assert_error(
        await d.client.post(f"/api/runtimes/nope/workers/{local_worker_id('coder')}/stop"),
        404,
        "unknown_runtime",
    )
    assert_error(
        await d.client.post("/api/runtimes/local-worker-runtime/workers/a.b/cancel"),
        400,
        "invalid_identifier",
    )
    assert_error(await d.client.post(f"{base}/stop?force=1"), 400, "invalid_query")
    # An oversized body is refused with a JSON 4xx, never a 500.
    response = await d.client.post(f"{base}/input", content=b"x" * (2 * 1024 * 1024))
    assert 400 <= response.status_code < 500, response.status_code
    assert response.headers["content-type"].startswith("application/json")
    assert "code" in response.json()


async def test_nothing_answers_500(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await fixture_daemon(start_daemon, data_dir, runtime_dir)
    odd = [
        "/api/runtimes/%",
        "/api/runtimes/%zz",
        "/api/runtimes/%C3",
        "/api/runtimes/%00",
        "/api/workers?limit=%",
        "/api/workers?cursor=%C3",
        "/api/workers?&&&",
        "/api/workers?=",
        "/api/workers?" + "a=1&" * 500,
        "/api/runtimes/" + "a" * 5000,
        "/api/runtimes/local-worker-runtime/workers/" + "%2F" * 50,
        "/api/hosts/%2E%2E/workers",
        "/api/runtimes/local-worker-runtime/workers/..%2F..%2Fetc",
    ]
    for path in odd:
        response = await d.client.get(path)
        assert response.status_code < 500, (path, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json"), path
        revision_of(response)
        if response.status_code != 200:
            assert "code" in response.json(), path


# -- lookup scoped by runtime -----------------------------------------------------------------


async def test_same_worker_id_in_two_runtimes(start_daemon: StartDaemon, tmp_path: Path) -> None:
    dirs = {}
    for rid, role in (("rt-a", "planner"), ("rt-b", "tester")):
        data, run = tmp_path / rid / "data", tmp_path / rid / "run"
        run.mkdir(parents=True)
        write_worker(
            data,
            "twin",
            {
                "worker_name": "twin",
                "workspace_root": ROOT,
                "resolved_manifest_snapshot": {"role": role},
            },
        )
        dirs[rid] = (rid, data, run)
    d = await start_daemon(sources_toml(*dirs.values()))
    await wait_observed(d, "rt-a", workers=1)
    await wait_observed(d, "rt-b", workers=1)

    wid = local_worker_id("twin")
    a = await d.get_json(f"/api/runtimes/rt-a/workers/{wid}")
    b = await d.get_json(f"/api/runtimes/rt-b/workers/{wid}")
    assert (a["runtime_id"], a["worker_id"], a["role"]) == ("rt-a", wid, "planner")
    assert (b["runtime_id"], b["worker_id"], b["role"]) == ("rt-b", wid, "tester")

    everything = (await d.get_json("/api/workers"))["items"]
    assert [(w["runtime_id"], w["worker_id"], w["role"]) for w in everything] == [
        ("rt-a", wid, "planner"),
        ("rt-b", wid, "tester"),
    ]
    assert [w["role"] for w in (await d.get_json("/api/runtimes/rt-b/workers"))["items"]] == [
        "tester"
    ]
    assert_error(await d.client.get(f"/api/runtimes/rt-c/workers/{wid}"), 404, "unknown_runtime")


# -- pagination ---------------------------------------------------------------------------------


async def test_pagination_walks_every_item_exactly_once(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    counts = {"page-a": 25, "page-b": 13}
    sources = []
    for rid, count in counts.items():
        data, run = tmp_path / rid / "data", tmp_path / rid / "run"
        run.mkdir(parents=True)
        for i in range(count):
            name = f"w{i:02d}.{rid}"
            # a root per worker: each worker gets its own host, so hosts page too
            write_worker(data, name, {"worker_name": name, "workspace_root": f"{ROOT}-{rid}-{i}"})
        sources.append((rid, data, run))
    d = await start_daemon(sources_toml(*sources, watch=False))
    for rid, count in counts.items():
        await wait_observed(d, rid, workers=count)

    def keys(pages: list[list[dict[str, Any]]], *fields: str) -> list[tuple[str, ...]]:
        return [tuple(item[f] for f in fields) for page in pages for item in page]

    everything = (await d.get_json("/api/workers?limit=1000"))["items"]
    assert len(everything) == 38
    expected = [(w["runtime_id"], w["worker_id"]) for w in everything]
    assert expected == sorted(set(expected))

    for limit in (1, 7, 13, 38, 200):
        pages = await walk(d, "/api/workers", limit)
        assert keys(pages, "runtime_id", "worker_id") == expected, limit
        assert len(pages) == max(1, -(-38 // limit))

    for rid, count in counts.items():
        pages = await walk(d, f"/api/runtimes/{rid}/workers", 7)
        walked = keys(pages, "runtime_id", "worker_id")
        assert walked == [k for k in expected if k[0] == rid]
        assert len(walked) == count and len(pages) == -(-count // 7)

    all_hosts = (await d.get_json("/api/hosts?limit=1000"))["items"]
    assert len(all_hosts) == 38
    expected_hosts = sorted((h["runtime_id"], h["host_id"]) for h in all_hosts)
    assert len(set(expected_hosts)) == 38
    pages = await walk(d, "/api/hosts", 7)
    assert keys(pages, "runtime_id", "host_id") == expected_hosts
    assert len(pages) == 6

    pages = await walk(d, "/api/runtimes", 1)
    assert keys(pages, "runtime_id") == [("page-a",), ("page-b",)]


async def test_host_workers_pagination(start_daemon: StartDaemon, tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    run.mkdir()
    for i in range(20):
        root = ROOT if i % 2 == 0 else f"{ROOT}-other"
        write_worker(data, f"h{i:02d}", {"worker_name": f"h{i:02d}", "workspace_root": root})
    d = await start_daemon(local_source_toml(data, run, watch=False))
    await wait_observed(d, "local-worker-runtime", workers=20)
    hosts = (await d.get_json("/api/hosts"))["items"]
    assert len(hosts) == 2
    seen: list[str] = []
    for host in hosts:
        pages = await walk(d, f"/api/hosts/{host['host_id']}/workers", 3)
        ids = [w["worker_id"] for page in pages for w in page]
        assert len(ids) == 10 and ids == sorted(ids)
        assert {w["host_id"] for page in pages for w in page} == {host["host_id"]}
        seen.extend(ids)
    assert sorted(seen) == sorted(local_worker_id(f"h{i:02d}") for i in range(20))


async def test_a_worker_is_stale_exactly_when_its_registry_state_or_runtime_says_so(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    """A local Worker that claims to be active without its liveness hint is ``registry_state:
    "stale"``, and then ``stale: true`` as well (they said different things before)."""
    d = await start_daemon(local_source_toml(data_dir, runtime_dir))
    workers = await d.listed_workers()
    assert any(w["registry_state"] == "stale" for w in workers)
    assert any(w["registry_state"] != "stale" for w in workers)
    for w in workers:
        assert w["stale"] == (w["registry_state"] == "stale"), w["worker_id"]
