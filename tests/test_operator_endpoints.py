"""Operator endpoints need an operator's token once clients exist (issue 13, item 4).

Before, ``/metrics`` listed every runtime id and its worker counts without a token, also with
clients and workspaces configured, so hiding a runtime by 404 was moot. Now ``/metrics``,
``/api/sources``, ``/readyz?verbose`` and the status page's data need the token of a client
allowed every workspace (``["*"]``) or marked ``operator = true``; ``/livez``, ``/healthz``
and plain ``/readyz`` stay open for probes, and the status page itself loads (without data).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import RunningDaemon, StartDaemon, wait_for
from tests.daemon_process import free_port
from tests.embedded_plugins import embedded_source_toml
from tests.test_policy import sha256_hex

HIDDEN_RUNTIME = "emb-secret-beta"


class Tokens:
    def __init__(self) -> None:
        self.alpha = secrets.token_urlsafe(24)
        self.ops = secrets.token_urlsafe(24)
        self.alpha_operator = secrets.token_urlsafe(24)


def clients_toml(tokens: Tokens, tmp_path: Path) -> str:
    return (
        hidden_runtime_toml(workspaces=["beta"])
        + f"""
[[clients]]
name = "alpha-backend"
token_sha256 = "{sha256_hex(tokens.alpha)}"
workspaces = ["alpha"]
[[clients]]
name = "ops"
token_sha256 = "{sha256_hex(tokens.ops)}"
workspaces = ["*"]
[[clients]]
name = "alpha-operator"
token_sha256 = "{sha256_hex(tokens.alpha_operator)}"
workspaces = ["alpha"]
operator = true
[audit]
path = "{tmp_path / "audit.jsonl"}"
"""
    )


def hidden_runtime_toml(**extra: object) -> str:
    """An embedded runtime with one worker: bound to beta, hidden from alpha's client."""
    return embedded_source_toml(
        runtime_id=HIDDEN_RUNTIME,
        factory="tests.embedded_plugins:ThirdPartyRuntime",
        options={"key": f"op-{secrets.token_hex(4)}", "workers": ["b1"]},
        **extra,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def started(start_daemon: StartDaemon, tmp_path: Path) -> tuple[RunningDaemon, Tokens]:
    tokens = Tokens()
    d = await start_daemon(clients_toml(tokens, tmp_path))

    async def observed() -> bool:
        runtimes = d.daemon.actor.snapshot.runtimes
        return HIDDEN_RUNTIME in runtimes and runtimes[HIDDEN_RUNTIME].stats.observed

    await wait_for(observed, message="the runtime observed")
    return d, tokens


@pytest.mark.parametrize("path", ["/metrics", "/api/sources", "/readyz?verbose"])
async def test_operator_endpoints_refuse_everyone_but_operators(
    start_daemon: StartDaemon, tmp_path: Path, path: str
) -> None:
    d, t = await started(start_daemon, tmp_path)
    refusals = [
        (None, 401, "unauthenticated"),
        ("not-a-token", 401, "unauthenticated"),
        (t.alpha, 403, "forbidden"),
    ]
    for token, status, code in refusals:
        headers = bearer(token) if token is not None else {}
        response = await d.client.get(path, headers=headers)
        assert response.status_code == status, (path, token, response.text)
        assert response.json()["code"] == code
        assert HIDDEN_RUNTIME not in response.text
    for token in (t.ops, t.alpha_operator):
        response = await d.client.get(path, headers=bearer(token))
        assert response.status_code in (200, 503), (path, response.text)  # 503: not ready
        # /api/sources is filtered by the acting workspace, as ever: the operator bound to
        # alpha acts for alpha there. /metrics and the probe's detail concern the daemon.
        if not (path == "/api/sources" and token == t.alpha_operator):
            assert HIDDEN_RUNTIME in response.text, path


async def test_probes_stay_open_and_the_status_page_loads_without_data(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    d, t = await started(start_daemon, tmp_path)
    for path in ("/livez", "/healthz", "/readyz", "/livez?verbose", "/readyz?exclude=x"):
        response = await d.client.get(path)
        assert response.status_code in (200, 503), (path, response.text)
        assert HIDDEN_RUNTIME not in response.text, path
    for headers in ({}, bearer(t.alpha), bearer(t.ops)):
        page = await d.client.get("/", headers=headers)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert HIDDEN_RUNTIME not in page.text
        assert '<script type="application/json" id="initial">{"auth":"token"}</script>' in page.text
    # What the page then asks for, with an operator's token, has the data.
    sources = await d.get_json("/api/sources", headers=bearer(t.ops))
    assert HIDDEN_RUNTIME in {s["runtime_id"] for s in sources["items"]}


async def test_without_clients_the_operator_endpoints_stay_as_they_were(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    d = await start_daemon(
        hidden_runtime_toml() + f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n'
    )

    async def listed() -> bool:
        return HIDDEN_RUNTIME in (await d.client.get("/metrics")).text

    await wait_for(listed, message="the runtime in /metrics")
    for path in ("/api/sources", "/readyz?verbose", "/"):
        response = await d.client.get(path)
        assert response.status_code in (200, 503), (path, response.text)
        assert HIDDEN_RUNTIME in response.text, path


async def test_prometheus_scrapes_with_the_documented_credentials_file(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """The scrape config of docs/observability.md, run by the real Prometheus."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus is not installed (Debian/Ubuntu package: prometheus)")
    d, t = await started(start_daemon, tmp_path)
    credentials = tmp_path / "registry.token"
    credentials.write_text(t.ops + "\n")
    credentials.chmod(0o600)
    target = d.base_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 200ms
  scrape_timeout: 150ms
scrape_configs:
  - job_name: yoi-registryd
    authorization:
      credentials_file: {credentials}
    static_configs:
      - targets: ["{target}"]
"""
    )
    port = free_port()
    process = await trio.lowlevel.open_process(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:

            async def scraped() -> bool:
                try:
                    response = await api.get(
                        "/api/v1/query", params={"query": 'count({job="yoi-registryd"})'}
                    )
                except httpx.TransportError:
                    return False  # not listening yet
                if response.status_code != 200:
                    return False  # listening, not ready yet (503 and a text body)
                result = response.json()["data"]["result"]
                return bool(result) and float(result[0]["value"][1]) > 10

            await wait_for(scraped, deadline_s=30, interval=0.2, message="a scrape stored")
            targets = (await api.get("/api/v1/targets")).json()["data"]["activeTargets"]
            assert [x["health"] for x in targets] == ["up"], targets
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
        if process.poll() is None:
            process.kill()
            await process.wait()
