"""CPU cost and freshness of the remote source with many runtimes (issue 3).

Usage, from the repository root::

    python benchmarks/remote_freshness.py [--runtimes 200] [--interval 1s] \\
        [--cpu-seconds 30] [--changes 200] [--workers 2]

Three processes: fake yoi runtimes (``tests/fake_runtime.py``: one hypercorn server, each
runtime on its own loopback port as separate runtime processes would be, bearer token
required), the daemon
(``python -m yoi_registryd serve`` with a generated config polling every runtime at
``--interval``), and this driver.

1. CPU: once every runtime is ``available`` and after a short warm-up, nobody queries the
   daemon; its CPU time (utime + stime from ``/proc/<pid>/stat``) is read over
   ``--cpu-seconds`` of wall time. The share is CPU seconds per wall second, in percent of
   one core. The fake process is measured over the same window, for context.
2. Freshness: the driver adds a new worker to a random runtime every 20-80 ms (through the
   fake's control route) and polls ``GET /api/workers?limit=1000`` every 10 ms. The delay
   of a change is the time from just before the change was made to the first listing that
   shows it (so it is over-estimated by the control request and the 10 ms listing period,
   never under-estimated). Prints p50 / p90 / p99 / max.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_runtime import runtime_prefix  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(
    path: Path, fake_ports: list[int], daemon_port: int, args: argparse.Namespace
) -> None:
    lines = [
        "[server]",
        f'listen = ["127.0.0.1:{daemon_port}"]',
        "[logging]",
        'level = "warning"',
    ]
    for i in range(args.runtimes):
        lines += [
            "[[sources]]",
            'kind = "remote"',
            f'runtime_id = "bench-{i:03d}"',
            f'base_url = "http://127.0.0.1:{fake_ports[i]}{runtime_prefix(i)}"',
            f'token_file = "{args.token_file}"',
            f'poll_interval = "{args.interval}"',
            'timeout = "5s"',
            'stale_after = "60s"',
            'expire_after = "10m"',
        ]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Window:
    wall: float
    daemon_cpu: float
    fake_cpu: float

    def share(self, cpu: float) -> float:
        return 100.0 * cpu / self.wall


async def measure_cpu(daemon_pid: int, fake_pid: int, seconds: float) -> Window:
    wall0, d0, f0 = trio.current_time(), cpu_seconds(daemon_pid), cpu_seconds(fake_pid)
    await trio.sleep(seconds)
    wall1, d1, f1 = trio.current_time(), cpu_seconds(daemon_pid), cpu_seconds(fake_pid)
    return Window(wall1 - wall0, d1 - d0, f1 - f0)


async def wait_all_available(client: httpx.AsyncClient, n: int, deadline: float) -> None:
    with trio.fail_after(deadline):
        while True:
            try:
                body = (await client.get("/api/runtimes", params={"limit": 1000})).json()
                ready = sum(1 for r in body["items"] if r["registry_status"] == "available")
                if ready == n:
                    return
            except httpx.HTTPError:
                pass
            await trio.sleep(0.2)


async def freshness(
    daemon: httpx.AsyncClient, fake: httpx.AsyncClient, args: argparse.Namespace
) -> list[float]:
    rng = random.Random(7)
    pending: dict[tuple[str, str], float] = {}
    delays: list[float] = []
    done = trio.Event()

    async def change() -> None:
        for i in range(args.changes):
            index = rng.randrange(args.runtimes)
            worker_id = f"bench-new-{i}"
            key = (f"bench-{index:03d}", worker_id)
            pending[key] = trio.current_time()
            response = await fake.put(f"/_control{runtime_prefix(index)}/workers/{worker_id}")
            response.raise_for_status()
            await trio.sleep(rng.uniform(0.02, 0.08))

    async def watch() -> None:
        while not done.is_set():
            response = await daemon.get("/api/workers", params={"limit": 1000})
            now = trio.current_time()
            body = response.json()
            assert body.get("next_cursor") is None, "more workers than one page"
            for item in body["items"]:
                key = (item["runtime_id"], item["worker_id"])
                made = pending.pop(key, None)
                if made is not None:
                    delays.append(now - made)
            if len(delays) == args.changes:
                done.set()
            await trio.sleep(0.01)

    with trio.fail_after(60 + args.changes):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await change()
            await done.wait()
    return delays


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


@dataclass
class Processes:
    fake: subprocess.Popen[str]
    daemon: subprocess.Popen[bytes]
    fake_ports: list[int]
    daemon_port: int
    tmp: Path


def start_processes(args: argparse.Namespace) -> Processes:
    tmp = Path(tempfile.mkdtemp(prefix="yoi-remote-bench-"))
    token_file = tmp / "token"
    token_file.write_text("bench-token-" + os.urandom(8).hex() + "\n")
    args.token_file = str(token_file)
    daemon_port = free_port()
    fake = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.fake_runtime"),
            *("--runtimes", str(args.runtimes), "--workers", str(args.workers)),
            *("--token-file", str(token_file)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert fake.stdout is not None
    ready = fake.stdout.readline().split()
    assert ready and ready[0] == "READY", ready
    fake_ports = [int(p) for p in ready[1:]]
    config = tmp / "config.toml"
    write_config(config, fake_ports, daemon_port, args)
    with (tmp / "daemon.log").open("w") as daemon_log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "yoi_registryd", "--config", str(config), "serve"],
            cwd=ROOT,
            stderr=daemon_log,
        )
    return Processes(fake, daemon, fake_ports, daemon_port, tmp)


async def run(args: argparse.Namespace, procs: Processes) -> None:
    daemon_url = f"http://127.0.0.1:{procs.daemon_port}"
    async with (
        httpx.AsyncClient(base_url=daemon_url, timeout=10) as daemon,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{procs.fake_ports[0]}", timeout=10) as fake,
    ):
        started = trio.current_time()
        await wait_all_available(daemon, args.runtimes, deadline=120)
        print(
            f"all {args.runtimes} runtimes available after "
            f"{trio.current_time() - started:.1f}s; warming up {args.warmup}s"
        )
        await trio.sleep(args.warmup)
        idle = await measure_cpu(procs.daemon.pid, procs.fake.pid, args.cpu_seconds)
        busy_start = (trio.current_time(), cpu_seconds(procs.daemon.pid))
        delays = await freshness(daemon, fake, args)
        busy_wall = trio.current_time() - busy_start[0]
        busy_cpu = cpu_seconds(procs.daemon.pid) - busy_start[1]
        body = (await daemon.get("/api/runtimes", params={"limit": 1000})).json()
        unavailable = [
            r["runtime_id"] for r in body["items"] if r["registry_status"] != "available"
        ]

    ms = [d * 1000 for d in delays]
    print(f"host: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(
        f"runtimes: {args.runtimes} x {args.workers} workers, poll interval {args.interval}, "
        f"one fake process, daemon as its own process"
    )
    print(
        f"daemon CPU (no API traffic, {idle.wall:.1f}s): {idle.share(idle.daemon_cpu):.1f}% "
        f"of one core ({idle.daemon_cpu:.2f} CPU-s); fake runtimes process: "
        f"{idle.share(idle.fake_cpu):.1f}%"
    )
    print(
        f"daemon CPU during the freshness phase (listing /api/workers every 10 ms): "
        f"{100 * busy_cpu / busy_wall:.1f}%"
    )
    print(
        f"change -> visible on /api/workers over {len(ms)} changes: "
        f"p50 {statistics.median(ms):.0f} ms, p90 {percentile(ms, 90):.0f} ms, "
        f"p99 {percentile(ms, 99):.0f} ms, max {max(ms):.0f} ms"
    )
    if unavailable:
        print(f"WARNING: not available at the end: {unavailable[:10]}")
    print(f"(config and daemon log in {procs.tmp})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runtimes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="workers per runtime at start")
    parser.add_argument("--interval", default="1s", help="poll_interval of every source")
    parser.add_argument("--cpu-seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--changes", type=int, default=200)
    args = parser.parse_args()
    procs = start_processes(args)
    try:
        trio.run(run, args, procs)
    finally:
        for proc in (procs.daemon, procs.fake):
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
