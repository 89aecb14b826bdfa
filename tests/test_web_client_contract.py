"""Every read route's real answer decodes into the yoi web client's own types.

The daemon serves over loopback with every kind of source at once: local Worker metadata (the
shared fixtures, plus Workers whose directory names have nothing printable), a remote runtime
(the fake runtime speaking REST v1 over a real socket, workers in every status it knows and
one it does not), a remote runtime that cannot be reached, an embedded memory runtime with
yoi's special profiles, and the embedded demo runtime (``yoi-registryd --demo`` as a real
process is crawled by ``tests/test_embedded_demo.py``). Each answer of ``/api/runtimes``,
``/api/hosts``, ``/api/workers``, ``/api/hosts/{host_id}/workers``,
``/api/runtimes/{runtime_id}/workers`` and ``/api/runtimes/{runtime_id}/workers/{worker_id}``
(and of their ``/api/w/{workspace_id}`` twins) is decoded with :mod:`tests.web_client_types`:
a missing, mistyped or out-of-vocabulary field fails the test.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from tests import web_client_types as yoi
from tests.conftest import FIXTURE_ROOT, RunningDaemon, StartDaemon, local_source_toml, wait_for
from tests.daemon_process import free_port
from tests.embedded_plugins import INSTANCES, embedded_source_toml
from tests.fake_runtime import FakeRuntime, FakeWorker, remote_source_toml, start_fake
from yoi_registryd.ids import local_worker_id
from yoi_registryd.runtimes.memory import MemoryRuntime
from yoi_registryd.runtimes.protocol import Profile
from yoi_registryd.sources.local_metadata import entry_worker_id

TOKEN = "contract-token-7c2e"
FAST = {"poll_interval": "50ms", "timeout": "500ms"}
UNPRINTABLE = "\x01\x02\x1b\x7f"
"""A Worker directory name with nothing printable: its label is its id, never null."""
NOT_UTF8 = os.fsdecode(b"\xff\xfe-worker")
REMOTE_STATUSES = ("running", "idle", "paused", "stopped", "cancelled", "hibernating")
WORKSPACE = "ws-contract"


def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


DECODERS = {
    "runtimes": _decoder(yoi.RuntimeList),
    "runtime": _decoder(yoi.Runtime),
    "hosts": _decoder(yoi.HostList),
    "workers": _decoder(yoi.WorkerList),
    "worker": _decoder(yoi.WorkerDetail),
}


class Crawl:
    """Decodes every read route under ``prefix`` and remembers what it saw."""

    def __init__(self, client: httpx.AsyncClient, prefix: str = "/api", **kwargs: Any) -> None:
        self.client = client
        self.prefix = prefix
        self.kwargs = kwargs
        self.routes: Counter[str] = Counter()
        self.runtimes: dict[str, yoi.Runtime] = {}
        self.workers: dict[tuple[str, str], yoi.Worker] = {}
        self.hosts: dict[str, yoi.Host] = {}
        self.raw_workers: dict[tuple[str, str], dict[str, Any]] = {}

    async def get(self, route: str, path: str, kind: str) -> Any:
        response = await self.client.get(f"{self.prefix}{path}", **self.kwargs)
        assert response.status_code == 200, (path, response.status_code, response.text)
        try:
            decoded = DECODERS[kind].decode(response.content)
        except msgspec.ValidationError as error:
            raise AssertionError(f"{path}: {error}\n{response.text[:2000]}") from None
        self.routes[route] += 1
        return decoded

    async def workers_list(self, route: str, path: str) -> list[yoi.Worker]:
        body: yoi.WorkerList = await self.get(route, path, "workers")
        assert body.source == "worker_runtime_registry"
        for worker in body.items:
            self.workers[(worker.runtime_id, worker.worker_id)] = worker
        return body.items

    async def everything(self) -> Crawl:
        runtimes: yoi.RuntimeList = await self.get("runtimes", "/runtimes", "runtimes")
        for runtime in runtimes.items:
            self.runtimes[runtime.runtime_id] = runtime
            rid = runtime.runtime_id
            assert await self.get("runtime", f"/runtimes/{rid}", "runtime") == runtime
            for worker in await self.workers_list("runtime_workers", f"/runtimes/{rid}/workers"):
                path = f"/runtimes/{rid}/workers/{worker.worker_id}"
                detail: yoi.WorkerDetail = await self.get("worker", path, "worker")
                assert detail.worker_id == worker.worker_id
                response = await self.client.get(f"{self.prefix}{path}", **self.kwargs)
                self.raw_workers[(rid, worker.worker_id)] = response.json()
        hosts: yoi.HostList = await self.get("hosts", "/hosts", "hosts")
        for host in hosts.items:
            self.hosts[host.host_id] = host
            for worker in await self.workers_list("host_workers", f"/hosts/{host.host_id}/workers"):
                assert worker.host_id == host.host_id
        await self.workers_list("workers", "/workers")
        return self


ROUTES = {"runtimes", "runtime", "runtime_workers", "worker", "hosts", "host_workers", "workers"}


def write_worker(pods: Path, name: str, **fields: Any) -> None:
    entry = pods / name
    entry.mkdir(parents=True, exist_ok=True)
    meta = {"worker_name": name, "workspace_root": FIXTURE_ROOT, **fields}
    (entry / "metadata.json").write_text(json.dumps(meta, indent=2))


async def every_source(
    start_daemon: StartDaemon, nursery: trio.Nursery, data_dir: Path, tmp_path: Path
) -> tuple[RunningDaemon, MemoryRuntime]:
    pods = data_dir / "pods"
    write_worker(pods, UNPRINTABLE)
    write_worker(
        pods,
        NOT_UTF8,
        worker_name="not-utf8",
        active={"session_id": "01973a4e-8c1f-7b2a-9d3e-4f5a6b7c8d9e"},
    )
    fake = FakeRuntime("upstream", token=TOKEN, worker_creation_available=True)
    fake.add(
        *(FakeWorker(f"w-{status}", status=status) for status in REMOTE_STATUSES),
        FakeWorker(
            "w-named", display_name="review bot", profile={"kind": "builtin", "value": "coder"}
        ),
    )
    # A runtime of today's era reports its platform; one of the older era does not.
    today = FakeRuntime("today", token=TOKEN, era="current", arch="aarch64")
    server = await start_fake(nursery, ("/yoi", fake), ("/today", today))
    token = tmp_path / "remote.token"
    token.write_text(TOKEN + "\n")
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir()
    key = f"contract-{id(tmp_path)}"
    config = "".join(
        (
            local_source_toml(data_dir, runtime_dir, watch=False),
            remote_source_toml("gpu-1", server.url("/yoi"), token_file=str(token), **FAST),
            remote_source_toml("gpu-2", server.url("/today"), token_file=str(token), **FAST),
            remote_source_toml(
                "gone", f"http://127.0.0.1:{free_port()}", token_file=str(token), **FAST
            ),
            embedded_source_toml(
                runtime_id="embedded-worker-runtime",
                factory="tests.embedded_plugins:tracked_memory",
                options={"key": key},
                workspaces=[WORKSPACE],
            ),
            embedded_source_toml(
                runtime_id="demo",
                entry_point="demo",
                options={"workers": 4, "seed": 3, "interval": "1h"},
            ),
        )
    )
    d = await start_daemon(config)
    await wait_for(lambda: key in INSTANCES, message="the embedded runtime")
    memory: MemoryRuntime = INSTANCES[key]
    memory.spawn("plain")
    memory.spawn("memory", profile=Profile("builtin", "memory-consolidation"))
    memory.spawn(
        "orchestrator",
        display_name="workspace-orchestrator",
        profile=Profile("builtin", "orchestrator"),
    )
    memory.spawn("coder", profile=Profile("named", "code_review-x"))

    async def all_observed() -> bool:
        body = await d.get_json("/api/runtimes")
        by_id = {r["runtime_id"]: r for r in body["items"]}
        workers = {w["runtime_id"] for w in (await d.get_json("/api/workers"))["items"]}
        return (
            by_id["gone"]["registry_status"] == "unavailable"
            and all(by_id[r]["registry_status"] != "unknown" for r in by_id)
            and {"local-worker-runtime", "gpu-1", "embedded-worker-runtime", "demo"} <= workers
            and len(await embedded_ids()) == 4
        )

    async def embedded_ids() -> list[str]:
        body = await d.get_json("/api/runtimes/embedded-worker-runtime/workers")
        return [w["worker_id"] for w in body["items"]]

    await wait_for(all_observed, message="every source observed")
    return d, memory


async def test_every_route_of_every_source_decodes_as_the_web_client_reads_it(
    start_daemon: StartDaemon, nursery: trio.Nursery, data_dir: Path, tmp_path: Path
) -> None:
    d, _ = await every_source(start_daemon, nursery, data_dir, tmp_path)
    crawl = await Crawl(d.client).everything()
    assert set(crawl.routes) == ROUTES

    kinds = {r.kind: r for r in crawl.runtimes.values()}
    assert set(kinds) == {"local_pod", "embedded_worker_runtime", "remote_worker_runtime"}
    statuses = {rid: r.status for rid, r in crawl.runtimes.items()}
    assert statuses == {
        "local-worker-runtime": "available",
        "gpu-1": "running",
        "gpu-2": "running",
        "gone": "configured",  # yoi's word for a remote it could not reach
        "embedded-worker-runtime": "running",
        "demo": "running",
    }
    assert {h.kind for h in crawl.hosts.values()} == {
        "local-worker-host",
        "embedded-worker-runtime-host",
        "remote-worker-runtime-host",
    }
    platforms = {rid: (r.capabilities.os, r.capabilities.arch) for rid, r in crawl.runtimes.items()}
    assert platforms["gpu-2"] == ("linux", "aarch64")  # as the runtime reports it
    assert platforms["gpu-1"] == platforms["gone"] == ("unknown", "unknown")  # yoi's word
    assert platforms["local-worker-runtime"] == platforms["demo"] != ("unknown", "unknown")

    # The Worker whose name has nothing printable: labelled (and displayed) by its id.
    unprintable = crawl.workers[("local-worker-runtime", local_worker_id(UNPRINTABLE))]
    assert unprintable.label == unprintable.display_name == unprintable.worker_id
    assert unprintable.implementation.display_hint == unprintable.worker_id
    # One whose name is not UTF-8 is left out, with a diagnostic (the list still decodes).
    local = await d.get_json("/api/runtimes/local-worker-runtime")
    left_out = [x for x in local["diagnostics"] if x.get("worker_id") == entry_worker_id(NOT_UTF8)]
    assert [x["code"] for x in left_out] == ["local_pod_metadata_invalid"]

    # Remote statuses: yoi's words as they are, one it has none for as "unsupported" (the
    # runtime's own word kept in registry_state).
    remote = {w.worker_id: w for w in crawl.workers.values() if w.runtime_id == "gpu-1"}
    for status in REMOTE_STATUSES:
        expected = "unsupported" if status == "hibernating" else status
        assert remote[f"w-{status}"].state == expected
        assert crawl.raw_workers[("gpu-1", f"w-{status}")]["registry_state"] == status
    named = remote["w-named"]
    assert (named.display_name, named.tags) == ("review bot", ["profile:coder"])
    assert named.workspace.visibility == "remote_runtime"

    # Embedded: yoi's display names, singleton keys and tags for its special profiles.
    embedded = {
        w.worker_id: w for w in crawl.workers.values() if w.runtime_id == "embedded-worker-runtime"
    }
    assert {k: (w.display_name, w.singleton_key, w.tags) for k, w in embedded.items()} == {
        "plain": ("Worker plain", None, ["internal"]),
        "memory": (
            "Memory Consolidation",
            "workspace-memory-consolidation",
            ["internal", "memory", "consolidation", "singleton"],
        ),
        "orchestrator": (
            "Workspace Orchestrator",
            "workspace-orchestrator",
            ["internal", "orchestrator", "singleton"],
        ),
        "coder": ("Code Review X", None, ["internal", "profile:code_review-x"]),
    }
    for worker in embedded.values():
        assert worker.workspace.visibility == "backend_internal"
        assert worker.workspace.workspace_id == WORKSPACE


async def test_operations_and_errors_answer_in_the_clients_shape_on_every_source(
    start_daemon: StartDaemon, nursery: trio.Nursery, data_dir: Path, tmp_path: Path
) -> None:
    """Input to every worker, unscoped and workspace-scoped, and the errors the console can
    meet, decode into section 1.7.2's results and section 1.8.1's error body."""
    d, _ = await every_source(start_daemon, nursery, data_dir, tmp_path)
    crawl = await Crawl(d.client).everything()
    states: Counter[str] = Counter()
    prefixes = ("/api", f"/api/w/{WORKSPACE}")
    for index, (rid, wid) in enumerate(sorted(crawl.workers)):
        path = f"{prefixes[index % 2]}/runtimes/{rid}/workers/{wid}/input"
        response = await d.client.post(path, json={"content": "hello"})
        assert response.status_code in (200, 404, 503), (path, response.text)  # 404: hidden
        if response.status_code != 200:
            msgspec.json.decode(response.content, type=yoi.ErrorBody)
            continue
        result = msgspec.json.decode(response.content, type=yoi.WorkerInputResult)
        assert (result.runtime_id, result.worker_id) == (rid, wid)
        assert (result.state == "accepted") == (result.diagnostics == []), result
        states[result.state] += 1
    assert states["accepted"] and states["unsupported"] and states["rejected"], states
    rid, wid = next(iter(sorted(crawl.workers)))
    for path, status in (
        (f"/api/runtimes/{rid}/workers/nobody/stop", 404),
        (f"/api/runtimes/no-such-runtime/workers/{wid}/stop", 404),
        (f"/api/runtimes/{rid}/workers/a.b/stop", 400),
        (f"/api/w/{WORKSPACE}/runtimes/{rid}/workers/nobody/cancel", 404),
    ):
        response = await d.client.post(path, json={})
        assert response.status_code == status, (path, response.text)
        error = msgspec.json.decode(response.content, type=yoi.ErrorBody)
        assert error.error == HTTPStatus(status).phrase
        assert [x.code for x in error.diagnostics] == [response.json()["code"]]


async def test_workspace_scoped_routes_decode_and_agree_with_the_header(
    start_daemon: StartDaemon, nursery: trio.Nursery, data_dir: Path, tmp_path: Path
) -> None:
    d, _ = await every_source(start_daemon, nursery, data_dir, tmp_path)
    scoped = await Crawl(d.client, f"/api/w/{WORKSPACE}").everything()
    assert set(scoped.routes) == ROUTES
    headed = await Crawl(d.client, headers={"X-Yoi-Workspace": WORKSPACE}).everything()
    assert scoped.workers == headed.workers and scoped.runtimes == headed.runtimes
    assert scoped.hosts.keys() == headed.hosts.keys()
    envelope = await d.get_json(f"/api/w/{WORKSPACE}/workers")
    assert envelope["workspace_id"] == WORKSPACE
    assert (await d.get_json("/api/workers"))["workspace_id"] == ""


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("workspace_id",), None),  # the list envelope's workspace_id is never null
        (("items", 0, "label"), None),  # labels are strings
        (("items", 0, "state"), "stale"),  # not a word of yoi's
        (("items", 0, "workspace", "visibility"), "workspace"),
        (("items", 0, "tags"), None),
    ],
)
def test_the_client_types_refuse_what_the_client_would_not_read(
    path: tuple[str | int, ...], value: Any
) -> None:
    """The types can fail: each of these old shapes of ours is refused."""
    worker: dict[str, Any] = {
        "runtime_id": "r",
        "worker_id": "w",
        "resource_key": "",
        "host_id": "h",
        "display_name": "w",
        "label": "w",
        "role": None,
        "profile": None,
        "singleton_key": None,
        "tags": [],
        "workspace": {
            "visibility": "remote_runtime",
            "identity": "runtime_registry_worker",
            "workspace_id": "",
        },
        "state": "running",
        "status": "running",
        "last_seen_at": None,
        "pinned": False,
        "retention_state": "normal",
        "implementation": {"kind": "remote_worker_runtime", "display_hint": "w"},
        "capabilities": {
            "can_accept_input": True,
            "can_stream_events": False,
            "can_stop": True,
            "can_spawn_followup": False,
            "can_read_bounded_transcript": False,
        },
        "diagnostics": [],
        "next_cursor": None,
    }
    body: dict[str, Any] = {
        "workspace_id": "",
        "limit": 200,
        "items": [worker],
        "source": "worker_runtime_registry",
        "diagnostics": [],
        "extra_field_of_ours": True,
    }
    DECODERS["workers"].decode(json.dumps(body))  # as it is: accepted, extra fields and all
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(msgspec.ValidationError):
        DECODERS["workers"].decode(json.dumps(body))
