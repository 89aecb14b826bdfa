"""Secrets never leave (contract section 5): canaries in every sensitive field, searched for.

A data dir whose metadata holds a unique canary in every sensitive field (session and
segment ids, workspace root components, children's socket paths, callback addresses and
scope targets, reclaimed children, the manifest snapshot including a profile path, and
unknown keys) sits under a temp dir whose own path is a canary. Every GET route the app
has (enumerated from its URL map, so a new route is covered without editing this test),
every list page, every detail, and the typed errors are fetched over real HTTP; no body
and no header may contain a canary, the temp dir, ``metadata.json``, a socket path or a
session id. Operator logs may name paths but never a session id or a token. A remote runtime
reached with capability tokens adds the registry's signing key and every token it minted.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import socket
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import RunningDaemon, StartDaemon
from tests.fake_runtime import (
    FakeWorker,
    capability_source_toml,
    current_runtime,
    new_worker_id,
    registry_identity,
    start_fake,
)
from tests.test_api import sources_toml, wait_observed, write_worker
from yoi_registryd.http.app import create_app
from yoi_registryd.ids import local_worker_id


class Canaries:
    """Unique marker strings, each remembered with the field it was planted in."""

    def __init__(self) -> None:
        self.planted: dict[str, str] = {}

    def __call__(self, field: str) -> str:
        value = f"k{secrets.token_hex(5)}"  # short: a unix socket path must fit in 108 bytes
        self.planted[value] = field
        return value

    def uuid(self, field: str) -> str:
        value = str(uuid.uuid4())
        self.planted[value] = field
        return value


def child(canary: Canaries, tmp: Path, n: int) -> dict[str, Any]:
    return {
        "worker_name": f"child{n}",
        "socket_path": str(tmp / canary(f"childsockdir{n}") / "sock"),
        "scope_delegated": [
            {"target": f"/srv/{canary(f'scope{n}')}/src", "permission": "write", "recursive": True}
        ],
        "callback_address": f"unix:{tmp}/{canary(f'callback{n}')}/sock",
    }


def manifest(canary: Canaries, role: str) -> dict[str, Any]:
    return {
        "pod": {"name": canary("podname")},
        "role": role,
        "profile_selector": "builtin:coder",
        "profile": {"source": {"kind": "path", "path": f"/srv/{canary('profiledir')}/p.lua"}},
        "env": {"API_TOKEN": canary("envtoken")},
        "model": {"api_key": canary("apikey"), "endpoint": f"https://{canary('endpoint')}/v1"},
        "prompt": canary("prompt"),
    }


def planted_tree(canary: Canaries, tmp_path: Path) -> tuple[Path, Path, Path, str]:
    """Canary-named temp, data and runtime directories and workspace root (in that order),
    with :func:`plant`'s workers written in."""
    tmp = tmp_path / canary("tmpdir")
    data = tmp / canary("datadir")
    run = tmp / canary("rundir")
    run.mkdir(parents=True)
    root = f"/srv/{canary('rootdir')}/{canary('rootleaf')}"
    plant(canary, tmp, data, run, root)
    return tmp, data, run, root


def plant(canary: Canaries, tmp: Path, data: Path, run: Path, root: str) -> None:
    """Workers of every kind, each carrying canaries in every sensitive field."""
    write_worker(
        data,
        "coder",
        {
            "worker_name": "coder",
            "active": {"session_id": canary.uuid("session"), "segment_id": canary.uuid("seg")},
            "workspace_root": root,
            "spawned_children": [child(canary, tmp, 1), child(canary, tmp, 2)],
            "reclaimed_children": [
                {
                    "worker_name": "gone",
                    "scope_delegated": [
                        {"target": f"/srv/{canary('reclaimed')}", "permission": "read"}
                    ],
                }
            ],
            "peers": [{"worker_name": "reviewer"}],
            "resolved_manifest_snapshot": manifest(canary, "coder"),
            "token": canary("toptoken"),
            "bearer_token_file": f"/etc/{canary('tokenfile')}",
        },
    )
    write_worker(
        data,
        "pending",
        {
            "worker_name": "pending",
            "active": {"session_id": canary("sessionplain")},
            "workspace_root": root + "/",
            "resolved_manifest_snapshot": {
                "role_claim": {"role": "reviewer", "secret": canary("claim")},
                "profile": {"name": "strict", "path": f"/srv/{canary('profilepath2')}"},
            },
        },
    )
    write_worker(
        data,
        "live",
        {
            "worker_name": "live",
            "active": {"session_id": canary.uuid("livesession"), "segment_id": canary("seg2")},
            "workspace_root": root,
            "spawned_children": [child(canary, tmp, 3)],
        },
    )
    write_worker(
        data,
        "elsewhere",
        {
            "worker_name": "elsewhere",
            "active": {"session_id": canary.uuid("elsesession")},
            "workspace_root": f"/home/{canary('otheruser')}/{canary('otherws')}",
        },
    )
    write_worker(
        data,
        "legacy",
        {
            "pod_name": "legacy",
            "workspace_root": root,
            "active": {"session_id": canary.uuid("legacysession")},
        },
    )
    write_worker(
        data,
        "noroot",
        {"worker_name": "noroot", "active": {"session_id": canary.uuid("norootsession")}},
    )
    write_worker(
        data,
        "badtype",
        {
            "worker_name": "badtype",
            "workspace_root": 42,
            "active": {"session_id": canary.uuid("badtypesession")},
        },
    )
    broken = data / "pods" / "broken"
    broken.mkdir()
    truncated = json.dumps(
        {"worker_name": "broken", "active": {"session_id": canary.uuid("brokensession")}}
    )
    (broken / "metadata.json").write_text(truncated[:-5])
    linked = data / "pods" / "linked"
    linked.mkdir()
    target = tmp / canary("linktarget")
    target.write_text(json.dumps({"worker_name": "linked", "workspace_root": root}))
    (linked / "metadata.json").symlink_to(target)
    (data / "pods" / "empty").mkdir()


def forbidden(canary: Canaries, tmp: Path, base_url: str) -> list[str]:
    return [
        *canary.planted,
        str(tmp),
        tmp.name,
        base_url,
        base_url.removeprefix("http://"),
        "metadata.json",
        "/sock",
        "socket_path",
        "session_id",
        "segment_id",
        "callback_address",
        "scope_delegated",
        "reclaimed_children",
        "resolved_manifest",
        "/srv/",
        "/home/",
        "/etc/",
        "Traceback",
    ]


def assert_clean(response: httpx.Response, needles: list[str]) -> None:
    where = f"{response.request.method} {response.request.url.raw_path.decode()}"
    assert response.status_code != 500, (where, response.text[:500])
    texts = [response.text, *(f"{k}: {v}" for k, v in response.headers.items())]
    for text in texts:
        for needle in needles:
            assert needle not in text, (where, needle, text[:2000])


def fill(rule: str, arguments: set[str], values: dict[str, list[str]]) -> list[str]:
    """Every concrete path for a route template, from the ids the API itself listed."""
    names = sorted(arguments)
    unknown = [n for n in names if n not in values]
    assert not unknown, f"route {rule} takes {unknown}: teach the canary test its values"
    paths = []
    for combo in itertools.product(*(values[n] for n in names)):
        path = rule
        for name, value in zip(names, combo, strict=True):
            path = path.replace(f"<{name}>", value)
        paths.append(path)
    return paths


async def every_page(d: RunningDaemon, path: str) -> list[httpx.Response]:
    responses = []
    params: dict[str, str] = {"limit": "1"}
    for _ in range(100):
        response = await d.client.get(path, params=params)
        responses.append(response)
        cursor = response.json().get("next_cursor") if response.status_code == 200 else None
        if not cursor:
            break
        params = {"limit": "1", "cursor": cursor}
    return responses


async def test_no_canary_in_any_response(
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="yoi_registryd")
    canary = Canaries()
    tmp, data, run, root = planted_tree(canary, tmp_path)
    # A current remote runtime reached with capability tokens: the registry's signing key
    # and every token it mints are canaries too.
    key, key_path = registry_identity(tmp)
    remote = current_runtime("canary-remote", key)
    remote.add(FakeWorker(new_worker_id(), status="idle", display_name="remote bot"))
    fake = await start_fake(nursery, ("/rt", remote))
    live_sock = run / "live" / "sock"
    live_sock.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(live_sock))
        sock.listen(1)
        config = (
            sources_toml(("canary-all", data, run), watch=False)
            + sources_toml(("canary-bound", data, run), watch=False, workspace_root=root)
            + capability_source_toml("canary-remote", fake.url("/rt"), key_path)
        )
        d = await start_daemon(config)
        await wait_observed(d, "canary-all", workers=5)
        await wait_observed(d, "canary-bound", workers=4)
        await wait_observed(d, "canary-remote", workers=1)
        needles = forbidden(canary, tmp, d.base_url)
        # The planted tree is really there and really projected: the test can fail.
        all_workers = (await d.get_json("/api/workers"))["items"]
        assert {w["label"] for w in all_workers} == {
            "coder",
            "pending",
            "live",
            "elsewhere",
            "legacy",
            "remote bot",
        }
        assert {w["state"] for w in all_workers if w["label"] == "live"} == {"active"}

        hosts = (await d.get_json("/api/hosts"))["items"]
        excluded = ("noroot", "badtype", "broken", "linked", "empty")
        values = {
            "runtime_id": [*sorted({w["runtime_id"] for w in all_workers}), "nope"],
            "worker_id": [
                *sorted({w["worker_id"] for w in all_workers}),
                *(local_worker_id(n) for n in excluded),
                "local-worker-missing",
            ],
            "host_id": [*sorted({h["host_id"] for h in hosts}), "local-missing"],
            # Workspace-scoped twins: acting for the planted workers' workspaces, or another.
            "workspace_id": [
                *sorted({w["workspace"]["workspace_id"] for w in all_workers} - {""}),
                "nobody",
            ],
        }
        responses: list[httpx.Response] = []
        codes_seen: set[str] = set()
        rules = list(create_app(d.daemon.api).url_map.iter_rules())
        assert len(rules) >= 8
        for rule in rules:
            if "GET" not in (rule.methods or set()):
                continue
            for path in fill(rule.rule, set(rule.arguments), values):
                responses.append(await d.client.get(path))
                if path.startswith("/api/") and responses[-1].status_code == 200:
                    body = responses[-1].json()
                    if isinstance(body, dict) and "items" in body:
                        responses.extend(await every_page(d, path))
                        responses.append(await d.client.get(path, params={"index": "0"}))
                        responses.append(await d.client.get(path, params={"bogus": "1"}))
                        responses.append(await d.client.get(path, params={"cursor": "zz"}))
                    else:
                        responses.append(await d.client.get(path, params={"bogus": "1"}))
        wid = local_worker_id("coder")
        for method, path, body in (
            ("POST", f"/api/runtimes/canary-all/workers/{wid}/stop", b""),
            ("POST", f"/api/runtimes/canary-all/workers/{wid}/input", b"{bad"),
            ("POST", f"/api/runtimes/canary-all/workers/{wid}/input", b'{"kind":"user"}'),
            ("POST", "/api/runtimes/canary-all/workers/local-worker-x/cancel", b""),
            ("GET", "/api/runtimes/a.b", b""),
            ("GET", "/api/runtimes/canary-all%2Fworkers", b""),
            ("GET", "/api/nope", b""),
            ("GET", "/api//runtimes", b""),
            ("DELETE", "/api/workers", b""),
            ("GET", "/api/workers?limit=5000", b""),
        ):
            responses.append(await d.client.request(method, path, content=body))

    key_text = key.key_string().reveal()
    tokens = [h.removeprefix("Bearer ") for h in remote.auth_headers if h]
    assert tokens and all(t.startswith("yoi-cap-v1.") for t in tokens)
    secrets_sent = [key_text, key_text.split(":")[-1], *(t.rsplit(".", 1)[1] for t in tokens)]
    needles.extend(secrets_sent)
    for response in responses:
        assert_clean(response, needles)
        if "json" not in response.headers.get("content-type", ""):
            continue
        if response.status_code >= 400:
            codes_seen.add(response.json()["code"])
        elif response.request.url.path.endswith(("/stop", "/cancel", "/input")):
            # A refused operation answers 200, its typed reason as a diagnostic.
            codes_seen.update(d["code"] for d in response.json()["diagnostics"])
    assert {
        "unknown_runtime",
        "unknown_worker",
        "unknown_host",
        "invalid_query",
        "invalid_identifier",
        "invalid_request",
        "operation_unsupported",
        "not_found",
        "method_not_allowed",
    } <= codes_seen
    assert len(responses) > 50

    # Operator logs may name paths, never a session id or a token.
    log_text = caplog.text
    for value, field in canary.planted.items():
        if "session" in field or "seg" in field or "token" in field:
            assert value not in log_text, field
    for secret in secrets_sent:
        assert secret not in log_text
