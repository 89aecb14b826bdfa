"""The baseline: a bare ASGI app answering the daemon's very bytes, on stock hypercorn.

It is served two ways:

* **stock** (the baseline every target is judged against): hypercorn's own command line,
  as a user starts it, ``hypercorn --worker-class trio --bind 127.0.0.1:P baseline_app:app``
  with ``YOI_BENCH_ROUTES=routes.json`` in the environment (``harness.StockHypercorn``);
* **wrapper** (a second row that explains part of the gap): ``python
  benchmarks/baseline_app.py --port P --routes routes.json`` serves the same app through the
  daemon's own server loop (``yoi_registryd.http.server.serve``) with the daemon's
  hypercorn settings, and prints ``READY <port>`` once serving.

``routes.json`` maps a request target (path and query, as the client sends it) to the
answer to give: ``{"body": <file holding the body>, "headers": [[name, value], ...]}``, the
headers the daemon sent with it (all but ``date``, which the server adds), so that both
put the same bytes on the wire. No routing framework, no middleware, no snapshot, no
encoding: what the registry loses against this app is the cost of the registry itself.

``GET /watch`` is the baseline of freshness: it holds the request for a random 20 to 50 ms,
then answers ``t<CLOCK_MONOTONIC ns when it let go>``: the least any "change -> visible over
a held HTTP request" can take on this stack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig

Headers = list[tuple[bytes, bytes]]
ROUTES_ENV = "YOI_BENCH_ROUTES"


def load_routes(path: Path | None) -> dict[str, tuple[bytes, Headers]]:
    routes: dict[str, tuple[bytes, Headers]] = {}
    if path is not None:
        for target, answer in json.loads(path.read_text()).items():
            headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in answer["headers"]]
            routes[target] = (Path(answer["body"]).read_bytes(), headers)
    return routes


class BaselineApp:
    def __init__(self, routes: dict[str, tuple[bytes, Headers]]) -> None:
        self.routes = {target: headers for target, (_, headers) in routes.items()}
        self.bodies = {target: body for target, (body, _) in routes.items()}
        self._rng = random.Random(3)

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
            # Random, so that it does not beat with the client's own timing.
            await trio.sleep(self._rng.uniform(0.02, 0.05))
            body = f"t{time.monotonic_ns()}".encode("ascii")
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
            status = 200
        elif target in self.bodies:
            body, headers, status = self.bodies[target], self.routes[target], 200
        else:
            body, headers, status = b"{}", [(b"content-length", b"2")], 404
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


_routes_file = os.environ.get(ROUTES_ENV)
app = BaselineApp(load_routes(Path(_routes_file) if _routes_file else None))
"""What ``hypercorn baseline_app:app`` serves (the routes from ``$YOI_BENCH_ROUTES``)."""


def server_config() -> HypercornConfig:
    """The daemon's hypercorn settings (``yoi_registryd.daemon.Daemon.run``)."""
    config = HypercornConfig()
    config.errorlog = logging.getLogger("baseline.error")
    config.accesslog = None
    config.keep_alive_timeout = 75
    config.include_server_header = False
    return config


async def main_async(port: int, routes: dict[str, tuple[bytes, Headers]]) -> None:
    from yoi_registryd.http.server import serve

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    port = sock.getsockname()[1]
    wrapped = BaselineApp(routes)
    async with trio.open_nursery() as nursery:
        # The daemon's own server loop (hypercorn's per-connection protocol under trio).
        await nursery.start(serve, wrapped, server_config(), [sock], trio.sleep_forever)
        print(f"READY {port}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--routes", type=Path, help="JSON: request target -> body, headers")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main_async, args.port, load_routes(args.routes))


if __name__ == "__main__":
    main()
