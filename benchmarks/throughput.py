"""Throughput of the two hottest read routes, against stock hypercorn-trio in the same run.

Run: ``python benchmarks/throughput.py [--seconds 5] [--rounds 5] [--workers 1000]``

The daemon runs as its own process with its default settings (audit file sink, security
middleware, metrics) and one embedded source holding ``--workers`` workers that do not
change during the run. ``wrk`` (one thread, 16 keep-alive connections) loads:

* ``GET /api/workers?limit=1000``: the whole worker list in one page;
* ``GET /api/runtimes/<rid>/workers/<wid>``: a single worker lookup.

The baseline is stock ``hypercorn --worker-class trio`` (its own command line, one worker
process) serving ``baseline_app.py``, a bare ASGI app that answers each of those targets
with the very bytes and headers the daemon answered. A second row (``wrapper``, unless
``--no-wrapper``) serves the same app through the daemon's own server loop: the gap between
it and stock is the server wrapper's, the rest is the registry's. Servers alternate round by
round; each round gives two ratios to the stock run of the same round, requests per second
(registry / stock) and server CPU time per request (stock / registry, from
``/proc/PID/stat`` of each server process and its children), reported as min/median/max.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from harness import (
    BENCH_DIR,
    WRK_CONNECTIONS,
    DaemonProcess,
    StockHypercorn,
    WrkResult,
    ensure_wrk,
    run_wrk,
    source_toml,
)

RUNTIME_ID = "bench-throughput"
TARGET_RATIO = 0.9


def targets(workers: int) -> dict[str, str]:
    lookup = f"worker-{min(workers, 500)}"
    return {
        "list_workers": "/api/workers?limit=1000",
        "worker_lookup": f"/api/runtimes/{RUNTIME_ID}/workers/{lookup}",
    }


def daemon_for(workers: int) -> DaemonProcess:
    return DaemonProcess(
        source_toml(
            "embedded",
            runtime_id=RUNTIME_ID,
            entry_point="demo",
            options={"workers": workers, "interval": "1h", "seed": 1},
        )
    )


def write_routes(answers: dict[str, httpx.Response], tmp: Path) -> Path:
    """``baseline_app.py``'s routes file: each target with the daemon's very answer, its
    body and its headers (all but ``date``, which the server adds to both)."""
    mapping = {}
    for i, (target, response) in enumerate(answers.items()):
        path = tmp / f"body-{i}"
        path.write_bytes(response.content)
        headers = [
            [name.decode("latin-1"), value.decode("latin-1")]
            for name, value in response.headers.raw
            if name.lower() != b"date"
        ]
        mapping[target] = {"body": str(path), "headers": headers}
    routes = tmp / "routes.json"
    routes.write_text(json.dumps(mapping))
    return routes


def start_wrapper_baseline(routes: Path) -> tuple[subprocess.Popen[str], str]:
    """The same app on the daemon's own server loop (the second, explanatory row)."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "baseline_app.py"), "--routes", str(routes)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline().split()
    if not ready or ready[0] != "READY":
        raise RuntimeError("the wrapper baseline did not start")
    return proc, f"http://127.0.0.1:{ready[1]}"


def wait_for_workers(url: str, workers: int, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    with httpx.Client(base_url=url, timeout=10) as client:
        while True:
            body = client.get("/api/runtimes/" + RUNTIME_ID)
            if body.status_code == 200 and body.json()["worker_count"] == workers:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the benchmark runtime did not appear")
            time.sleep(0.05)


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def measure(
    seconds: float = 5.0,
    rounds: int = 5,
    workers: int = 1000,
    warmup: float = 1.0,
    wrapper: bool = True,
) -> dict[str, Any]:
    """Alternating rounds of every server on each route; per-round ratios to stock hypercorn.

    Each round runs every side once, in an order that rotates from round to round (so that
    no side always follows the same one); the ratios of a round compare the registry with
    the stock server's run of that same round."""
    wrk = ensure_wrk()
    if wrk is None:
        return {"skipped": "wrk is not installed and could not be installed"}
    routes = targets(workers)
    tmp = Path(tempfile.mkdtemp(prefix="yoi-bench-baseline-"))
    with daemon_for(workers) as daemon:
        daemon.wait_ready()
        wait_for_workers(daemon.url, workers)
        with httpx.Client(base_url=daemon.url, timeout=10) as client:
            answers = {}
            for target in routes.values():
                response = client.get(target)
                response.raise_for_status()
                answers[target] = response
        routes_file = write_routes(answers, tmp)
        with contextlib.ExitStack() as stack:
            stock = stack.enter_context(StockHypercorn(routes_file))
            servers = [("stock", stock.url, stock.pid), ("registry", daemon.url, daemon.pid)]
            if wrapper:
                proc, url = start_wrapper_baseline(routes_file)
                stack.callback(proc.wait, 10)
                stack.callback(proc.terminate)
                servers.insert(1, ("wrapper", url, proc.pid))
            results: dict[str, Any] = {}
            for name, target in routes.items():
                sides: dict[str, list[WrkResult]] = {side: [] for side, _, _ in servers}
                for _, url, _ in servers:
                    run_wrk(wrk, url + target, warmup)
                for k in range(rounds):
                    for side, url, pid in servers[k % len(servers) :] + servers[: k % len(servers)]:
                        sides[side].append(run_wrk(wrk, url + target, seconds, server_pid=pid))
                results[name] = route_row(target, len(answers[target].content), sides)
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "workers": workers,
        "connections": WRK_CONNECTIONS,
        "seconds_per_round": seconds,
        "rounds": rounds,
        "baseline": "hypercorn --worker-class trio (stock CLI, one worker process)",
        "target_ratio": TARGET_RATIO,
        **results,
    }


def route_row(target: str, body_bytes: int, sides: dict[str, list[WrkResult]]) -> dict[str, Any]:
    row: dict[str, Any] = {"target": target, "body_bytes": body_bytes}
    for side, runs in sides.items():
        if any(r.errors for r in runs):
            raise RuntimeError(f"{side} {target}: wrk saw errors or non-2xx answers")
        row[side] = {
            "rps": round(statistics.median(r.requests_per_s for r in runs)),
            "cpu_us_per_request": round(
                statistics.median(r.server_cpu_us_per_request or 0.0 for r in runs), 1
            ),
            "p99_ms": round(statistics.median(r.latency_p99_ms for r in runs), 2),
            "rounds_rps": [round(r.requests_per_s) for r in runs],
            "rounds_cpu_us": [round(r.server_cpu_us_per_request or 0.0, 1) for r in runs],
        }
    stock = sides["stock"]
    for side, runs in sides.items():
        if side == "stock":
            continue
        # Same-round ratios: >= 1 means as fast as stock hypercorn (or faster).
        rps = [r.requests_per_s / s.requests_per_s for r, s in zip(runs, stock, strict=True)]
        cpu = [
            (s.server_cpu_us_per_request or 0.0) / (r.server_cpu_us_per_request or 1.0)
            for r, s in zip(runs, stock, strict=True)
        ]
        row[side]["rps_ratio"] = spread(rps)
        row[side]["cpu_ratio"] = spread(cpu)
        row[side]["rounds_rps_ratio"] = [round(x, 3) for x in rps]
        row[side]["rounds_cpu_ratio"] = [round(x, 3) for x in cpu]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-wrapper", action="store_true", help="skip the wrapper row")
    parser.add_argument("--workers", type=int, default=1000)
    args = parser.parse_args()
    result = measure(args.seconds, args.rounds, args.workers, wrapper=not args.no_wrapper)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
