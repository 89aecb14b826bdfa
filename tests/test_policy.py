"""Workspace visibility over real HTTP: every client/workspace combination sees exactly its
workers, on every list and lookup route, with correct pagination after filtering.

The world: one yoi data dir whose Workers belong to three workspace roots (alpha and beta
are configured ``[[workspaces]]``; gamma is reachable only by its opaque id), read by an
unbound local source and by a local source bound to beta's root; an embedded runtime bound
to workspace ``alpha``; an unbound embedded runtime visible to everyone. What each
workspace should see is written down from that description, not computed by the code under
test.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningDaemon, StartDaemon, wait_for
from tests.policy_plugins import ReadOnlyPolicy
from yoi_registryd.config import ConfigError, parse_config
from yoi_registryd.model import (
    Implementation,
    WorkerCapabilities,
    WorkerRecord,
    WorkspaceInfo,
)
from yoi_registryd.policy import (
    SEES_ALL,
    DefaultPolicy,
    PolicyContext,
    Principal,
    load_policy,
)
from yoi_registryd.vocabulary import worker_workspace

ROOTS = {
    "alpha": "/srv/yoi/ws/alpha",
    "beta": "/srv/yoi/ws/beta",
    "gamma": "/srv/yoi/ws/gamma",
}
# Worker name -> the root its metadata records (some with a trailing slash, as yoi may write).
LOCAL_WORKERS = {
    f"w{i:02d}": ROOTS[name] + ("/" if i % 5 == 4 else "")
    for i, name in enumerate(["alpha", "beta", "alpha", "gamma", "beta", "alpha"] * 4)
}
EMBEDDED_ALPHA = ("e1", "e2", "e3")
EMBEDDED_ANY = ("u1", "u2")
FILTERED = "x-results-filtered-by-policy"


def write_worker(data_dir: Path, name: str, root: str | None, role: str | None = None) -> None:
    pod = data_dir / "pods" / name
    pod.mkdir(parents=True)
    meta: dict[str, Any] = {"worker_name": name}
    if root is not None:
        meta["workspace_root"] = root
    if role is not None:
        meta["resolved_manifest_snapshot"] = {"role": role}
    (pod / "metadata.json").write_text(json.dumps(meta, indent=2))


def sha256_hex(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    def __init__(self) -> None:
        self.alpha = secrets.token_urlsafe(24)
        self.multi = secrets.token_urlsafe(24)
        self.ops = secrets.token_urlsafe(24)


def world_toml(data_dir: Path, runtime_dir: Path, tmp: Path, tokens: Tokens, **policy: Any) -> str:
    token_file = tmp / "multi.token"
    token_file.write_text(tokens.multi + "\n")
    key = secrets.token_hex(4)
    lines = [
        "[[sources]]",
        'kind = "local"',
        'runtime_id = "local-all"',
        f'data_dir = "{data_dir}"',
        f'runtime_dir = "{runtime_dir}"',
        "[[sources]]",
        'kind = "local"',
        'runtime_id = "local-beta"',
        f'data_dir = "{data_dir}"',
        f'runtime_dir = "{runtime_dir}"',
        f'workspace_root = "{ROOTS["beta"]}"',
        "[[sources]]",
        'kind = "embedded"',
        'runtime_id = "emb-alpha"',
        'factory = "tests.embedded_plugins:ThirdPartyRuntime"',
        f"options = {{ key = 'alpha-{key}', workers = {list(EMBEDDED_ALPHA)} }}",
        'workspaces = ["alpha"]',
        "[[sources]]",
        'kind = "embedded"',
        'runtime_id = "emb-any"',
        'factory = "tests.embedded_plugins:ThirdPartyRuntime"',
        f"options = {{ key = 'any-{key}', workers = {list(EMBEDDED_ANY)} }}",
        "[[workspaces]]",
        'id = "alpha"',
        f'root = "{ROOTS["alpha"]}"',
        "[[workspaces]]",
        'id = "beta"',
        f'root = "{ROOTS["beta"]}"',
        "[[clients]]",
        'name = "alpha-backend"',
        f'token_sha256 = "{sha256_hex(tokens.alpha)}"',
        'workspaces = ["alpha"]',
        "[[clients]]",
        'name = "multi"',
        f'token_file = "{token_file}"',
        'workspaces = ["alpha", "beta"]',
        "[[clients]]",
        'name = "ops"',
        'token_env = "YOI_TEST_OPS_TOKEN"',
        'workspaces = ["*"]',
        "[audit]",
        f'path = "{tmp / "audit.jsonl"}"',
        'flush_interval = "0s"',
    ]
    if policy:
        lines.append("[policy]")
        for k, v in policy.items():
            lines.append(f"{k} = {json.dumps(v) if not isinstance(v, dict) else _inline(v)}")
    return "\n".join(lines) + "\n"


def _inline(table: dict[str, str]) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + " }"


class World:
    """The running daemon plus the ids it gave the workers, read once through ``ops``."""

    def __init__(self, d: RunningDaemon, tokens: Tokens) -> None:
        self.d = d
        self.tokens = tokens
        self.local_ids: dict[str, str] = {}  # worker name -> worker_id
        self.gamma_id = ""
        self.all_workers: dict[tuple[str, str], dict[str, Any]] = {}

    def headers(self, token: str, workspace: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {token}"}
        if workspace is not None:
            h["X-Yoi-Workspace"] = workspace
        return h

    async def load(self) -> None:
        ops = self.headers(self.tokens.ops)
        expected_total = len(LOCAL_WORKERS) + sum(
            1 for r in LOCAL_WORKERS.values() if r.rstrip("/") == ROOTS["beta"]
        )
        expected_total += len(EMBEDDED_ALPHA) + len(EMBEDDED_ANY)

        async def all_seen() -> bool:
            items = await collect(self.d, "/api/workers", ops)
            return len(items) == expected_total

        await wait_for(all_seen, message="every source observed")
        for w in await collect(self.d, "/api/workers", ops):
            self.all_workers[(w["runtime_id"], w["worker_id"])] = w
            if w["runtime_id"] == "local-all":
                self.local_ids[w["label"]] = w["worker_id"]
                if LOCAL_WORKERS[w["label"]].rstrip("/") == ROOTS["gamma"]:
                    self.gamma_id = w["workspace"]["workspace_id"]
        assert self.gamma_id.startswith("ws-")

    def root_of(self, workspace: str | None) -> str | None:
        if workspace in ("alpha", "beta"):
            return ROOTS[workspace]
        if workspace == self.gamma_id:
            return ROOTS["gamma"]
        return None

    def visible_runtimes(self, workspace: str | None) -> set[str]:
        if workspace is None:
            return {"local-all", "local-beta", "emb-alpha", "emb-any"}
        out = {"local-all", "emb-any"}  # unbound
        if workspace == "alpha":
            out.add("emb-alpha")
        if self.root_of(workspace) == ROOTS["beta"]:
            out.add("local-beta")
        return out

    def expected(self, workspace: str | None) -> set[tuple[str, str]]:
        """Written from the world's description: which workers ``workspace`` should see."""
        if workspace is None:
            return set(self.all_workers)
        root = self.root_of(workspace)
        out = {("emb-any", w) for w in EMBEDDED_ANY}
        if workspace == "alpha":
            out |= {("emb-alpha", w) for w in EMBEDDED_ALPHA}
        for name, worker_root in LOCAL_WORKERS.items():
            if worker_root.rstrip("/") == root:
                out.add(("local-all", self.local_ids[name]))
                if root == ROOTS["beta"]:
                    out.add(("local-beta", self.local_ids[name]))
        return out


async def collect(
    d: RunningDaemon, path: str, headers: dict[str, str], limit: int = 1000
) -> list[dict[str, Any]]:
    """Follow ``next_cursor`` to the end; check each page is full except the last."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        page = await d.get_json(path, headers=headers, params=params)
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            assert len(page["items"]) <= limit
            return items
        assert len(page["items"]) == limit, (path, limit, len(page["items"]))


def keys(items: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(w["runtime_id"], w["worker_id"]) for w in items]


@pytest.fixture
async def world(
    start_daemon: StartDaemon,
    tmp_path: Path,
    runtime_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> World:
    return await start_world(start_daemon, tmp_path, runtime_dir, monkeypatch)


async def start_world(
    start_daemon: StartDaemon,
    tmp_path: Path,
    runtime_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> World:
    data_dir = tmp_path / "yoi-data"
    for name, root in LOCAL_WORKERS.items():
        write_worker(data_dir, name, root)
    write_worker(data_dir, "rootless", None)
    tokens = Tokens()
    monkeypatch.setenv("YOI_TEST_OPS_TOKEN", tokens.ops)
    d = await start_daemon(world_toml(data_dir, runtime_dir, tmp_path, tokens))
    w = World(d, tokens)
    await w.load()
    return w


async def test_each_client_and_workspace_sees_exactly_its_workers_everywhere(
    world: World,
) -> None:
    t = world.tokens
    combos: list[tuple[str, str, str | None, str | None]] = [
        # (client token, header, acting workspace expected)
        ("alpha-backend", t.alpha, None, "alpha"),
        ("alpha-backend", t.alpha, "alpha", "alpha"),
        ("multi", t.multi, "alpha", "alpha"),
        ("multi", t.multi, "beta", "beta"),
        ("ops", t.ops, None, None),
        ("ops", t.ops, "beta", "beta"),
        ("ops", t.ops, world.gamma_id, world.gamma_id),
        ("ops", t.ops, "nobody", "nobody"),
    ]
    d = world.d
    everything = await d.get_json("/api/hosts", headers=world.headers(t.ops))
    all_hosts = {(h["runtime_id"], h["host_id"]) for h in everything["items"]}
    for client, token, header, acting in combos:
        headers = world.headers(token, header)
        expected = world.expected(acting)
        label = (client, header)

        # /api/workers, paged small so that filtering and paging interact.
        for limit in (1, 4, 1000):
            got = keys(await collect(d, "/api/workers", headers, limit))
            assert len(got) == len(set(got)), label
            assert set(got) == expected, label
            assert got == sorted(got), label
        page = await d.client.get("/api/workers", headers=headers)
        assert page.json()["workspace_id"] == (acting or ""), label
        # Says whether the policy may hide something from this caller, never whether it did
        # (that was an oracle: test_cursors.py).
        assert (page.headers.get(FILTERED) == "true") == (acting is not None), label

        # Per runtime: the list, the detail (counts) and every worker lookup.
        runtimes = await d.get_json("/api/runtimes", headers=headers)
        listed = {r["runtime_id"]: r for r in runtimes["items"]}
        visible_runtimes = world.visible_runtimes(acting)
        assert set(listed) == visible_runtimes, label
        for rid in ("local-all", "local-beta", "emb-alpha", "emb-any"):
            in_runtime = {k for k in expected if k[0] == rid}
            path = f"/api/runtimes/{rid}/workers"
            if rid not in visible_runtimes:
                body = await d.get_json(path, status=404, headers=headers)
                assert body["code"] == "unknown_runtime", label
                body = await d.get_json(f"/api/runtimes/{rid}", status=404, headers=headers)
                assert body["code"] == "unknown_runtime", label
                continue
            assert set(keys(await collect(d, path, headers, 3))) == in_runtime, (label, rid)
            detail = await d.get_json(f"/api/runtimes/{rid}", headers=headers)
            assert detail["worker_count"] == len(in_runtime), (label, rid)
            assert listed[rid]["worker_count"] == len(in_runtime), (label, rid)
            own_hosts = {w["host_id"] for k, w in world.all_workers.items() if k in in_runtime}
            assert set(detail["host_ids"]) == own_hosts, (label, rid)
        for rid, wid in world.all_workers:
            path = f"/api/runtimes/{rid}/workers/{wid}"
            if (rid, wid) in expected:
                body = await d.get_json(path, headers=headers)
                assert (body["runtime_id"], body["worker_id"]) == (rid, wid)
            else:
                body = await d.get_json(path, status=404, headers=headers)
                concealed = "unknown_worker" if rid in visible_runtimes else "unknown_runtime"
                assert body["code"] == concealed, (label, rid, wid)
                assert "visible" not in body["message"]

        # Hosts: listed only when visible; each host's worker list holds exactly its share.
        hosts = await d.get_json("/api/hosts", headers=headers)
        expected_hosts = {(rid, world.all_workers[(rid, wid)]["host_id"]) for rid, wid in expected}
        assert {(h["runtime_id"], h["host_id"]) for h in hosts["items"]} == expected_hosts, label
        # A host id names one host; where two runtimes report the same id (both local
        # sources see beta's host), the route answers for the first runtime in id order.
        owners: dict[str, str] = {}
        for rid, hid in sorted(all_hosts):
            owners.setdefault(hid, rid)
        for hid, rid in owners.items():
            path = f"/api/hosts/{hid}/workers"
            if (rid, hid) in expected_hosts:
                on_host = {
                    k for k in expected if k[0] == rid and world.all_workers[k]["host_id"] == hid
                }
                assert set(keys(await collect(d, path, headers, 2))) == on_host, (label, hid)
            else:
                body = await d.get_json(path, status=404, headers=headers)
                assert body["code"] == "unknown_host", (label, hid)


async def test_pagination_after_filtering_never_skips_or_repeats(world: World) -> None:
    """Every limit, every workspace: the pages concatenate to exactly the visible workers,
    in order, and the lists interleave visible and hidden workers at every step."""
    t = world.tokens
    for workspace in ("alpha", "beta", world.gamma_id):
        headers = world.headers(t.ops, workspace)
        expected = sorted(world.expected(workspace))
        for limit in (1, 2, 3, 5, 7, len(expected), len(expected) + 1):
            got = keys(await collect(world.d, "/api/workers", headers, limit))
            assert got == expected, (workspace, limit)
            local = keys(await collect(world.d, "/api/runtimes/local-all/workers", headers, limit))
            assert local == [k for k in expected if k[0] == "local-all"], (workspace, limit)


async def test_a_cursor_from_one_workspace_cannot_reveal_another(world: World) -> None:
    """Cursors are bound to who was given them: beta's cursor used for alpha is refused."""
    t = world.tokens
    beta = await world.d.get_json(
        "/api/workers", headers=world.headers(t.ops, "beta"), params={"limit": 2}
    )
    alpha = await world.d.get_json(
        "/api/workers",
        status=400,
        headers=world.headers(t.ops, "alpha"),
        params={"limit": 1000, "cursor": beta["next_cursor"]},
    )
    assert (alpha["code"], alpha["parameter"]) == ("invalid_query", "cursor")


async def test_operations_respect_visibility(world: World) -> None:
    t = world.tokens
    d = world.d
    alpha = world.headers(t.alpha)
    beta = world.headers(t.multi, "beta")
    # A runtime bound to alpha: alpha may stop its worker; beta cannot even see it.
    ok = await d.client.post("/api/runtimes/emb-alpha/workers/e1/stop", headers=alpha)
    assert ok.status_code == 200, ok.text
    assert (ok.json()["state"], ok.json()["worker_id"]) == ("accepted", "e1")
    hidden = await d.client.post("/api/runtimes/emb-alpha/workers/e2/stop", headers=beta)
    assert hidden.status_code == 404
    assert hidden.json()["code"] == "unknown_runtime"
    # A local worker of another workspace: concealed before its capabilities are looked at.
    beta_worker = world.local_ids["w01"]
    refused = await d.client.post(
        f"/api/runtimes/local-all/workers/{beta_worker}/stop", headers=alpha
    )
    assert refused.status_code == 404
    assert refused.json()["code"] == "unknown_worker"
    own = await d.client.post(f"/api/runtimes/local-all/workers/{beta_worker}/stop", headers=beta)
    assert own.status_code == 200
    assert own.json()["state"] == "unsupported"
    assert [d["code"] for d in own.json()["diagnostics"]] == ["operation_unsupported"]


async def test_concealment_off_answers_403_not_visible(
    start_daemon: StartDaemon, tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "yoi-data"
    for name, root in LOCAL_WORKERS.items():
        write_worker(data_dir, name, root)
    tokens = Tokens()
    monkeypatch.setenv("YOI_TEST_OPS_TOKEN", tokens.ops)
    d = await start_daemon(
        world_toml(data_dir, runtime_dir, tmp_path, tokens, conceal_invisible_workers=False)
    )
    w = World(d, tokens)
    await w.load()
    alpha = w.headers(tokens.alpha)
    beta_worker = w.local_ids["w01"]
    body = await d.get_json(
        f"/api/runtimes/local-all/workers/{beta_worker}", status=403, headers=alpha
    )
    assert body["code"] == "worker_not_visible"
    assert body["worker_id"] == beta_worker
    beta = w.headers(tokens.multi, "beta")
    body = await d.get_json("/api/runtimes/emb-alpha/workers/e1", status=403, headers=beta)
    assert body["code"] == "runtime_not_visible"
    emb_host = w.all_workers[("emb-alpha", "e1")]["host_id"]
    body = await d.get_json(f"/api/hosts/{emb_host}/workers", status=403, headers=beta)
    assert body["code"] == "host_not_visible"
    stop = await d.client.post(f"/api/runtimes/local-all/workers/{beta_worker}/stop", headers=alpha)
    assert stop.status_code == 403
    assert stop.json()["code"] == "worker_not_visible"
    # A worker that does not exist at all is still 404.
    body = await d.get_json("/api/runtimes/local-all/workers/nope", status=404, headers=alpha)
    assert body["code"] == "unknown_worker"


def test_the_older_server_spelling_of_concealment_still_works() -> None:
    assert (
        parse_config("[server]\nconceal_invisible_workers = false\n").conceals_invisible_workers()
        is False
    )
    assert parse_config("").conceals_invisible_workers() is True
    both = (
        "[server]\nconceal_invisible_workers = false\n[policy]\nconceal_invisible_workers = true\n"
    )
    assert parse_config(both).conceals_invisible_workers() is True


# -- the default policy on records (remote-style workers with runtime visibility) ----------


def _worker(runtime_id: str, workspace: WorkspaceInfo) -> WorkerRecord:
    return WorkerRecord(
        runtime_id=runtime_id,
        worker_id="w",
        host_id=f"remote-{runtime_id}",
        display_name="Worker w",
        label="w",
        role=None,
        profile=None,
        workspace=workspace,
        state="running",
        status="running",
        last_seen_at=None,
        implementation=Implementation("remote", "remote worker"),
        capabilities=WorkerCapabilities(),
        registry_state="running",
    )


def test_default_policy_binds_runtimes_to_their_configured_workspaces() -> None:
    config = parse_config(
        """
[[sources]]
kind = "remote"
runtime_id = "gpu"
base_url = "http://127.0.0.1:9"
workspaces = ["alpha", "beta"]
[[sources]]
kind = "remote"
runtime_id = "shared"
base_url = "http://127.0.0.1:9"
"""
    )
    policy = DefaultPolicy(PolicyContext.from_config(config))
    bound = _worker("gpu", worker_workspace("remote_http", None))
    unbound = _worker("shared", worker_workspace("remote_http", None))
    for workspace, sees_bound in (("alpha", True), ("beta", True), ("gamma", False)):
        view = policy.view(Principal("c", workspace))
        assert view.restricted
        assert view.worker_visible(bound) is sees_bound
        assert view.worker_visible(unbound) is True
    assert policy.view(Principal("c", None)) is SEES_ALL
    # A worker naming its own workspace is visible to that workspace only.
    own = _worker("shared", worker_workspace("remote_http", "alpha"))
    assert policy.view(Principal("c", "alpha")).worker_visible(own)
    assert not policy.view(Principal("c", "beta")).worker_visible(own)


# -- custom policy -------------------------------------------------------------------------


async def test_custom_policy_is_loaded_and_decides(
    start_daemon: StartDaemon, tmp_path: Path, runtime_dir: Path
) -> None:
    data_dir = tmp_path / "yoi-data"
    write_worker(data_dir, "builder", ROOTS["alpha"], role="builder")
    write_worker(data_dir, "secret-agent", ROOTS["alpha"], role="hidden")
    viewer, editor = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    d = await start_daemon(
        f"""
[[sources]]
kind = "local"
data_dir = "{data_dir}"
runtime_dir = "{runtime_dir}"
[[clients]]
name = "viewer"
token_sha256 = "{sha256_hex(viewer)}"
workspaces = ["*"]
[[clients]]
name = "editor"
token_sha256 = "{sha256_hex(editor)}"
workspaces = ["*"]
[policy]
custom = "tests.policy_plugins:read_only_policy"
options = {{ read_only = "viewer", hidden_role = "hidden" }}
[audit]
path = "{tmp_path / "audit.jsonl"}"
"""
    )
    policy = d.daemon.access.policy
    assert isinstance(policy, ReadOnlyPolicy)
    as_viewer = {"Authorization": f"Bearer {viewer}"}
    as_editor = {"Authorization": f"Bearer {editor}"}

    async def listed() -> bool:
        body = await d.get_json("/api/workers", headers=as_viewer)
        return len(body["items"]) == 1

    await wait_for(listed, message="the builder worker")
    body = await d.client.get("/api/workers", headers=as_viewer)
    assert [w["label"] for w in body.json()["items"]] == ["builder"]
    assert body.headers[FILTERED] == "true"
    wid = body.json()["items"][0]["worker_id"]
    refused = await d.client.post(
        f"/api/runtimes/local-worker-runtime/workers/{wid}/stop", headers=as_viewer
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "forbidden"
    allowed = await d.client.post(
        f"/api/runtimes/local-worker-runtime/workers/{wid}/stop", headers=as_editor
    )
    # The policy let it through; local workers cannot stop.
    assert (allowed.status_code, allowed.json()["state"]) == (200, "unsupported")
    # The policy saw route templates and ids, never a raw path.
    stops = [f for f in policy.asked if f.method == "POST"]
    assert {f.route for f in stops} == {"/api/runtimes/<runtime_id>/workers/<worker_id>/stop"}
    assert {(f.runtime_id, f.worker_id) for f in stops} == {("local-worker-runtime", wid)}
    assert {f.principal.client for f in stops} == {"viewer", "editor"}


async def test_a_failing_custom_policy_refuses_the_request(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    d = await start_daemon(
        f"""
sources = []
[policy]
custom = "tests.policy_plugins:exploding_policy"
[audit]
path = "{tmp_path / "audit.jsonl"}"
"""
    )
    response = await d.client.get("/api/workers")
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert "policy bug" not in response.text


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("tests.policy_plugins:NOT_CALLABLE", "is not callable"),
        ("tests.policy_plugins:not_a_policy", "did not return a policy"),
        ("tests.policy_plugins:missing", "has no attribute"),
        ("tests.no_such_module:thing", "cannot import"),
    ],
)
def test_a_bad_custom_policy_stops_the_start(spec: str, problem: str) -> None:
    config = parse_config(f'sources = []\n[policy]\ncustom = "{spec}"\n')
    with pytest.raises(ConfigError) as caught:
        load_policy(config)
    assert caught.value.problems[0].startswith("policy.custom:")
    assert problem in caught.value.problems[0]


def test_policy_custom_must_name_module_and_attribute() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config('[policy]\ncustom = "just_a_module"\n')
    assert caught.value.problems == [
        "policy.custom: 'just_a_module' is not of the form 'module:attribute'"
    ]


async def test_cached_bodies_are_kept_apart_per_workspace(world: World) -> None:
    """The same list at the same revision, asked by two workspaces in turn, never serves one
    the other's cached body: the cache key includes the view."""
    t = world.tokens
    for _ in range(3):
        for workspace in ("alpha", "beta"):
            body = await world.d.get_json("/api/workers", headers=world.headers(t.ops, workspace))
            assert set(keys(body["items"])) == world.expected(workspace)
            assert body["workspace_id"] == workspace


# -- workspace-scoped routes ----------------------------------------------------------------


async def test_scoped_routes_see_exactly_what_the_header_sees(world: World) -> None:
    """``/api/w/{workspace_id}/...`` acts for the path's workspace exactly as
    ``X-Yoi-Workspace`` does: the same items, the same refusals, the same concealment."""
    t, d = world.tokens, world.d
    for token, workspace in (
        (t.alpha, "alpha"),
        (t.multi, "beta"),
        (t.ops, world.gamma_id),
        (t.ops, "nobody"),
    ):
        by_header = world.headers(token, workspace)
        bare = world.headers(token)
        scope = f"/api/w/{workspace}"
        label = (workspace,)
        got = keys(await collect(d, f"{scope}/workers", bare, 2))
        assert set(got) == world.expected(workspace), label
        for path in ("/workers", "/runtimes", "/hosts"):
            scoped = await d.client.get(f"{scope}{path}", headers=bare)
            headed = await d.client.get(f"/api{path}", headers=by_header)
            assert scoped.status_code == headed.status_code == 200, label
            assert scoped.content == headed.content, (label, path)
            assert scoped.headers.get(FILTERED) == headed.headers.get(FILTERED), (label, path)
            # Both at once: they must agree.
            both = await d.client.get(f"{scope}{path}", headers=by_header)
            assert both.content == headed.content, (label, path)
        for rid in ("local-all", "local-beta", "emb-alpha", "emb-any"):
            scoped = await d.client.get(f"{scope}/runtimes/{rid}/workers", headers=bare)
            headed = await d.client.get(f"/api/runtimes/{rid}/workers", headers=by_header)
            assert (scoped.status_code, scoped.content) == (headed.status_code, headed.content)
    # A workspace the client may not act for is refused as with the header.
    refused = await d.client.get("/api/w/beta/workers", headers=world.headers(t.alpha))
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    # Path and header naming different workspaces: a typed 400, nothing served.
    mismatch = await d.client.get("/api/w/alpha/workers", headers=world.headers(t.ops, "beta"))
    assert mismatch.status_code == 400
    message = "the workspace in the path and the one in X-Yoi-Workspace differ"
    assert mismatch.json() == {
        "error": "Bad Request",
        "message": message,
        "diagnostics": [{"code": "workspace_mismatch", "severity": "error", "message": message}],
        "code": "workspace_mismatch",
        "parameter": "workspace_id",
    }
    invalid = await d.client.get("/api/w/not%20an%20id/workers", headers=world.headers(t.ops))
    assert invalid.status_code == 400
    assert invalid.json()["code"] == "invalid_identifier"
