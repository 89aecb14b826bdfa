"""GET /: the self-contained status page, its safety, and a real browser rendering it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import trio

from tests import browser
from tests.conftest import RunningDaemon, StartDaemon, local_source_toml, wait_for
from tests.scripted_source import Script, failing_spec
from tests.unwell_daemon import OPERATOR_TOKEN, unwell_daemon

FIXTURE_SECRETS = (
    "01973a4e-8c1f-7b2a-9d3e-4f5a6b7c8d9e",  # session id in the coder fixture
    "01973a4e-9a0b-7c1d-8e2f-3a4b5c6d7e8f",  # segment id in the coder fixture
    "metadata.json",
    "/run/user/1000/yoi",
    "/srv/yoi",
    "coder.lua",
)
HOSTILE_LABEL = "</script><script>alert(1)</script>&<b>"
SCREENSHOT_ENV = "YOI_STATUS_PAGE_SCREENSHOT"
"""Set to a file path to keep the screenshot (docs/status-page.png was made this way)."""


def embedded(page: str) -> dict[str, object]:
    match = re.search(r'<script type="application/json" id="initial">(.*?)</script>', page, re.S)
    assert match is not None
    data: dict[str, object] = json.loads(match.group(1))
    return data


async def demo_daemon(
    start_daemon: StartDaemon,
    data_dir: Path,
    runtime_dir: Path,
    nursery: trio.Nursery,
    label: str = HOSTILE_LABEL,
) -> tuple[RunningDaemon, Script]:
    """The fixture workers, a scripted runtime (by default with a hostile label), and a
    source that keeps failing."""
    d = await start_daemon(local_source_toml(data_dir, runtime_dir))
    script = Script("scripted-runtime", label=label)
    await d.daemon.supervisor.start(nursery, script.spec())
    await script.observe("builder", "tester", "planner", state="idle", duration=0.012)
    await d.daemon.supervisor.start(nursery, failing_spec("unreachable-runtime", stale_after=60))

    async def settled() -> bool:
        items = (await d.get_json("/api/sources"))["items"]
        by_id = {i["runtime_id"]: i for i in items}
        return (
            len(items) == 3
            and by_id["local-worker-runtime"]["worker_count"] > 0
            and by_id["scripted-runtime"]["worker_count"] == 3
            and by_id["unreachable-runtime"]["restarts"] >= 1
        )

    await wait_for(settled)
    return d, script


async def test_the_page_is_self_contained_and_embeds_only_what_the_api_serves(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, nursery: trio.Nursery
) -> None:
    d, _ = await demo_daemon(start_daemon, data_dir, runtime_dir, nursery)
    response = await d.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text

    # No external asset: nothing is loaded from anywhere but data: URLs and this origin's API.
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", page)
    assert "@import" not in page and "url(" not in page

    # The CSP allows exactly the inline script and style that ship in the page.
    csp = response.headers["content-security-policy"]
    for tag in ("script", "style"):
        (inline,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"

    # The embedded data is /api/sources, and a hostile label cannot break out of it.
    data = embedded(page)
    sources = await d.client.get("/api/sources", params={"limit": "1000"})
    assert data["index"] == int(response.headers["x-registry-index"])
    assert data["auth"] == "open"
    assert data["sources"] == sources.json() or data["index"] != int(
        sources.headers["x-registry-index"]
    )
    runtimes = await d.client.get("/api/runtimes", params={"limit": "1000"})
    assert data["runtimes"] == runtimes.json() or data["index"] != int(
        runtimes.headers["x-registry-index"]
    )
    assert isinstance(data["workers"], dict) and data["workers"]["items"]
    assert HOSTILE_LABEL not in page
    assert page.count("</script>") == 2

    for secret in (str(data_dir), str(runtime_dir), *FIXTURE_SECRETS):
        assert secret not in page, secret


async def test_the_page_takes_no_parameters(start_daemon: StartDaemon) -> None:
    d = await start_daemon("sources = []\n")
    response = await d.client.get("/?x=1")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_query"
    page = (await d.client.get("/")).text
    assert embedded(page)["sources"] == (await d.get_json("/api/sources?limit=1000"))
    assert embedded(page)["runtimes"] == (await d.get_json("/api/runtimes?limit=1000"))


async def test_without_javascript_the_page_is_a_plain_summary(
    start_daemon: StartDaemon,
    data_dir: Path,
    runtime_dir: Path,
    tmp_path: Path,
    nursery: trio.Nursery,
) -> None:
    d = await unwell_daemon(start_daemon, nursery, data_dir, runtime_dir, tmp_path, False)
    page = (await d.client.get("/")).text
    noscript = page[page.index("<noscript>") : page.index("</noscript>")]
    assert "<td>no-data</td><td>degraded</td><td>running</td><td>0</td>" in noscript
    assert "warning local_pod_registry_unavailable: local Worker data directory" in noscript
    assert "last error runtime_unreachable: the runtime did not answer" in noscript
    assert "<code>local_pod_metadata_invalid</code>" in noscript
    for secret in (str(data_dir), str(runtime_dir), str(tmp_path), *FIXTURE_SECRETS):
        assert secret not in page, secret


async def test_with_tokens_the_page_loads_without_a_token_and_without_data(
    start_daemon: StartDaemon,
    data_dir: Path,
    runtime_dir: Path,
    tmp_path: Path,
    nursery: trio.Nursery,
) -> None:
    d = await unwell_daemon(start_daemon, nursery, data_dir, runtime_dir, tmp_path, True)
    response = await d.client.get("/")
    assert response.status_code == 200
    page = response.text
    assert embedded(page) == {"auth": "token"}
    for runtime_id in ("local-worker-runtime", "no-data", "unreachable-runtime"):
        assert runtime_id not in page
    assert "yoi-registryd status --token-file" in page  # the noscript hint
    assert "content-security-policy" in response.headers
    # The data is not: the API still wants a token.
    assert (await d.client.get("/api/sources")).status_code == 401
    # Only the page is open: another path, or another method, is not.
    assert (await d.client.get("/openapi.json")).status_code == 401
    assert (await d.client.post("/")).status_code in (401, 405)


ROWS = "[...document.querySelectorAll('#{table} tr[data-{key}]')].map(r => r.dataset.{attr})"


@pytest.mark.parametrize("tokens", [False, True], ids=["open", "tokens"])
async def test_a_headless_browser_shows_why_with_tokens_on_and_off(
    start_daemon: StartDaemon,
    data_dir: Path,
    runtime_dir: Path,
    tmp_path: Path,
    nursery: trio.Nursery,
    tokens: bool,
) -> None:
    """In Chromium, against a daemon with a degraded runtime, a malformed metadata file and
    a failing source: the page (asking once for a token when clients are configured) shows
    each runtime's status with its reason, the workers (filterable by runtime and state)
    with their diagnostics, and every diagnostic; the screenshot in docs/ comes from here."""
    binary = browser.chromium()
    if binary is None:
        pytest.skip("chromium is not installed (Debian package: chromium; .ci/run installs it)")
    d = await unwell_daemon(start_daemon, nursery, data_dir, runtime_dir, tmp_path, tokens)
    profile = tmp_path / "chromium-profile"
    async with browser.open_page(binary, profile) as page:
        await page.navigate(d.base_url + "/")
        if tokens:
            # Asked for a token, with nothing of the registry on the page yet.
            assert await page.wait_for("!document.getElementById('auth').hidden")
            assert await page.evaluate("document.getElementById('console').hidden")
            # A token the daemon does not know is refused, and asked for again.
            await submit_token(page, "not-a-token-the-daemon-knows")
            await page.wait_for(
                "document.getElementById('auth-message').textContent.includes('does not know')"
            )
            await submit_token(page, OPERATOR_TOKEN)
        await page.wait_for("document.querySelectorAll('#runtimes tr[data-runtime]').length === 4")
        await check_console(page)
        if tokens:
            stored = await page.evaluate(
                "[sessionStorage.getItem('yoi-registryd-token'), localStorage.length]"
            )
            assert stored == [OPERATOR_TOKEN, 0]
            # Asked once: a reload in the same tab does not ask again.
            await page.navigate(d.base_url + "/")
            await page.wait_for(
                "document.querySelectorAll('#runtimes tr[data-runtime]').length === 4"
            )
            assert await page.evaluate("document.getElementById('auth').hidden")
        png = await page.screenshot(1280, 1800)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        if tokens and (keep := os.environ.get(SCREENSHOT_ENV)):
            await trio.Path(keep).write_bytes(png)

        # Live: a change in the registry reaches the page through the blocking query.
        await d.daemon.supervisor.start(nursery, failing_spec("late-runtime", stale_after=60))
        await page.wait_for(
            "!!document.querySelector('#runtimes tr[data-runtime=\"late-runtime\"]')"
        )


async def submit_token(page: browser.Page, token: str) -> None:
    await page.evaluate(
        f"document.getElementById('token').value = {json.dumps(token)};"
        "document.getElementById('auth-form').requestSubmit(); true"
    )


async def check_console(page: browser.Page) -> None:
    # Each runtime with its status, and the reason for every one that is not well.
    statuses = await page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#runtimes tr[data-runtime]')]"
        ".map(r => [r.dataset.runtime, [r.dataset.status, r.children[2].textContent]]))"
    )
    assert statuses["no-data"][0] == "degraded"
    assert "local_pod_registry_unavailable: local Worker data directory" in statuses["no-data"][1]
    assert statuses["unreachable-runtime"][0] == "unavailable"
    assert "runtime_unreachable: the runtime did not answer" in statuses["unreachable-runtime"][1]
    assert statuses["local-worker-runtime"][0] == "available"
    assert "workers: local_pod_metadata_invalid" in statuses["local-worker-runtime"][1]
    # Sources with their task state and last error.
    # The failing source runs for a moment at each restart: wait for the page to show it
    # between attempts (the page follows the registry through its blocking query).
    assert await page.wait_for(
        "document.querySelector('#sources tr[data-source=\"unreachable-runtime\"]')"
        ".children[2].textContent === 'backoff'"
    )
    tasks = await page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#sources tr[data-source]')]"
        ".map(r => [r.dataset.source, r.children[2].textContent]))"
    )
    assert tasks["no-data"] == "running"
    # Every diagnostic, the malformed metadata file's among them.
    codes = await page.evaluate(ROWS.format(table="diagnostics", key="code", attr="code"))
    assert {"local_pod_registry_unavailable", "local_pod_metadata_invalid"} <= set(codes)
    # Workers: all runtimes at first, then one runtime, then one state within it.
    await page.wait_for("document.querySelectorAll('#workers tr[data-worker]').length > 3")
    await choose(page, "filter-runtime", "scripted-runtime")
    await page.wait_for(
        "[...document.querySelectorAll('#workers tr[data-worker]')]"
        ".every(r => r.children[1].textContent === 'scripted-runtime')"
        " && document.querySelectorAll('#workers tr[data-worker]').length === 3"
    )
    await choose(page, "filter-runtime", "local-worker-runtime")
    await page.wait_for(
        "[...document.querySelectorAll('#workers tr[data-worker]')]"
        ".every(r => r.children[1].textContent === 'local-worker-runtime')"
    )
    states = set(await page.evaluate(ROWS.format(table="workers", key="worker", attr="state")))
    assert len(states) > 1, states
    chosen = sorted(states)[0]
    await choose(page, "filter-state", chosen)
    assert set(await page.evaluate(ROWS.format(table="workers", key="worker", attr="state"))) == {
        chosen
    }
    await choose(page, "filter-state", "")
    await choose(page, "filter-runtime", "")
    await page.wait_for("document.querySelectorAll('#workers tr[data-worker]').length > 3")
    # Nothing served by the API became markup, and nothing secret is on the page.
    html = await page.evaluate("document.documentElement.outerHTML")
    for secret in FIXTURE_SECRETS:
        assert secret not in html, secret


async def choose(page: browser.Page, select: str, value: str) -> None:
    await page.evaluate(
        f"(() => {{ const s = document.getElementById({json.dumps(select)});"
        f"s.value = {json.dumps(value)};"
        "s.dispatchEvent(new Event('change')); return true; })()"
    )
