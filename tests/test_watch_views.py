"""Blocking queries watch the caller's own view (issue 13 item 3, issue 15 item 6).

Before: ``?index=<current>&wait=`` on a hidden worker, runtime or host was held for the whole
wait while a missing one answered 404 at once (which told hidden from missing); and a held
query woke on every registry revision, also when its body stayed the same and when the change
was another workspace's.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from tests.conftest import StartDaemon, wait_for
from tests.embedded_plugins import embedded_source_toml
from tests.scripted_source import HOSTS, Script, descriptor, worker
from tests.test_watch import held, index_of, scripted_daemon
from yoi_registryd.sources.base import Reporter
from yoi_registryd.vocabulary import worker_workspace

WAIT = "60s"
ANSWERED_WITHIN_S = 20.0
"""Far below the wait: an answer this soon was not held."""
VARYING = ("x-request-id", "date", "x-registry-index")


def comparable(response: httpx.Response, target: str, stand_in: str) -> tuple[object, ...]:
    """Status, headers and body, with the asked-for id written as ``stand_in``."""
    headers = sorted(
        (k, v.replace(target, stand_in)) for k, v in response.headers.items() if k not in VARYING
    )
    return (
        response.status_code,
        headers,
        response.content.replace(target.encode(), stand_in.encode()),
    )


async def test_a_blocking_query_on_a_hidden_target_answers_as_a_missing_one_at_once(
    start_daemon: StartDaemon, nursery: trio.Nursery
) -> None:
    """A quiet registry (nothing changes unless the test says so), so that a held query
    would be held for the whole wait: a runtime bound to workspace alpha (with its host and
    worker) and, in a runtime every workspace sees, a worker of alpha; asked for by beta."""
    bound = embedded_source_toml(
        runtime_id="emb-alpha",
        factory="tests.embedded_plugins:ThirdPartyRuntime",
        options={"key": f"watch-{secrets.token_hex(4)}", "workers": ["e1"]},
        workspaces=["alpha"],
    )
    d = await start_daemon(bound)
    script = Script("rt")
    await d.daemon.supervisor.start(nursery, script.spec())
    await observe(script, a1="active", b1="active")

    async def quiet() -> bool:
        hosts = (await d.get_json("/api/hosts"))["items"]
        return {h["runtime_id"] for h in hosts} == {"emb-alpha", "rt"} and (
            await states(d.client, "alpha")
        )[1] == {"a1": "active"}

    await wait_for(quiet, message="both runtimes observed")
    hosts = (await d.get_json("/api/hosts"))["items"]
    alpha_host = next(h["host_id"] for h in hosts if h["runtime_id"] == "emb-alpha")
    beta = {"X-Yoi-Workspace": "beta"}
    cases = [
        # (path with the hidden id, the hidden id, a missing id of the same length)
        ("/api/runtimes/rt/workers/a1", "a1", "a9"),
        ("/api/runtimes/emb-alpha", "emb-alpha", "emb-omega"),
        ("/api/runtimes/emb-alpha/workers", "emb-alpha", "emb-omega"),
        ("/api/runtimes/emb-alpha/workers/e1", "emb-alpha", "emb-omega"),
        (f"/api/hosts/{alpha_host}/workers", alpha_host, alpha_host[:-1] + "_"),
    ]
    index = index_of(await d.client.get("/api/runtimes", headers=beta))
    for path, hidden, missing in cases:
        answers = []
        for target in (hidden, missing):
            blocking = {"index": str(index), "wait": WAIT}
            asked = path.replace(hidden, target)
            with trio.fail_after(ANSWERED_WITHIN_S):
                answer = await d.client.get(asked, headers=beta, params=blocking)
            plain = await d.client.get(asked, headers=beta)
            assert answer.status_code == 404, (path, target, answer.text)
            assert comparable(answer, target, "ID") == comparable(plain, target, "ID")
            answers.append(comparable(answer, target, "ID"))
        assert answers[0] == answers[1], path
    assert d.daemon.api.watches.held == 0
    assert d.daemon.actor.snapshot.revision == index  # nothing changed meanwhile


def workspace_worker(runtime_id: str, worker_id: str, workspace: str, state: str) -> object:
    record = worker(runtime_id, worker_id, state)
    info = worker_workspace("embedded_worker_runtime", workspace)
    return msgspec.structs.replace(record, workspace=info)


async def observe(script: Script, **states: str) -> None:
    """A full snapshot: worker ``aN`` belongs to workspace alpha, ``bN`` to beta."""
    workers = tuple(
        workspace_worker(script.runtime_id, wid, "alpha" if wid[0] == "a" else "beta", state)
        for wid, state in states.items()
    )

    async def step(reporter: Reporter) -> None:
        await reporter.observed(descriptor(script.label), HOSTS, workers)  # type: ignore[arg-type]

    await script.step(step)


async def states(client: httpx.AsyncClient, workspace: str) -> tuple[int, dict[str, str]]:
    response = await client.get("/api/workers", headers={"X-Yoi-Workspace": workspace})
    assert response.status_code == 200
    items = response.json()["items"]
    return index_of(response), {
        w["worker_id"]: w["state"] for w in items if w["runtime_id"] == "rt"
    }


@pytest.mark.parametrize("path", ["/api/workers", "/api/runtimes/rt/workers"])
async def test_another_workspaces_change_does_not_wake_a_held_query(
    start_daemon: StartDaemon, nursery: trio.Nursery, path: str
) -> None:
    d, (script,) = await scripted_daemon(start_daemon, nursery, "rt")
    await observe(script, a1="active", b1="active")
    alpha = {"X-Yoi-Workspace": "alpha"}

    async def listed() -> bool:
        return (await states(d.client, "alpha"))[1] == {"a1": "active"}

    await wait_for(listed, message="alpha's worker")
    index = index_of(await d.client.get(path, headers=alpha))
    answers: list[httpx.Response] = []

    async def watch() -> None:
        params = {"index": str(index), "wait": WAIT}
        answers.append(await d.client.get(path, headers=alpha, params=params))

    async with trio.open_nursery() as inner:
        inner.start_soon(watch)
        await held(d, 1)
        # Beta's worker changes twice: two new revisions, beta sees them, alpha's body is
        # the same. The held query was woken by each revision and went back to waiting.
        for state in ("idle", "active"):
            await observe(script, a1="active", b1=state)

            async def beta_sees(state: str = state) -> bool:
                at, seen = await states(d.client, "beta")
                return at > index and seen == {"b1": state}

            await wait_for(beta_sees, message=f"beta's worker {state}")
            assert (await d.client.get(path, headers=alpha)).status_code == 200
            assert answers == [] and d.daemon.api.watches.held == 1
        # Alpha's own worker changes: that wakes it, with the change.
        await observe(script, a1="idle", b1="active")
        with trio.fail_after(ANSWERED_WITHIN_S):
            await wait_for(lambda: bool(answers), deadline_s=ANSWERED_WITHIN_S)
    (answer,) = answers
    assert answer.status_code == 200
    assert index_of(answer) > index
    assert [(w["worker_id"], w["state"]) for w in answer.json()["items"]] == [("a1", "idle")]


async def test_a_revision_that_leaves_the_body_unchanged_does_not_wake(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A runtime-scoped watch: the same workers observed again (a new revision, the runtime's
    own revision too when its last_seen_at moves) keeps the query held if its body is equal."""
    d, (script,) = await scripted_daemon(start_daemon, nursery, "rt")
    first = await d.client.get("/api/runtimes/rt/workers")
    answers: list[httpx.Response] = []

    async def watch() -> None:
        params = {"index": str(index_of(first)), "wait": WAIT}
        answers.append(await d.client.get("/api/runtimes/rt/workers", params=params))

    async with trio.open_nursery() as inner:
        inner.start_soon(watch)
        await held(d, 1)
        before = d.daemon.actor.snapshot.revision
        await script.observe("w0")  # the same worker, observed again
        await script.observe("w0")
        await wait_for(lambda: d.daemon.actor.snapshot.revision > before, message="a revision")
        assert (await d.client.get("/api/runtimes/rt/workers")).content == first.content
        assert answers == [] and d.daemon.api.watches.held == 1
        await script.observe("w0", "w1")
        await wait_for(lambda: bool(answers), deadline_s=ANSWERED_WITHIN_S)
    assert [w["worker_id"] for w in answers[0].json()["items"]] == ["w0", "w1"]
