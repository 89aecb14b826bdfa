"""GET /: the self-contained status page, its safety, and a real browser rendering it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import trio

from tests.conftest import RunningDaemon, StartDaemon, local_source_toml, wait_for
from tests.scripted_source import Script, failing_spec

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


async def test_the_page_is_self_contained_and_embeds_only_the_sources_view(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, nursery: trio.Nursery
) -> None:
    d, _ = await demo_daemon(start_daemon, data_dir, runtime_dir, nursery)
    response = await d.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text

    # No external asset: nothing is loaded from anywhere but data: URLs and this origin's API.
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", page)
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
    assert data["sources"] == sources.json() or data["index"] != int(
        sources.headers["x-registry-index"]
    )
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


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


async def run_chromium(binary: str, *args: str) -> bytes:
    result = await trio.run_process(
        [binary, *CHROMIUM_FLAGS, *args], capture_stdout=True, capture_stderr=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result.stdout


async def test_a_headless_browser_renders_the_page(
    start_daemon: StartDaemon,
    data_dir: Path,
    runtime_dir: Path,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed (Debian/Ubuntu package: chromium)")
    d, script = await demo_daemon(
        start_daemon, data_dir, runtime_dir, nursery, label="Embedded build runtime"
    )
    url = d.base_url + "/"

    screenshot = tmp_path / "status-page.png"
    with trio.fail_after(60):
        await run_chromium(binary, f"--screenshot={screenshot}", "--window-size=1280,720", url)
    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1280, 720)
    if keep := os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(screenshot, keep)

    # The DOM after the script ran (under the page's CSP): the tables are filled in, and a
    # hostile label is text, not markup.
    script.label = HOSTILE_LABEL
    await script.observe("builder", "tester", "planner", state="idle")

    async def relabelled() -> bool:
        runtime = await d.get_json("/api/runtimes/scripted-runtime")
        return bool(runtime["label"] == HOSTILE_LABEL)

    await wait_for(relabelled)
    with trio.fail_after(60):
        dom = (await run_chromium(binary, "--dump-dom", url)).decode()
    assert "scripted-runtime" in dom and "unreachable-runtime" in dom
    assert "runtime_unreachable: the runtime did not answer" in dom
    assert "metadata_only" in dom  # a worker state of the fixture workers
    assert "<script>alert(1)" not in dom
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in dom
