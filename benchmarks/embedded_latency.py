"""Delay from an event in an embedded runtime to the change being visible over HTTP.

Run: ``python benchmarks/embedded_latency.py`` (defaults: 10,000 workers, 300 samples, and a
10-worker baseline in the same run).

A child process runs the real daemon with one embedded source: a memory runtime holding
``--workers`` workers, whose own task renames one target worker every 20-50 ms (random, so
events do not beat in step with the polls) to ``t<CLOCK_MONOTONIC ns>`` of the moment of
the change. The parent polls ``GET /api/runtimes/{rid}/workers/{target}`` back to back over
one keep-alive connection; when the label changes, the delay is its receive time minus the
time in the label (CLOCK_MONOTONIC is shared by all processes on Linux). So each sample
includes the detection granularity of polling (up to one request); the poll round trip is
reported so that floor is visible.

The child also measures, in-process, the delay from the event to the registry publishing a
snapshot that holds it (no HTTP), which splits the total into "registry" and "HTTP" parts.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import httpx
import msgspec
import trio

RID = "bench-embedded"
TARGET = "target"
INTERVAL_MS = (20, 50)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# -- the child: daemon + runtime ----------------------------------------------------------


def _runtime_class() -> Any:
    from yoi_registryd.runtimes import MemoryRuntime

    class LatencyRuntime(MemoryRuntime):
        """``workers`` workers; its own task renames the target with the event's time."""

        def __init__(self, *, workers: int) -> None:
            super().__init__(display_name="latency benchmark")
            self.spawn(TARGET, display_name="start")
            for i in range(workers - 1):
                self.spawn(f"w-{i:06d}", display_name=f"worker {i}")

        async def run(self) -> None:
            rng = random.Random(1)
            while True:
                await trio.sleep(rng.uniform(*INTERVAL_MS) / 1000)
                self.rename(TARGET, f"t{time.monotonic_ns()}")

    return LatencyRuntime


LatencyRuntime: Any = None  # built on first use: the factory is "__main__:LatencyRuntime"


async def _probe(actor: Any, internal: list[float]) -> None:
    """Event -> published snapshot, measured inside the daemon's process."""
    revision = 0
    last = None
    while True:
        snapshot = await actor.wait_for_change(revision)
        revision = snapshot.revision
        now = time.monotonic_ns()
        entry = snapshot.runtimes.get(RID)
        if entry is None or TARGET not in entry.workers:
            continue
        label = entry.workers[TARGET].label
        if label != last and label and label.startswith("t"):
            internal.append((now - int(label[1:])) / 1e6)
            last = label


async def serve(workers: int) -> None:
    global LatencyRuntime
    LatencyRuntime = _runtime_class()
    from yoi_registryd.config import Config, Duration, EmbeddedSourceConfig
    from yoi_registryd.daemon import Daemon

    config = Config(
        sources=[
            EmbeddedSourceConfig(
                runtime_id=RID,
                factory="__main__:LatencyRuntime",
                options={"workers": workers},
                stale_after=Duration(minutes=10),
            )
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    daemon = Daemon(config)
    internal: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run, [sock])
        nursery.start_soon(_probe, daemon.actor, internal)
        print(port, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # the parent closes stdin when done
        daemon.shutdown.set()
        nursery.cancel_scope.cancel()
    print(json.dumps({"internal_ms": internal}), flush=True)


# -- the parent: the HTTP client ----------------------------------------------------------

_worker = msgspec.json.Decoder(dict[str, Any])


def measure(workers: int, samples: int, warmup: int = 10) -> dict[str, Any]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--workers", str(workers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        port = int(child.stdout.readline())
        path = f"/api/runtimes/{RID}/workers/{TARGET}"
        delays: list[float] = []
        rtts: list[float] = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while client.get(path).status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit("the benchmark runtime never appeared")
                time.sleep(0.05)
            last = None
            seen = 0
            while len(delays) < samples:
                sent = time.monotonic_ns()
                body = client.get(path).content
                received = time.monotonic_ns()
                rtts.append((received - sent) / 1e6)
                label = _worker.decode(body)["label"]
                if label != last and label.startswith("t"):
                    last = label
                    seen += 1
                    if seen > warmup:
                        delays.append((received - int(label[1:])) / 1e6)
        child.stdin.close()
        internal = json.loads(child.stdout.readline())["internal_ms"][warmup:]
    finally:
        child.wait(timeout=30)
    return {"workers": workers, "delays": delays, "rtts": rtts, "internal": internal}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    d, r, i = result["delays"], result["rtts"], result["internal"]
    return {
        "workers": result["workers"],
        "samples": len(d),
        "http_p50_ms": round(statistics.median(d), 3),
        "http_p99_ms": round(percentile(d, 99), 3),
        "http_max_ms": round(max(d), 3),
        "poll_rtt_p50_ms": round(statistics.median(r), 3),
        "poll_rtt_p99_ms": round(percentile(r, 99), 3),
        "registry_p50_ms": round(statistics.median(i), 3),
        "registry_p99_ms": round(percentile(i, 99), 3),
    }


def worker_map_copy_us(workers: int) -> dict[str, float]:
    """Microseconds to copy a ``workers``-entry worker map held in a MappingProxyType, the
    way the registry actor applies a delta: ``dict(proxy)`` (the generic mapping path) and
    ``proxy.copy()`` (the dict's own copy)."""
    proxy = MappingProxyType({f"w-{i:06d}": object() for i in range(workers)})
    out: dict[str, float] = {}
    copies: tuple[tuple[str, Callable[[], object]], ...] = (
        ("dict_of_proxy_us", lambda: dict(proxy)),
        ("proxy_copy_us", proxy.copy),
    )
    for name, copy in copies:
        runs = 100
        started = time.perf_counter()
        for _ in range(runs):
            copy()
        out[name] = round((time.perf_counter() - started) / runs * 1e6, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=10_000)
    parser.add_argument("--baseline-workers", type=int, default=10)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.workers)
        return
    rows = []
    for workers in (args.baseline_workers, args.workers):
        row = summarize(measure(workers, args.samples))
        row.update(worker_map_copy_us(workers))
        rows.append(row)
        print(json.dumps(row), flush=True)
    base, big = rows
    print(
        json.dumps(
            {
                "http_p50_ratio": round(big["http_p50_ms"] / base["http_p50_ms"], 2),
                "http_p99_ratio": round(big["http_p99_ms"] / base["http_p99_ms"], 2),
                "registry_p50_ratio": round(big["registry_p50_ms"] / base["registry_p50_ms"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
