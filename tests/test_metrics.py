"""/metrics: Prometheus text from the live daemon, checked by value and by promtool."""

from __future__ import annotations

import shutil
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningDaemon, StartDaemon, local_source_toml, wait_for
from tests.scripted_source import Script, failing_spec
from yoi_registryd import __version__

LOCAL = {"runtime_id": "local-worker-runtime", "source_kind": "local_compatibility"}
FIXTURE_SECRETS = (
    "01973a4e-8c1f-7b2a-9d3e-4f5a6b7c8d9e",  # a session id in the coder fixture
    "metadata.json",
    "/run/user/1000/yoi",
    "/srv/yoi",
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(d: RunningDaemon, accept: str | None = None) -> tuple[str, Samples, int]:
    headers = {"Accept": accept} if accept else {}
    response = await d.client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.text, samples, int(response.headers["x-registry-index"])


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def with_prefix(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def test_runtime_and_registry_metrics_describe_the_snapshot(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await start_daemon(local_source_toml(data_dir, runtime_dir))
    workers = await d.listed_workers()
    text, samples, revision = await scrape(d)

    assert value(samples, "yoi_registryd_runtime_up", **LOCAL) == 1
    assert value(samples, "yoi_registryd_runtime_status", **LOCAL, status="available") == 1
    assert value(samples, "yoi_registryd_runtime_status", **LOCAL, status="stale") == 0
    assert value(samples, "yoi_registryd_runtime_observations_total", **LOCAL) >= 1
    assert value(samples, "yoi_registryd_runtime_consecutive_failures", **LOCAL) == 0
    assert value(samples, "yoi_registryd_runtime_source_restarts_total", **LOCAL) == 0
    runtime = await d.get_json("/api/runtimes/local-worker-runtime")
    last_seen = datetime.fromisoformat(runtime["last_seen_at"]).timestamp()
    last_success = value(samples, "yoi_registryd_runtime_last_success_timestamp_seconds", **LOCAL)
    assert last_success == pytest.approx(last_seen, abs=60)

    by_state = Counter(w["registry_state"] for w in workers)
    exported = {
        dict(labels)["state"]: v
        for labels, v in with_prefix(samples, "yoi_registryd_runtime_workers").items()
    }
    assert exported == by_state

    assert value(samples, "yoi_registryd_registry_revision") == revision
    assert value(samples, "yoi_registryd_registry_runtimes") == 1
    assert value(samples, "yoi_registryd_registry_channel_capacity") == 1024
    assert value(samples, "yoi_registryd_registry_channel_depth") >= 0
    assert value(samples, "yoi_registryd_registry_channel_peak") >= 1
    assert value(samples, "yoi_registryd_registry_snapshot_publish_duration_seconds_count") >= 1
    assert value(samples, "yoi_registryd_config_last_reload_successful") == 1
    assert value(samples, "yoi_registryd_build_info", version=__version__) == 1
    assert "process_resident_memory_bytes" in text

    # Nothing identifying but ids and enums: no path, session id or fixture secret.
    for secret in (str(data_dir), str(runtime_dir), *FIXTURE_SECRETS):
        assert secret not in text, secret


async def test_source_errors_durations_and_restarts_are_counted(
    start_daemon: StartDaemon, nursery: trio.Nursery
) -> None:
    d = await start_daemon('sources = []\n[supervisor]\nbackoff_initial = "20ms"\n')
    script = Script("scripted")
    await d.daemon.supervisor.start(nursery, script.spec())
    await script.observe("w1", "w2", state="idle", duration=0.25)
    await script.fail("probe_timeout", "the runtime did not answer in time", duration=2.0)
    await script.fail("probe_timeout", "the runtime did not answer in time")
    await script.fail("bad answer!", "an odd code is bounded to 'other'")
    await d.daemon.supervisor.start(nursery, failing_spec("unreachable", stale_after=30))
    scripted = {"runtime_id": "scripted", "source_kind": "embedded_worker_runtime"}
    unreachable = {"runtime_id": "unreachable", "source_kind": "embedded_worker_runtime"}

    async def counted() -> bool:
        _, samples, _ = await scrape(d)
        errors = with_prefix(samples, "yoi_registryd_runtime_observation_errors_total")
        restarts = samples.get(
            ("yoi_registryd_runtime_source_restarts_total", frozenset(unreachable.items())), 0
        )
        return sum(errors.values()) >= 4 and restarts >= 1

    await wait_for(counted)
    _, samples, _ = await scrape(d)
    errors = "yoi_registryd_runtime_observation_errors_total"
    assert value(samples, errors, **scripted, code="probe_timeout") == 2
    assert value(samples, errors, **scripted, code="other") == 1
    assert value(samples, errors, **unreachable, code="runtime_unreachable") >= 1
    # The last reported duration (a failure without one keeps the one before).
    duration = "yoi_registryd_runtime_last_observation_duration_seconds"
    assert value(samples, duration, **scripted) == 2.0
    assert value(samples, "yoi_registryd_runtime_up", **scripted) == 0
    assert value(samples, "yoi_registryd_runtime_consecutive_failures", **scripted) == 3
    assert value(samples, "yoi_registryd_runtime_workers", **scripted, state="idle") == 2
    assert value(samples, "yoi_registryd_runtime_up", **unreachable) == 0
    assert value(samples, "yoi_registryd_runtime_status", **unreachable, status="unavailable") == 1


async def test_http_requests_are_labelled_by_route_template(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await start_daemon(local_source_toml(data_dir, runtime_dir))
    workers = await d.listed_workers()
    wid = workers[0]["worker_id"]
    for _ in range(3):
        await d.get_json(f"/api/runtimes/local-worker-runtime/workers/{wid}")
    await d.get_json("/api/runtimes/no-such-runtime", status=404)
    await d.get_json("/api/nothing/here", status=404)
    await d.get_json("/api/runtimes/a%2Fb", status=400)  # refused before routing
    text, samples, _ = await scrape(d)

    requests = "yoi_registryd_http_requests_total"
    detail = "/api/runtimes/<runtime_id>/workers/<worker_id>"
    assert value(samples, requests, route=detail, method="GET", status="200") == 3
    assert (
        value(samples, requests, route="/api/runtimes/<runtime_id>", method="GET", status="404")
        == 1
    )
    assert value(samples, requests, route="unmatched", method="GET", status="404") == 1
    assert value(samples, requests, route="unmatched", method="GET", status="400") == 1
    count = "yoi_registryd_http_request_duration_seconds_count"
    assert value(samples, count, route=detail, method="GET") == 3
    bucket = "yoi_registryd_http_request_duration_seconds_bucket"
    assert value(samples, bucket, route=detail, method="GET", le="+Inf") == 3
    # Raw paths and ids never become label values.
    routes = {dict(labels).get("route") for labels in with_prefix(samples, requests)}
    assert all(r is not None and (r == "unmatched" or r.startswith("/")) for r in routes)
    assert wid not in text
    assert "no-such-runtime" not in text and "nothing" not in text


async def test_each_daemon_has_its_own_registry(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    first = await start_daemon(local_source_toml(data_dir, runtime_dir))
    second = await start_daemon("sources = []\n")
    for _ in range(5):
        await first.get_json("/api/runtimes")
    _, first_samples, _ = await scrape(first)
    _, second_samples, _ = await scrape(second)
    key = {"route": "/api/runtimes", "method": "GET", "status": "200"}
    assert value(first_samples, "yoi_registryd_http_requests_total", **key) == 5
    assert ("yoi_registryd_http_requests_total", frozenset(key.items())) not in second_samples
    assert value(second_samples, "yoi_registryd_registry_runtimes") == 0


async def test_openmetrics_is_negotiated(start_daemon: StartDaemon) -> None:
    d = await start_daemon("sources = []\n")
    response = await d.client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


async def test_promtool_finds_no_problem_in_a_scrape_under_load(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, nursery: trio.Nursery
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian/Ubuntu package: prometheus)")
    d = await start_daemon(local_source_toml(data_dir, runtime_dir))
    await d.listed_workers()
    await d.daemon.supervisor.start(nursery, failing_spec("unreachable", stale_after=30))
    index = (await d.client.get("/api/runtimes")).headers["x-registry-index"]
    scrapes: list[str] = []

    async def load(path: str, n: int) -> None:
        for _ in range(n):
            await d.client.get(path)

    async with trio.open_nursery() as load_nursery:
        for path in (
            "/api/workers",
            "/api/runtimes",
            "/api/hosts",
            "/api/sources",
            "/api/runtimes/nope",
            "/readyz",
            "/nope",
            f"/api/runtimes?index={index}&wait=200ms",
        ):
            load_nursery.start_soon(load, path, 20)
        for _ in range(5):
            scrapes.append((await scrape(d))[0])
    scrapes.append((await scrape(d))[0])
    for text in scrapes:
        result = await trio.run_process(
            [promtool, "check", "metrics"],
            stdin=text.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        problems = (result.stdout + result.stderr).decode()
        assert result.returncode == 0 and not problems.strip(), problems
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(scrapes[-1])
        for s in family.samples
    }
    key = {"route": "/api/runtimes", "method": "GET", "status": "200"}
    assert value(samples, "yoi_registryd_http_requests_total", **key) >= 40
