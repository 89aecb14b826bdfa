"""Blocking queries (?index=&wait=), ETags, and the bound on held requests, over real HTTP."""

from __future__ import annotations

import functools
import json
import random
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import RunningDaemon, StartDaemon, local_source_toml, wait_for
from tests.scripted_source import Script
from yoi_registryd.errors import InvalidQuery
from yoi_registryd.http.watch import JITTER_FRACTION, MAX_WAIT, split_watch_query

NO_SOURCES = "sources = []\n"


def index_of(response: httpx.Response) -> int:
    return int(response.headers["x-registry-index"])


async def scripted_daemon(
    start_daemon: StartDaemon, nursery: trio.Nursery, *runtime_ids: str
) -> tuple[RunningDaemon, list[Script]]:
    """A daemon whose only sources are scripted: nothing changes unless the test says so."""
    d = await start_daemon(NO_SOURCES)
    scripts = []
    for rid in runtime_ids:
        script = Script(rid)
        await d.daemon.supervisor.start(nursery, script.spec())
        await script.observe("w0")
        scripts.append(script)

    def all_observed() -> bool:
        runtimes = d.daemon.actor.snapshot.runtimes
        return all(rid in runtimes and runtimes[rid].stats.observed for rid in runtime_ids)

    await wait_for(all_observed)
    return d, scripts


async def held(d: RunningDaemon, n: int) -> None:
    await wait_for(lambda: d.daemon.api.watches.held == n, message=f"{n} held requests")


async def test_a_held_request_answers_within_a_second_of_a_change(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, nursery: trio.Nursery
) -> None:
    """The local source and a real file change: the watcher sees it right after publication."""
    d = await start_daemon(local_source_toml(data_dir, runtime_dir))
    await d.listed_workers()
    arrivals: list[tuple[float, int, set[str]]] = []

    async def watcher() -> None:
        response = await d.client.get("/api/workers")
        while True:
            response = await d.client.get(
                "/api/workers", params={"index": index_of(response), "wait": "30s"}
            )
            assert response.status_code == 200
            labels = {w["label"] for w in response.json()["items"]}
            arrivals.append((trio.current_time(), index_of(response), labels))
            if "fresh-worker" in labels:
                return

    async with trio.open_nursery() as watchers:
        watchers.start_soon(watcher)
        await held(d, 1)
        pod = data_dir / "pods" / "fresh-worker"
        shutil.copytree(data_dir / "pods" / "idle-helper", pod)
        metadata = json.loads((pod / "metadata.json").read_text())
        metadata["worker_name"] = "fresh-worker"
        (pod / "metadata.json").write_text(json.dumps(metadata))
        # The moment the registry publishes the new worker:
        actor = d.daemon.actor
        revision = actor.snapshot.revision
        with trio.fail_after(10):
            while True:
                snapshot = await actor.wait_for_change(revision)
                revision = snapshot.revision
                if any(
                    w.label == "fresh-worker"
                    for e in snapshot.runtimes.values()
                    for w in e.workers.values()
                ):
                    published = trio.current_time()
                    break
    arrived, answered_index, _ = arrivals[-1]
    assert answered_index >= revision
    assert arrived - published < 1.0, arrived - published


async def test_a_held_request_answers_at_the_wait_limit_without_a_change(
    start_daemon: StartDaemon, nursery: trio.Nursery
) -> None:
    d, _ = await scripted_daemon(start_daemon, nursery, "quiet")
    first = await d.client.get("/api/runtimes")
    index = index_of(first)
    for wait, seconds in (("300ms", 0.3), ("0.3", 0.3), ("250ms", 0.25)):
        started = trio.current_time()
        response = await d.client.get("/api/runtimes", params={"index": index, "wait": wait})
        elapsed = trio.current_time() - started
        assert response.status_code == 200
        assert seconds <= elapsed <= seconds * (1 + JITTER_FRACTION) + 0.5, (wait, elapsed)
        assert index_of(response) == index
        assert response.content == first.content


async def test_an_index_ahead_of_the_registry_answers_at_once(
    start_daemon: StartDaemon, nursery: trio.Nursery
) -> None:
    """A client that watched a daemon before it restarted holds a larger index."""
    d, _ = await scripted_daemon(start_daemon, nursery, "quiet")
    current = index_of(await d.client.get("/api/runtimes"))
    with trio.fail_after(5):
        response = await d.client.get(
            "/api/runtimes", params={"index": current + 1000, "wait": "60s"}
        )
    assert response.status_code == 200
    assert index_of(response) == current


async def test_an_index_behind_the_view_answers_at_once(
    start_daemon: StartDaemon, nursery: trio.Nursery
) -> None:
    """The change happened between two of the watcher's requests: nothing is missed."""
    d, (script,) = await scripted_daemon(start_daemon, nursery, "rt")
    before = await d.client.get("/api/runtimes/rt/workers")
    index = index_of(before)
    await script.observe("w0", "w1")
    await wait_for(lambda: d.daemon.actor.snapshot.revision > index)
    with trio.fail_after(5):
        response = await d.client.get(
            "/api/runtimes/rt/workers", params={"index": index, "wait": "60s"}
        )
    assert index_of(response) > index
    assert {w["worker_id"] for w in response.json()["items"]} == {"w0", "w1"}


async def test_a_watcher_never_misses_a_change(
    start_daemon: StartDaemon, nursery: trio.Nursery
) -> None:
    d, (script,) = await scripted_daemon(start_daemon, nursery, "rt")
    changes = 40
    seen: list[int] = []

    async def watcher() -> None:
        response = await d.client.get("/api/runtimes/rt/workers")
        while True:
            count = len(response.json()["items"])
            if not seen or seen[-1] != count:
                seen.append(count)
            if count == changes + 1:
                return
            response = await d.client.get(
                "/api/runtimes/rt/workers", params={"index": index_of(response), "wait": "30s"}
            )

    rng = random.Random(7)
    with trio.fail_after(20):
        async with trio.open_nursery() as inner:
            inner.start_soon(watcher)
            for n in range(1, changes + 1):
                await script.observe(*(f"w{i}" for i in range(n + 1)))
                # Vary the timing: sometimes a burst, sometimes a pause between changes.
                await trio.sleep(rng.choice([0, 0, 0.001, 0.01]))
    assert seen == sorted(seen)
    assert seen[-1] == changes + 1


async def test_a_detail_watch_wakes_only_for_its_runtime(
    start_daemon: StartDaemon, nursery: trio.Nursery
) -> None:
    d, (a, b) = await scripted_daemon(start_daemon, nursery, "a", "b")
    start = await d.client.get("/api/runtimes/a/workers")
    index = index_of(start)
    answers: list[httpx.Response] = []

    async def watch_a() -> None:
        answers.append(
            await d.client.get("/api/runtimes/a/workers", params={"index": index, "wait": "30s"})
        )

    async with trio.open_nursery() as inner:
        inner.start_soon(watch_a)
        await held(d, 1)
        await b.observe("b1", "b2")
        await wait_for(lambda: d.daemon.actor.snapshot.revision > index)
        b_revision = d.daemon.actor.snapshot.revision
        await a.observe("a1")
    (answer,) = answers
    # It slept through b's change and answered with a's.
    assert index_of(answer) > b_revision
    assert [w["worker_id"] for w in answer.json()["items"]] == ["a1"]


async def test_a_removed_runtime_ends_its_watch_with_404(
    start_daemon: StartDaemon, nursery: trio.Nursery
) -> None:
    d, _ = await scripted_daemon(start_daemon, nursery, "gone")
    index = index_of(await d.client.get("/api/runtimes/gone"))
    answers: list[httpx.Response] = []

    async def watch() -> None:
        answers.append(
            await d.client.get("/api/runtimes/gone", params={"index": index, "wait": "30s"})
        )

    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            inner.start_soon(watch)
            await held(d, 1)
            await d.daemon.supervisor.stop("gone")
    assert answers[0].status_code == 404
    assert answers[0].json()["code"] == "unknown_runtime"


async def test_many_concurrent_watchers_all_see_one_change(
    start_daemon: StartDaemon, nursery: trio.Nursery
) -> None:
    d, (script,) = await scripted_daemon(start_daemon, nursery, "rt")
    watchers = 200
    index = index_of(await d.client.get("/api/workers"))
    limits = httpx.Limits(max_connections=watchers + 10, max_keepalive_connections=watchers + 10)
    answers: list[tuple[float, httpx.Response]] = []
    async with httpx.AsyncClient(base_url=d.base_url, limits=limits, timeout=30) as client:

        async def watch() -> None:
            response = await client.get("/api/workers", params={"index": index, "wait": "60s"})
            answers.append((trio.current_time(), response))

        async with trio.open_nursery() as inner:
            for _ in range(watchers):
                inner.start_soon(watch)
            await held(d, watchers)
            changed = trio.current_time()
            await script.observe("w0", "w1")
    assert len(answers) == watchers
    assert all(r.status_code == 200 and index_of(r) > index for _, r in answers)
    bodies = {r.content for _, r in answers}
    assert len(bodies) == 1
    # A deadline for liveness, not a latency figure (the benchmarks measure that): generous
    # enough for a loaded 2-core machine running the suite on both cores.
    latest = max(t for t, _ in answers) - changed
    assert latest < 15.0, latest
    assert d.daemon.api.watches.held == 0


async def test_held_requests_are_bounded(start_daemon: StartDaemon, nursery: trio.Nursery) -> None:
    d, _ = await scripted_daemon(start_daemon, nursery, "rt")
    d.daemon.api.watches.max_held = 3
    index = index_of(await d.client.get("/api/runtimes"))
    params = {"index": str(index), "wait": "30s"}
    limits = httpx.Limits(max_connections=10)
    async with (
        httpx.AsyncClient(base_url=d.base_url, limits=limits, timeout=30) as client,
        trio.open_nursery() as inner,
    ):
        for _ in range(3):
            inner.start_soon(functools.partial(client.get, "/api/runtimes", params=params))
        await held(d, 3)
        refused = await client.get("/api/runtimes", params=params)
        assert refused.status_code == 429
        assert refused.json()["code"] == "too_many_watches"
        assert int(refused.headers["retry-after"]) >= 1
        # Requests that do not block are still served.
        assert (await client.get("/api/runtimes")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert "yoi_registryd_http_held_requests 3.0" in metrics
        assert "yoi_registryd_http_held_requests_rejected_total 1.0" in metrics
        inner.cancel_scope.cancel()


async def test_shutdown_answers_held_requests_at_once(
    start_daemon: StartDaemon, nursery: trio.Nursery
) -> None:
    d, _ = await scripted_daemon(start_daemon, nursery, "rt")
    index = index_of(await d.client.get("/api/runtimes"))
    answers: list[httpx.Response] = []

    async def watch() -> None:
        answers.append(await d.client.get("/api/runtimes", params={"index": index, "wait": "5m"}))

    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            inner.start_soon(watch)
            await held(d, 1)
            d.daemon.shutdown.set()
    assert answers[0].status_code == 200
    assert index_of(answers[0]) == index


async def test_etag_and_if_none_match(start_daemon: StartDaemon, nursery: trio.Nursery) -> None:
    d, (script,) = await scripted_daemon(start_daemon, nursery, "rt")
    for path in ("/api/runtimes", "/api/runtimes/rt", "/api/workers", "/api/sources"):
        first = await d.client.get(path)
        etag = first.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"')
        for header in (etag, f"W/{etag}", '"other", ' + etag, "*"):
            again = await d.client.get(path, headers={"If-None-Match": header})
            assert again.status_code == 304, (path, header)
            assert again.content == b""
            assert again.headers["etag"] == etag
            assert index_of(again) >= index_of(first)
        other = await d.client.get(path, headers={"If-None-Match": '"other"'})
        assert other.status_code == 200 and other.content == first.content

    before = await d.client.get("/api/runtimes/rt/workers")
    await script.observe("w0", "w9")
    await wait_for(lambda: d.daemon.actor.snapshot.revision > index_of(before))
    after = await d.client.get(
        "/api/runtimes/rt/workers", headers={"If-None-Match": before.headers["etag"]}
    )
    assert after.status_code == 200
    assert after.headers["etag"] != before.headers["etag"]


@pytest.mark.parametrize(
    "query",
    [
        "index=-1",
        "index=abc",
        "index=1.5",
        "index=99999999999999999999999",
        "wait=10s",
        "index=1&wait=soon",
        "index=1&wait=-1s",
        "index=1&index=2",
        "index=1&wait=1s&wait=2s",
        "index=1&bogus=1",
    ],
)
async def test_bad_watch_parameters_are_typed_errors(start_daemon: StartDaemon, query: str) -> None:
    d = await start_daemon(NO_SOURCES)
    for path in ("/api/runtimes", "/api/runtimes/rt", "/api/sources"):
        body: Any = await d.get_json(f"{path}?{query}", status=400)
        assert body["code"] == "invalid_query"


def test_waits_are_capped() -> None:
    watch, rest = split_watch_query([("index", "3"), ("wait", "1h"), ("limit", "5")])
    assert watch is not None and watch.index == 3 and watch.wait == MAX_WAIT
    assert rest == [("limit", "5")]
    watch, _ = split_watch_query([("index", "3")])
    assert watch is not None and watch.wait == MAX_WAIT
    assert split_watch_query([("limit", "5")]) == (None, [("limit", "5")])
    with pytest.raises(InvalidQuery):
        split_watch_query([("wait", "1s")])


async def test_a_client_that_leaves_frees_its_held_slot(
    start_daemon: StartDaemon, nursery: trio.Nursery
) -> None:
    d, _ = await scripted_daemon(start_daemon, nursery, "rt")
    index = index_of(await d.client.get("/api/runtimes"))
    async with httpx.AsyncClient(base_url=d.base_url) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.get(
                "/api/runtimes", params={"index": index, "wait": "60s"}, timeout=0.5
            )
    await held(d, 0)
    metrics = (await d.client.get("/metrics")).text
    assert 'route="/api/runtimes",status="200"} 1.0' in metrics  # only the plain request
