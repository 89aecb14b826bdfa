"""Cursors are sealed and bound (issue 13, item 2): the bisection attack no longer works.

The attack: cursors were readable positions (base64 of ``[runtime_id, worker_id]``) that
a client could forge, and ``X-Results-Filtered-By-Policy`` said whether the policy hid
something *in the page's range*. A client bound to workspace alpha set a forged cursor just
before a guessed id and read the header: it recovered a hidden worker id of another
workspace by bisection (~2,300 requests), and told whether a guessed name exists in two.

Now a cursor carries a MAC over its position, its list, the client and the acting
workspace; anything else is ``400 invalid_query``, the same answer for every kind of forgery
or replay. And the header depends on the caller and the route only.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import test_policy
from tests.conftest import StartDaemon, local_source_toml, wait_for
from tests.test_api import fixture_daemon
from tests.test_policy import FILTERED, World, collect, keys
from yoi_registryd.config import ConfigError, parse_config
from yoi_registryd.daemon import Daemon
from yoi_registryd.ids import local_worker_id

world = test_policy.world
"""test_policy.py's world: clients bound to workspaces, workers of several of them."""

REFUSED = {
    "code": "invalid_query",
    "message": "cursor was not issued by this registry for this list and caller",
    "parameter": "cursor",
}


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def forged_cursors(issued: str, position: list[str]) -> list[str]:
    """Every way to make up a cursor for ``position``, given one the caller was issued."""
    payload, _, tag = issued.partition(".")
    chosen = b64(json.dumps(position).encode())
    # A 16-byte tag is 22 base64 characters whose last carries 2 bits and 4 unused ones:
    # flip one of the 2 to edit the tag, one of the 4 to respell the same bytes.
    last = ALPHABET.index(tag[-1])
    flipped = tag[:-1] + ALPHABET[last ^ 0b010000]
    respelled = ALPHABET[last ^ 0b000001]
    return [
        chosen,  # the old format: a bare position
        f"{chosen}.{tag}",  # a chosen position under a real tag
        f"{payload}.{flipped}",  # a real position, the tag edited
        f"{payload}.{tag[:-1]}{respelled}",  # the same tag bytes, spelled another way
        f"{chosen}.{b64(secrets.token_bytes(16))}",  # a guessed tag
        f"{payload}.",
        f".{tag}",
        f"{payload}.{tag}.{tag}",
    ]


async def refused(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, (str(response.url), response.text)
    error: dict[str, Any] = response.json()
    assert {k: error.get(k) for k in REFUSED} == REFUSED, error
    assert FILTERED not in response.headers
    return error


async def test_the_bisection_attack_no_longer_works(world: World) -> None:
    d, t = world.d, world.tokens
    alpha = world.headers(t.alpha)
    issued = (await d.get_json("/api/workers", headers=alpha, params={"limit": 1}))["next_cursor"]
    # Guesses: a beta worker's id (it exists, alpha may not see it) and one that never existed.
    # Both are derivable from a name: local worker ids are.
    hidden = world.local_ids["w01"]
    assert ("local-all", hidden) not in world.expected("alpha")
    answers = []
    for guess in (hidden, local_worker_id("never-existed")):
        for position in (["local-all", guess[:-1]], ["local-all", guess]):
            for cursor in forged_cursors(issued, position):
                response = await d.client.get(
                    "/api/workers", headers=alpha, params={"limit": 1, "cursor": cursor}
                )
                answers.append((response.status_code, response.content))
                await refused(response)
    # Every probe got the same bytes: nothing tells the existing guess from the absent one.
    assert len(set(answers)) == 1


async def test_the_filtered_header_depends_on_the_caller_and_route_only(world: World) -> None:
    """Page by page through every list: a restricted caller gets the header on every page
    (whether or not that page's range held a hidden item), one that sees all on none."""
    d, t = world.d, world.tokens
    lists = [
        "/api/workers",
        "/api/hosts",
        "/api/runtimes",
        "/api/runtimes/local-all/workers",
        "/api/sources",
    ]
    # The operator client (the only kind that may read /api/sources), acting for alpha or not.
    callers = ((world.headers(t.ops, "alpha"), True), (world.headers(t.ops), False))
    for headers, restricted in callers:
        for path in lists:
            cursor = None
            pages = 0
            while True:
                params: dict[str, Any] = {"limit": 1}
                if cursor:
                    params["cursor"] = cursor
                response = await d.client.get(path, headers=headers, params=params)
                assert response.status_code == 200, response.text
                assert (response.headers.get(FILTERED) == "true") == restricted, (path, pages)
                pages += 1
                cursor = response.json()["next_cursor"]
                if cursor is None:
                    break
            assert pages > 1, path
        # A detail the policy may trim says it too; a worker's detail never does.
        detail = await d.client.get("/api/runtimes/local-all", headers=headers)
        assert (detail.headers.get(FILTERED) == "true") == restricted
        own = sorted(world.expected("alpha"))[0]
        worker = await d.client.get(f"/api/runtimes/{own[0]}/workers/{own[1]}", headers=headers)
        assert FILTERED not in worker.headers


async def test_a_cursor_replayed_elsewhere_is_refused(world: World) -> None:
    d, t = world.d, world.tokens
    as_alpha = world.headers(t.alpha)  # acts for alpha, its only workspace
    multi_alpha = world.headers(t.multi, "alpha")
    multi_beta = world.headers(t.multi, "beta")

    async def cursor(path: str, headers: dict[str, str]) -> str:
        page = await d.get_json(path, headers=headers, params={"limit": 1})
        assert page["next_cursor"], path
        return str(page["next_cursor"])

    workers = await cursor("/api/workers", as_alpha)
    # Its own owner may use it, as often as it likes.
    for _ in range(2):
        page = await d.client.get("/api/workers", headers=as_alpha, params={"cursor": workers})
        assert page.status_code == 200
    # Another client, same workspace; the same client, another workspace.
    await refused(
        await d.client.get("/api/workers", headers=multi_alpha, params={"cursor": workers})
    )
    multi = await cursor("/api/workers", multi_alpha)
    await refused(await d.client.get("/api/workers", headers=multi_beta, params={"cursor": multi}))
    # Another route, including one whose cursors have the same shape (two parts).
    await refused(await d.client.get("/api/hosts", headers=as_alpha, params={"cursor": workers}))
    local = await cursor("/api/runtimes/local-all/workers", as_alpha)
    for path in ("/api/runtimes/emb-any/workers", "/api/runtimes", "/api/sources"):
        ops = world.headers(t.ops) if path == "/api/sources" else as_alpha
        await refused(await d.client.get(path, headers=ops, params={"cursor": local}))
    # A blocking query checks its cursor before it waits.
    index = page.headers["x-registry-index"]
    await refused(
        await d.client.get(
            "/api/workers",
            headers=multi_alpha,
            params={"cursor": workers, "index": index, "wait": "5s"},
        )
    )
    # Walking with one's own cursors still sees every visible worker once.
    assert set(keys(await collect(d, "/api/workers", as_alpha, 2))) == world.expected("alpha")


async def test_replicas_sharing_a_cursor_key_file_accept_each_others_cursors(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "cursor.key"
    key_file.write_text(b64(secrets.token_bytes(32)) + "\n")
    shared = f'[server]\ncursor_key_file = "{key_file}"\n'
    source = local_source_toml(data_dir, runtime_dir)
    first = await start_daemon(shared + source)
    second = await start_daemon(shared + source)
    alone = await fixture_daemon(start_daemon, data_dir, runtime_dir)  # a key of its own

    async def listed() -> bool:
        pages = [await d.get_json("/api/workers") for d in (first, second)]
        return all(len(p["items"]) > 2 for p in pages)

    await wait_for(listed, message="both replicas list the workers")
    cursor = (await first.get_json("/api/workers", params={"limit": 2}))["next_cursor"]
    from_first = await first.get_json("/api/workers", params={"cursor": cursor})
    from_second = await second.get_json("/api/workers", params={"cursor": cursor})
    assert from_first == from_second
    await refused(await alone.client.get("/api/workers", params={"cursor": cursor}))


@pytest.mark.parametrize("content", [None, b"", b"too short\n"])
def test_a_missing_or_short_cursor_key_file_stops_the_start(
    tmp_path: Path, content: bytes | None
) -> None:
    key_file = tmp_path / "cursor.key"
    if content is not None:
        key_file.write_bytes(content)
    config = parse_config(f'sources = []\n[server]\ncursor_key_file = "{key_file}"\n')
    with pytest.raises(ConfigError, match=r"server\.cursor_key_file") as raised:
        Daemon(config)
    if content:
        assert content.decode().strip() not in str(raised.value)
