"""The read fast path answers exactly what quart answers, and only the plain requests.

Every read route is asked twice by the same caller: plainly (the fast path answers) and with
an ``If-None-Match`` that matches nothing (the fast path declines conditional requests, so
quart answers, with a 200 and the full body). Status, body and every header but ``date``
and ``x-request-id`` must be identical, for a caller who sees everything and for one whose
view the policy filters. Errors, blocking queries and escaped query strings must reach
quart; audit records and metrics must not tell the two paths apart.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import httpx
import msgspec

from tests.conftest import FIXTURE_ROOT, RunningDaemon, StartDaemon, local_source_toml, wait_for
from tests.embedded_plugins import INSTANCES

RID = "emb-alpha"
LOCAL = "local-worker-runtime"
EMB_WORKERS = ("e1", "e2", "e3")
VOLATILE = {"date", "x-request-id"}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    def __init__(self) -> None:
        self.alpha = secrets.token_urlsafe(24)
        self.ops = secrets.token_urlsafe(24)
        self.runtime_key = f"fast-{secrets.token_hex(4)}"
        """Where the embedded runtime is found in ``tests.embedded_plugins.INSTANCES``."""


def world(data_dir: Path, runtime_dir: Path, tmp: Path, tokens: Tokens) -> str:
    return (
        local_source_toml(data_dir, runtime_dir, liveness_check=False)
        + "\n".join(
            [
                "[[sources]]",
                'kind = "embedded"',
                f'runtime_id = "{RID}"',
                'factory = "tests.embedded_plugins:ThirdPartyRuntime"',
                f"options = {{ key = '{tokens.runtime_key}', workers = {list(EMB_WORKERS)} }}",
                'workspaces = ["alpha"]',
                "[[workspaces]]",
                'id = "demo"',
                f'root = "{FIXTURE_ROOT}"',
                "[[clients]]",
                'name = "alpha-backend"',
                f'token_sha256 = "{digest(tokens.alpha)}"',
                'workspaces = ["alpha"]',
                "[[clients]]",
                'name = "ops"',
                f'token_sha256 = "{digest(tokens.ops)}"',
                'workspaces = ["*"]',
                "[audit]",
                f'path = "{tmp / "audit.jsonl"}"',
                'flush_interval = "0s"',
            ]
        )
        + "\n"
    )


async def start(
    start_daemon: StartDaemon, tmp: Path, data_dir: Path, runtime_dir: Path
) -> tuple[RunningDaemon, Tokens]:
    tokens = Tokens()
    d = await start_daemon(world(data_dir, runtime_dir, tmp, tokens))

    async def ready() -> bool:
        r = await d.client.get("/api/workers", headers=auth(tokens.ops))
        body = msgspec.json.decode(r.content) if r.status_code == 200 else {"items": []}
        return {w["worker_id"] for w in body["items"] if w["runtime_id"] == RID} == set(
            EMB_WORKERS
        ) and any(w["runtime_id"] != RID for w in body["items"])

    await wait_for(ready, message="both sources observed")
    return d, tokens


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in VOLATILE]
    return response.status_code, response.content, headers


async def targets(d: RunningDaemon, headers: dict[str, str]) -> list[str]:
    """One request target per read route, with the ids this world holds."""
    runtimes = msgspec.json.decode((await d.client.get("/api/runtimes", headers=headers)).content)
    local = next(r for r in runtimes["items"] if r["runtime_id"] != RID)
    first_page = msgspec.json.decode(
        (await d.client.get("/api/workers?limit=2", headers=headers)).content
    )
    assert first_page["next_cursor"] is not None
    hosts = msgspec.json.decode((await d.client.get("/api/hosts", headers=headers)).content)
    host = hosts["items"][0]["host_id"]
    return [
        "/api/runtimes",
        "/api/runtimes?limit=1",
        f"/api/runtimes/{RID}",
        f"/api/runtimes/{local['runtime_id']}",
        f"/api/runtimes/{RID}/workers",
        f"/api/runtimes/{local['runtime_id']}/workers?limit=2",
        f"/api/runtimes/{RID}/workers/e2",
        "/api/hosts",
        f"/api/hosts/{host}/workers",
        "/api/workers",
        "/api/workers?limit=2",
        f"/api/workers?limit=2&cursor={first_page['next_cursor']}",
        # Workspace-scoped twins: the path names the acting workspace.
        "/api/w/alpha/runtimes",
        f"/api/w/alpha/runtimes/{RID}/workers/e2",
        f"/api/w/alpha/hosts/{host}/workers",
        "/api/w/alpha/workers?limit=2",
    ]


async def test_fast_path_answers_what_quart_answers(
    start_daemon: StartDaemon, tmp_path: Path, data_dir: Path, runtime_dir: Path
) -> None:
    d, tokens = await start(start_daemon, tmp_path, data_dir, runtime_dir)
    fast = d.daemon.fastpath
    callers = {"ops (sees all)": auth(tokens.ops), "alpha-backend": auth(tokens.alpha)}
    filtered_seen = False
    for caller, headers in callers.items():
        for target in await targets(d, headers):
            served = fast.served
            plain = await d.client.get(target, headers=headers)
            assert fast.served == served + 1, (caller, target, "not served by the fast path")
            via_quart = await d.client.get(
                target, headers={**headers, "If-None-Match": '"matches-nothing"'}
            )
            assert fast.served == served + 1, (caller, target, "conditional request served")
            assert plain.status_code == 200, (caller, target, plain.text)
            assert comparable(plain) == comparable(via_quart), (caller, target)
            filtered_seen |= "x-results-filtered-by-policy" in plain.headers
    assert filtered_seen, "the policy hid nothing from alpha-backend: the world is wrong"


async def test_everything_else_reaches_quart(
    start_daemon: StartDaemon, tmp_path: Path, data_dir: Path, runtime_dir: Path
) -> None:
    d, tokens = await start(start_daemon, tmp_path, data_dir, runtime_dir)
    fast = d.daemon.fastpath
    served = fast.served
    cases = {
        "/api/runtimes/nope": (404, "unknown_runtime"),
        f"/api/runtimes/{RID}/workers/nope": (404, "unknown_worker"),
        "/api/runtimes/bad$id": (400, "invalid_identifier"),
        "/api/workers?limit=0": (400, "invalid_query"),
        "/api/workers?bogus=1": (400, "invalid_query"),
        "/api/workers?limit=1&limit=2": (400, "invalid_query"),
        f"/api/runtimes/{RID}?limit=1": (400, "invalid_query"),
        "/api/workers?cursor=not-ours": (400, "invalid_query"),
        "/api/runtimes/": (404, "not_found"),
        "/api/hosts/x/workers/y": (404, "not_found"),
    }
    ops = auth(tokens.ops)
    for target, (status, code) in cases.items():
        response = await d.client.get(target, headers=ops)
        assert response.status_code == status, (target, response.text)
        assert msgspec.json.decode(response.content)["code"] == code, target
    # Escaped query strings and blocking queries are quart's; the answers are the same.
    escaped = await d.client.get("/api/workers?limit=1%30", headers=ops)
    plain = await d.client.get("/api/workers?limit=10", headers=ops)
    assert escaped.content == plain.content
    served_plain = fast.served
    index = int(escaped.headers["x-registry-index"])
    held = await d.client.get(f"/api/workers?limit=10&index={index - 1}&wait=1s", headers=ops)
    assert held.content == escaped.content
    assert fast.served == served_plain
    assert fast.served == served + 1  # only the one plain request above
    # A worker hidden from alpha-backend: quart answers the concealed 404, not the fast path.
    local_worker = msgspec.json.decode(
        (await d.client.get(f"/api/runtimes/{LOCAL}/workers?limit=1", headers=ops)).content
    )["items"][0]
    served = fast.served
    hidden = await d.client.get(
        f"/api/runtimes/{local_worker['runtime_id']}/workers/{local_worker['worker_id']}",
        headers=auth(tokens.alpha),
    )
    assert hidden.status_code == 404
    assert fast.served == served


async def test_fast_answers_are_audited_and_counted(
    start_daemon: StartDaemon, tmp_path: Path, data_dir: Path, runtime_dir: Path
) -> None:
    d, tokens = await start(start_daemon, tmp_path, data_dir, runtime_dir)
    request_id = "fast-" + secrets.token_hex(6)
    served = d.daemon.fastpath.served
    response = await d.client.get(
        f"/api/runtimes/{RID}/workers/e1",
        headers={**auth(tokens.alpha), "X-Request-Id": request_id},
    )
    assert response.status_code == 200
    assert d.daemon.fastpath.served == served + 1
    assert response.headers["x-request-id"] == request_id
    audit = tmp_path / "audit.jsonl"

    def record() -> dict[str, object] | None:
        if not audit.exists():
            return None
        for line in audit.read_bytes().splitlines():
            r = msgspec.json.decode(line)
            if r["request_id"] == request_id:
                return r  # type: ignore[no-any-return]
        return None

    await wait_for(lambda: record() is not None, message="the audit record")
    r = record()
    assert r is not None
    assert (r["client"], r["route"], r["runtime_id"], r["worker_id"], r["status"]) == (
        "alpha-backend",
        "/api/runtimes/<runtime_id>/workers/<worker_id>",
        RID,
        "e1",
        200,
    )
    assert r["decision"] == "allowed"
    metrics = (await d.client.get("/metrics", headers=auth(tokens.ops))).text
    label = 'route="/api/runtimes/<runtime_id>/workers/<worker_id>"'
    assert any(label in line and 'status="200"' in line for line in metrics.splitlines())


async def test_kept_answers_follow_the_revision(
    start_daemon: StartDaemon, tmp_path: Path, data_dir: Path, runtime_dir: Path
) -> None:
    """The fast path keeps finished answers for their revision only: a change is served at
    once, and a kept answer still tells the audit that the policy filtered it."""
    d, tokens = await start(start_daemon, tmp_path, data_dir, runtime_dir)
    fast = d.daemon.fastpath
    ops, alpha = auth(tokens.ops), auth(tokens.alpha)
    path = f"/api/runtimes/{RID}/workers"
    first = await d.client.get(path, headers=ops)
    again = await d.client.get(path, headers=ops)
    assert comparable(first) == comparable(again)
    INSTANCES[tokens.runtime_key].add("e4")

    async def changed() -> bool:
        r = await d.client.get(path, headers=ops)
        return int(r.headers["x-registry-index"]) > int(first.headers["x-registry-index"])

    await wait_for(changed, message="a new revision")
    served = fast.served
    after = await d.client.get(path, headers=ops)
    assert fast.served == served + 1
    assert {w["worker_id"] for w in msgspec.json.decode(after.content)["items"]} == {
        *EMB_WORKERS,
        "e4",
    }
    ids = [f"kept-{i}-{secrets.token_hex(4)}" for i in range(2)]
    for request_id in ids:
        r = await d.client.get("/api/workers", headers={**alpha, "X-Request-Id": request_id})
        assert r.headers["x-results-filtered-by-policy"] == "true"
    audit = tmp_path / "audit.jsonl"

    def decisions() -> dict[str, str]:
        if not audit.exists():
            return {}
        records = [msgspec.json.decode(line) for line in audit.read_bytes().splitlines()]
        return {r["request_id"]: r["decision"] for r in records if r["request_id"] in ids}

    await wait_for(lambda: len(decisions()) == 2, message="both audit records")
    assert set(decisions().values()) == {"filtered"}


def test_memoized_routes_match_as_the_router_does() -> None:
    from yoi_registryd.http.app import ApiState, create_app
    from yoi_registryd.http.fastpath import MemoizedRouteTable
    from yoi_registryd.http.security import RouteTable
    from yoi_registryd.registry import RegistryActor

    url_map = create_app(ApiState(RegistryActor())).url_map
    plain, memo = RouteTable(url_map), MemoizedRouteTable(url_map, max_entries=4)
    paths = [
        "/api/workers",
        "/api/runtimes/rt-1/workers/w-1",
        "/api/runtimes/rt-1/workers/w-1/stop",
        "/api/hosts/h/workers",
        "/api/w/ws-1/workers",
        "/api/w/ws-1/runtimes/rt-1/workers/w-1/stop",
        "/api/w//workers",
        "/api/runtimes/",
        "/nowhere",
        "/healthz",
    ]
    for _ in range(2):
        for method in ("GET", "POST", "HEAD", "DELETE"):
            for path in paths:
                expected = plain.match(method, path)
                found = memo.match(method, path)
                assert found == expected, (method, path)
                found[1]["runtime_id"] = "changed by a caller"
                assert memo.match(method, path) == expected, (method, path)
                assert len(memo._memo) <= 4
