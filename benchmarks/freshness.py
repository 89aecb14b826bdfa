"""Freshness: delay from a change at the source to the change being visible over HTTP.

Run: ``python benchmarks/freshness.py [--samples 200]``

Every delay is measured the way a backend watching the registry sees it: a blocking query
(``?index=<last X-Registry-Index>&wait=30s``) is already held when the change is made, and
the clock stops when its answer, holding the change, is received. Times are
``CLOCK_MONOTONIC`` (shared by every process on Linux), so a change made in another process
is timed from the moment it was made there.

* local: the daemon (its own process) runs a local source with ``liveness_check = false``
  on a temporary yoi data dir; the driver rewrites one Worker's ``metadata.json`` (to a
  temporary file, then ``rename``, as an atomic writer does) with a new ``role``.
* embedded: ``embedded_latency.py --serve`` (issue 4's script): the daemon with a memory
  runtime of 1,000 workers whose own task renames one worker every 20 to 50 ms to the
  monotonic time of the change.
* remote: ``tests/fake_runtime.py`` serves 10 fake runtimes, polled by the daemon every
  ``--poll-interval``; the driver adds a worker through the fake's control route and
  watches that runtime's worker list. Expect about half a poll interval on average.

The baseline (same run): ``baseline_app.py``'s ``/watch`` on stock hypercorn-trio, a
request held by a bare ASGI app and released by that app's own timer: the least any "change ->
visible over a held HTTP request" costs on this stack. Local and embedded figures are
reported with their ratio to it; the remote figure against its poll interval.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio
from harness import (
    BENCH_DIR,
    DaemonProcess,
    FakeRemotes,
    StockHypercorn,
    percentile,
    source_toml,
)

WAIT = "30s"
LOCAL_RID = "bench-local"
REMOTES = 10
TARGET_LOCAL_P99_MS = 20
TARGET_EMBEDDED_P99_MS = 10
_decode = msgspec.json.Decoder(dict[str, Any])


def summary(delays_ms: list[float]) -> dict[str, Any]:
    return {
        "samples": len(delays_ms),
        "p50_ms": round(percentile(delays_ms, 50), 2),
        "p99_ms": round(percentile(delays_ms, 99), 2),
        "max_ms": round(max(delays_ms), 2),
    }


def now_ms() -> float:
    return time.monotonic_ns() / 1e6


async def watch(client: httpx.AsyncClient, path: str, index: int) -> tuple[int, bytes, float]:
    """One blocking query: (new index, body, receive time in ms)."""
    response = await client.get(path, params={"index": index, "wait": WAIT})
    received = now_ms()
    response.raise_for_status()
    return int(response.headers["x-registry-index"]), response.content, received


async def first_answer(client: httpx.AsyncClient, path: str, deadline_s: float = 60) -> int:
    """Wait until ``path`` answers 200 (the source was observed); its revision."""
    with trio.fail_after(deadline_s):
        while True:
            response = await client.get(path)
            if response.status_code == 200:
                return int(response.headers["x-registry-index"])
            await trio.sleep(0.05)


async def timed_change(
    client: httpx.AsyncClient,
    path: str,
    index: int,
    change: Any,
    visible: Any,
    rng: random.Random,
    deadline_s: float,
) -> tuple[int, float]:
    """Hold a blocking query on ``path``, make the change, wait for an answer that shows it
    (``visible(body)``). Returns the new index and the delay in ms."""
    shown: list[tuple[int, float]] = []
    done = trio.Event()

    async def held() -> None:
        nonlocal index
        while not shown:
            index, body, received = await watch(client, path, index)
            if visible(body):
                shown.append((index, received))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(held)
        await trio.sleep(rng.uniform(0.02, 0.05))  # the query is held by now
        made = now_ms()
        await change()
        with trio.fail_after(deadline_s):
            await done.wait()
    return shown[0][0], shown[0][1] - made


# -- baseline -------------------------------------------------------------------------------


def baseline(samples: int) -> list[float]:
    with StockHypercorn() as server:
        return trio.run(_baseline, server.url, samples)


async def _baseline(url: str, samples: int) -> list[float]:
    delays: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while len(delays) < samples:
            response = await client.get("/watch")
            received = now_ms()
            delays.append(received - int(response.text[1:]) / 1e6)
    return delays


# -- local ----------------------------------------------------------------------------------


def write_metadata(pod: Path, role: str) -> None:
    meta = {
        "worker_name": pod.name,
        "workspace_root": "/srv/yoi/workspaces/bench",
        "resolved_manifest_snapshot": {"role": role},
    }
    tmp = pod / ".metadata.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, pod / "metadata.json")


def local(samples: int, workers: int = 100) -> list[float]:
    data_dir = Path(tempfile.mkdtemp(prefix="yoi-bench-local-"))
    pods = data_dir / "pods"
    for i in range(workers):
        (pods / f"pod-{i:03d}").mkdir(parents=True)
        write_metadata(pods / f"pod-{i:03d}", "start")
    daemon = DaemonProcess(
        source_toml(
            "local",
            runtime_id=LOCAL_RID,
            data_dir=str(data_dir),
            runtime_dir=str(data_dir / "run"),
            liveness_check=False,
        )
    )
    try:
        with daemon:
            daemon.wait_ready()
            return trio.run(_local, daemon.url, pods / "pod-000", samples)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def _local(url: str, target: Path, samples: int) -> list[float]:
    rng = random.Random(5)
    delays: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await first_answer(client, f"/api/runtimes/{LOCAL_RID}")
        page = _decode.decode((await client.get(f"/api/runtimes/{LOCAL_RID}/workers")).content)
        worker_id = next(w["worker_id"] for w in page["items"] if w["label"] == target.name)
        path = f"/api/runtimes/{LOCAL_RID}/workers/{worker_id}"
        index = await first_answer(client, path)
        for k in range(samples):
            role = f"r{k}"

            async def change(role: str = role) -> None:
                write_metadata(target, role)

            index, delay = await timed_change(
                client,
                path,
                index,
                change,
                lambda body, role=role: _decode.decode(body)["role"] == role,
                rng,
                10,
            )
            delays.append(delay)
    return delays


# -- embedded -------------------------------------------------------------------------------


def embedded(samples: int, workers: int = 1000) -> list[float]:
    child = subprocess.Popen(
        [
            sys.executable,
            str(BENCH_DIR / "embedded_latency.py"),
            "--serve",
            "--workers",
            str(workers),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        port = int(child.stdout.readline())
        return trio.run(_embedded, port, samples)
    finally:
        child.stdin.close()
        child.wait(30)


async def _embedded(port: int, samples: int) -> list[float]:
    from embedded_latency import RID, TARGET

    path = f"/api/runtimes/{RID}/workers/{TARGET}"
    delays: list[float] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        index = await first_answer(client, path)
        last = None
        warmup = 5
        while len(delays) < samples:
            index, body, received = await watch(client, path, index)
            label = _decode.decode(body)["label"] or ""
            if label != last and label.startswith("t"):
                last = label
                if warmup:
                    warmup -= 1
                    continue
                delays.append(received - int(label[1:]) / 1e6)
    return delays


# -- remote ---------------------------------------------------------------------------------


def remote(samples: int, poll_interval: float, workers: int = 20) -> list[float]:
    fakes = FakeRemotes(REMOTES, workers).start()
    sources = "".join(
        source_toml(
            "remote",
            runtime_id=fakes.runtime_id(i),
            base_url=fakes.base_url(i),
            token_file=str(fakes.token_file),
            poll_interval=f"{round(poll_interval * 1000)}ms",
        )
        for i in range(REMOTES)
    )
    try:
        with DaemonProcess(sources) as daemon:
            daemon.wait_ready()
            return trio.run(_remote, daemon.url, fakes, samples, poll_interval)
    finally:
        fakes.stop()


async def _remote(url: str, fakes: FakeRemotes, samples: int, poll_interval: float) -> list[float]:
    delays: list[float] = []
    async with (
        httpx.AsyncClient(base_url=url, timeout=60) as client,
        httpx.AsyncClient(timeout=10) as control,
    ):

        async def one_runtime(i: int, count: int) -> None:
            rng = random.Random(i)
            path = f"/api/runtimes/{fakes.runtime_id(i)}/workers"
            index = await first_answer(client, path)
            for k in range(count):
                worker_id = f"fresh-{k}"

                async def change(worker_id: str = worker_id) -> None:
                    (await control.put(fakes.control_url(i, worker_id))).raise_for_status()

                def visible(body: bytes, worker_id: str = worker_id) -> bool:
                    return any(w["worker_id"] == worker_id for w in _decode.decode(body)["items"])

                # A random phase against the poller: the previous change was seen just
                # after a poll, and the next one must not always land there too.
                await trio.sleep(rng.uniform(0, poll_interval))
                index, delay = await timed_change(
                    client, path, index, change, visible, rng, poll_interval * 5 + 10
                )
                delays.append(delay)

        async with trio.open_nursery() as nursery:
            for i in range(REMOTES):
                nursery.start_soon(one_runtime, i, -(-samples // REMOTES))
    return delays


def measure(samples: int = 200, poll_interval: float = 1.0) -> dict[str, Any]:
    floor = summary(baseline(samples))
    result: dict[str, Any] = {"baseline_held_request": floor}
    for name, run, target_ms in (
        ("local_file_write", local, TARGET_LOCAL_P99_MS),
        ("embedded_event", embedded, TARGET_EMBEDDED_P99_MS),
    ):
        row = summary(run(samples))
        row["p50_ratio"] = round(row["p50_ms"] / floor["p50_ms"], 2)
        row["p99_ratio"] = round(row["p99_ms"] / floor["p99_ms"], 2)
        row["target_p99_ms"] = target_ms
        result[name] = row
    row = summary(remote(samples, poll_interval))
    row["poll_interval_ms"] = poll_interval * 1000
    row["p99_over_interval"] = round(row["p99_ms"] / (poll_interval * 1000), 3)
    row["target_p99_ms"] = poll_interval * 1000 + 50
    result["remote_poll"] = row
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds")
    args = parser.parse_args()
    print(json.dumps(measure(args.samples, args.poll_interval), indent=2))


if __name__ == "__main__":
    main()
