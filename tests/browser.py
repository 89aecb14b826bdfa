"""Headless Chromium driven over the DevTools protocol (a WebSocket), for the status page test.

Just enough of the protocol to load a page, run script in it as a user's actions would
(type into a field, submit, pick an option), read the DOM back and take a screenshot. The
browser runs with a fresh profile in a temp dir, talks to loopback only, and is killed when
the context exits.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
START_DEADLINE_S = 30.0
_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


class BrowserError(Exception):
    pass


class Page:
    """One tab, attached in flat mode: every command carries its session id."""

    def __init__(self, ws: WebSocketConnection, session: str, ids: itertools.count[int]) -> None:
        self.ws, self.session, self.ids = ws, session, ids

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await _call(self.ws, self.ids, method, params, self.session)

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` (awaited if it is a promise), as JSON."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(json.dumps(result["exceptionDetails"])[:2000])
        return result["result"].get("value")

    async def wait_for(self, expression: str, deadline_s: float = 15.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = trio.current_time() + deadline_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if trio.current_time() >= deadline:
                raise AssertionError(f"timed out after {deadline_s}s waiting for {expression}")
            await trio.sleep(0.05)

    async def screenshot(self, width: int, height: int) -> bytes:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])


async def _call(
    ws: WebSocketConnection,
    ids: itertools.count[int],
    method: str,
    params: dict[str, Any],
    session: str | None = None,
) -> dict[str, Any]:
    ident = next(ids)
    message: dict[str, Any] = {"id": ident, "method": method, "params": params}
    if session is not None:
        message["sessionId"] = session
    await ws.send_message(json.dumps(message))
    with trio.fail_after(30):
        while True:
            reply = json.loads(await ws.get_message())
            if reply.get("id") == ident:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result


@asynccontextmanager
async def open_page(binary: str, profile: Path) -> AsyncIterator[Page]:
    """A fresh headless browser and one blank tab in it."""
    process = await trio.lowlevel.open_process(
        [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        seen = b""
        with trio.fail_after(START_DEADLINE_S):
            while (match := _LISTENING.search(seen)) is None:
                chunk = await process.stderr.receive_some(4096)
                if not chunk:
                    raise BrowserError("chromium exited: " + seen.decode(errors="replace")[-2000:])
                seen += chunk
        async with trio.open_nursery() as nursery:
            # Keep reading stderr so that the browser never blocks on a full pipe.
            nursery.start_soon(_drain, process.stderr)
            async with open_websocket_url(
                match.group(1).decode(), max_message_size=64 * 1024 * 1024
            ) as ws:
                ids = itertools.count(1)
                target = await _call(ws, ids, "Target.createTarget", {"url": "about:blank"})
                attached = await _call(
                    ws,
                    ids,
                    "Target.attachToTarget",
                    {"targetId": target["targetId"], "flatten": True},
                )
                page = Page(ws, attached["sessionId"], ids)
                await page.send("Page.enable")
                await page.send("Runtime.enable")
                yield page
            nursery.cancel_scope.cancel()
    finally:
        process.kill()
        with trio.move_on_after(10):
            await process.wait()


async def _drain(stream: Any) -> None:
    while await stream.receive_some(65536):
        pass
