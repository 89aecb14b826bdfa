"""The baseline: a bare ASGI app on the same hypercorn/trio server, answering the same bytes.

Run: ``python benchmarks/baseline_app.py --port P --routes routes.json`` where
``routes.json`` maps a request target (path and query, as the client sends it) to the
answer to give: ``{"body": <file holding the body>, "headers": [[name, value], ...]}``, the
headers the daemon sent with it (all but ``date``, which the server adds), so that both
put the same bytes on the wire. It prints ``READY <port>`` once serving.

Everything the daemon's server does is done here too (hypercorn's trio worker, HTTP/1.1
keep-alive, the same server settings as ``yoi_registryd.daemon``); everything the daemon's
application does is not: no routing framework, no middleware, no snapshot, no encoding.
What the registry loses against this app is the cost of the registry itself.

``GET /watch`` is the baseline of freshness: it holds the request until the app's own timer
fires (every 20 to 50 ms, at random) and answers ``t<CLOCK_MONOTONIC ns of the firing>``:
the least any "change -> visible over a held HTTP request" can take on this stack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import socket
import time
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig

from yoi_registryd.http.server import serve

Headers = list[tuple[bytes, bytes]]


class BaselineApp:
    def __init__(self, routes: dict[str, tuple[bytes, Headers]]) -> None:
        self.routes = {target: headers for target, (_, headers) in routes.items()}
        self.bodies = {target: body for target, (body, _) in routes.items()}
        self._fired = trio.Event()
        self._fired_at = 0

    async def ticker(self) -> None:
        """Fire the ``/watch`` event every 20-50 ms (random, so it does not beat with polls)."""
        rng = random.Random(3)
        while True:
            await trio.sleep(rng.uniform(0.02, 0.05))
            self._fired_at = time.monotonic_ns()
            self._fired.set()
            self._fired = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        query = scope["query_string"]
        target = scope["path"] + ("?" + query.decode("latin-1") if query else "")
        if target == "/watch":
            await self._fired.wait()
            body = f"t{self._fired_at}".encode("ascii")
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
            status = 200
        elif target in self.bodies:
            body, headers, status = self.bodies[target], self.routes[target], 200
        else:
            body, headers, status = b"{}", [(b"content-length", b"2")], 404
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def server_config() -> HypercornConfig:
    """The daemon's hypercorn settings (``yoi_registryd.daemon.Daemon.run``)."""
    config = HypercornConfig()
    config.errorlog = logging.getLogger("baseline.error")
    config.accesslog = None
    config.keep_alive_timeout = 75
    config.include_server_header = False
    return config


async def main_async(port: int, routes: dict[str, tuple[bytes, Headers]]) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    port = sock.getsockname()[1]
    app = BaselineApp(routes)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.ticker)
        # The daemon's own server loop (hypercorn's per-connection protocol under trio).
        await nursery.start(serve, app, server_config(), [sock], trio.sleep_forever)
        print(f"READY {port}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--routes", type=Path, help="JSON: request target -> body, headers")
    args = parser.parse_args()
    routes: dict[str, tuple[bytes, Headers]] = {}
    if args.routes:
        for target, answer in json.loads(args.routes.read_text()).items():
            headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in answer["headers"]]
            routes[target] = (Path(answer["body"]).read_bytes(), headers)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main_async, args.port, routes)


if __name__ == "__main__":
    main()
