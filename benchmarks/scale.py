"""Scale: 1,000 runtime sources, 100,000 workers, against the same daemon at 1/100 of that.

Run: ``python benchmarks/scale.py [--sources 1000] [--workers-per-source 100] [--remote-share 0.2]``

The daemon runs as its own process (this file with ``--serve``, so that the benchmark's
embedded runtimes live in the daemon's process as embedded runtimes do). Its sources are a
mix: embedded memory runtimes (``ScaleRuntime`` below) and fake remote runtimes served by
``tests/fake_runtime.py`` in a separate process, polled over HTTP with bearer tokens, each
runtime holding ``--workers-per-source`` workers. The same measurements run twice in one
run: at the baseline scale (1/100 of the sources, so 1,000 workers) and at full scale.

Measured, per scale:

* start-up: process start to ``/readyz`` answering 200, and to every worker of every
  source being in the registry;
* resident memory after start-up and at the end (peak, ``VmHWM``);
* idle CPU: the daemon's CPU time over a window with no API traffic and no changes, in
  percent of one core. The fake runtimes' own CPU is another process and not counted; the
  daemon's polling of them is, and the polls per second in the window are reported;
* CPU under churn: ``--churn-rate`` worker changes per second (renames of random workers of
  random embedded runtimes, made inside the daemon's process as a runtime's own events);
* the time to apply one change: a worker is renamed in an embedded runtime and the clock
  stops when a published snapshot holds it (sequentially, one change at a time); p50/p99.

And once: the default configuration's start-up to ``/readyz``, against stock
hypercorn-trio's start-up to its first answer.

The daemon's process is driven over stdin/stdout with one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from harness import (
    ROOT,
    CpuWindow,
    DaemonProcess,
    FakeRemotes,
    StockHypercorn,
    free_port,
    percentile,
    rss_mb,
    source_toml,
    toml_value,
)

# -- the daemon's process -----------------------------------------------------------------

RUNTIMES: dict[str, Any] = {}
"""Embedded runtimes built in this process, by runtime id (the ``key`` option)."""


def _scale_runtime_class() -> Any:
    from yoi_registryd.runtimes import MemoryRuntime

    class ScaleRuntime(MemoryRuntime):
        """A memory runtime holding ``workers`` workers ``w-0000``...; changed from outside."""

        def __init__(self, *, key: str, workers: int) -> None:
            super().__init__(display_name=f"scale {key}")
            for i in range(workers):
                self.spawn(f"w-{i:04d}", display_name=f"worker {i}")
            RUNTIMES[key] = self

    return ScaleRuntime


ScaleRuntime: Any = None  # built in the --serve process: the factory is "__main__:ScaleRuntime"


async def _serve(config_text: str, port: int, workers_per_source: int) -> None:
    global ScaleRuntime
    ScaleRuntime = _scale_runtime_class()
    import socket

    import trio

    from yoi_registryd.config import parse_config
    from yoi_registryd.daemon import Daemon

    config = parse_config(config_text)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    daemon = Daemon(config)
    actor = daemon.actor

    def reply(**values: Any) -> None:
        print(json.dumps(values), flush=True)

    def stats() -> dict[str, Any]:
        snapshot = actor.snapshot
        entries = snapshot.runtimes.values()
        kinds: dict[str, int] = {}
        for e in entries:
            kinds[e.record.source.kind] = kinds.get(e.record.source.kind, 0) + e.stats.successes
        return {
            "revision": snapshot.revision,
            "runtimes": len(snapshot.runtimes),
            "observed": sum(1 for e in entries if e.stats.observed),
            "workers": sum(len(e.workers) for e in entries),
            "observations": kinds,
            "publishes": actor.publish_count,
            "publish_s": actor.publish_seconds_total,
        }

    async def churn(rate: float, seconds: float) -> dict[str, Any]:
        rng = random.Random(11)
        names = sorted(RUNTIMES)
        started = trio.current_time()
        made = 0
        while (now := trio.current_time()) - started < seconds:
            due = int((now - started) * rate) - made
            for _ in range(due):
                runtime = RUNTIMES[rng.choice(names)]
                runtime.rename(f"w-{rng.randrange(workers_per_source):04d}", f"churn {made}")
                made += 1
            await trio.sleep(0.005)
        return {"changes": made, "seconds": trio.current_time() - started}

    async def apply(samples: int) -> dict[str, Any]:
        rng = random.Random(13)
        names = sorted(RUNTIMES)
        times: list[float] = []
        publishes, publish_s = actor.publish_count, actor.publish_seconds_total
        for k in range(samples):
            rid = rng.choice(names)
            wid = f"w-{rng.randrange(workers_per_source):04d}"
            label = f"apply {k}"
            revision = actor.snapshot.revision
            started = time.perf_counter()
            RUNTIMES[rid].rename(wid, label)
            while True:
                snapshot = await actor.wait_for_change(revision)
                revision = snapshot.revision
                if snapshot.runtimes[rid].workers[wid].label == label:
                    break
            times.append(time.perf_counter() - started)
            await trio.sleep(0.002)  # one change at a time, never a burst
        count = actor.publish_count - publishes
        return {
            "samples": len(times),
            "p50_us": round(statistics.median(times) * 1e6, 1),
            "p99_us": round(percentile(times, 99) * 1e6, 1),
            "publish_mean_us": round((actor.publish_seconds_total - publish_s) / count * 1e6, 1)
            if count
            else None,
        }

    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run, [sock])
        reply(event="listening")
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            name = command["cmd"]
            if name == "stats":
                reply(**stats())
            elif name == "churn":
                reply(**await churn(command["rate"], command["seconds"]))
            elif name == "apply":
                reply(**await apply(command["samples"]))
            elif name == "quit":
                break
        daemon.shutdown.set()


# -- the driver ---------------------------------------------------------------------------


class ScaleDaemon:
    def __init__(self, config: Path, workers_per_source: int) -> None:
        self.port = free_port()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                *(sys.executable, __file__, "--serve", str(config)),
                *("--port", str(self.port), "--workers-per-source", str(workers_per_source)),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(config.parent / "daemon.log").open("w"),
            text=True,
        )
        event = self._read()
        assert event.get("event") == "listening", event

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the scale daemon exited; see daemon.log")
        result: dict[str, Any] = json.loads(line)
        return result

    def ask(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask_quit()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired, RuntimeError):
                self.proc.kill()
                self.proc.wait()

    def ask_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_config(
    path: Path,
    embedded: int,
    remote: int,
    workers: int,
    fakes: FakeRemotes | None,
    poll_interval: str,
) -> None:
    parts = [
        '[logging]\nlevel = "warning"\n',
        f"[audit]\npath = {toml_value(str(path.parent / 'audit.jsonl'))}\n",
    ]
    for i in range(embedded):
        rid = f"emb-{i:04d}"
        parts.append(
            source_toml(
                "embedded",
                runtime_id=rid,
                factory="__main__:ScaleRuntime",
                options={"key": rid, "workers": workers},
            )
        )
    for i in range(remote):
        assert fakes is not None
        parts.append(
            source_toml(
                "remote",
                runtime_id=fakes.runtime_id(i),
                base_url=fakes.base_url(i),
                token_file=str(fakes.token_file),
                poll_interval=poll_interval,
                stale_after="5m",
                expire_after="30m",
            )
        )
    path.write_text("\n".join(parts))


def run_scale(
    tmp: Path,
    sources: int,
    remote: int,
    workers: int,
    fakes: FakeRemotes | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    embedded = sources - remote
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "config.toml"
    write_config(config, embedded, remote, workers, fakes, args.poll_interval)
    expected = sources * workers
    daemon = ScaleDaemon(config, workers)
    try:
        ready_s = None
        deadline = time.monotonic() + args.startup_deadline
        with httpx.Client(base_url=f"http://127.0.0.1:{daemon.port}", timeout=10) as client:
            while ready_s is None:
                try:
                    if client.get("/readyz").status_code == 200:
                        ready_s = time.monotonic() - daemon.started
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the daemon was not ready in time")
                time.sleep(0.05)
        while True:
            stats = daemon.ask("stats")
            if stats["workers"] == expected and stats["observed"] == sources:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every worker appeared: {stats}")
            time.sleep(0.05)
        all_workers_s = time.monotonic() - daemon.started
        rss_start = rss_mb(daemon.proc.pid)
        time.sleep(args.settle)
        before = daemon.ask("stats")
        idle = CpuWindow(daemon.proc.pid)
        time.sleep(args.idle_seconds)
        idle_cpu = idle.share()
        after = daemon.ask("stats")
        polls = after["observations"].get("remote_http", 0) - before["observations"].get(
            "remote_http", 0
        )
        busy = CpuWindow(daemon.proc.pid)
        churn = daemon.ask("churn", rate=args.churn_rate, seconds=args.churn_seconds)
        churn_cpu = busy.share()
        time.sleep(1)
        apply = daemon.ask("apply", samples=args.apply_samples)
        return {
            "sources": sources,
            "embedded": embedded,
            "remote": remote,
            "workers": expected,
            "ready_s": round(ready_s, 2),
            "all_workers_s": round(all_workers_s, 2),
            "rss_mb": round(rss_start, 1),
            "peak_rss_mb": round(peak_rss_mb(daemon.proc.pid), 1),
            "idle_cpu_pct": round(idle_cpu, 2),
            "idle_remote_polls_per_s": round(polls / args.idle_seconds, 1),
            "churn_rate_achieved": round(churn["changes"] / churn["seconds"]),
            "churn_cpu_pct": round(churn_cpu, 1),
            "apply_p50_us": apply["p50_us"],
            "apply_p99_us": apply["p99_us"],
            "publish_mean_us": apply["publish_mean_us"],
        }
    finally:
        daemon.close()


def default_startup(runs: int) -> dict[str, Any]:
    """Start-up of the default configuration (no ``[[sources]]``: one local source on the
    default data dir, here an empty temporary ``$HOME``) to ``/readyz`` answering 200,
    against stock hypercorn-trio's start-up to its first answer (the bare app), alternating;
    the median of ``runs`` each."""
    import shutil
    import tempfile

    daemon_s: list[float] = []
    stock_s: list[float] = []
    for _ in range(runs):
        with StockHypercorn() as stock:
            stock_s.append(stock.serving_after)
        home = Path(tempfile.mkdtemp(prefix="yoi-bench-home-"))
        env = {"HOME": str(home), "YOI_DATA_DIR": "", "YOI_HOME": "", "YOI_RUNTIME_DIR": ""}
        try:
            with DaemonProcess("", env=env) as daemon:
                daemon_s.append(daemon.wait_ready())
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return {
        "runs": runs,
        "ready_s": round(statistics.median(daemon_s), 2),
        "rounds_ready_s": [round(x, 2) for x in daemon_s],
        "stock_serving_s": round(statistics.median(stock_s), 2),
        "rounds_stock_serving_s": [round(x, 2) for x in stock_s],
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    full_remote = round(args.sources * args.remote_share)
    base_sources = max(2, args.sources // 100)
    base_remote = max(1, round(base_sources * args.remote_share)) if full_remote else 0
    fakes = FakeRemotes(full_remote, args.workers_per_source).start() if full_remote else None
    tmp = Path(tempfile.mkdtemp(prefix="yoi-bench-scale-"))
    try:
        base = run_scale(
            tmp / "base", base_sources, base_remote, args.workers_per_source, fakes, args
        )
        full = run_scale(
            tmp / "full", args.sources, full_remote, args.workers_per_source, fakes, args
        )
    finally:
        if fakes is not None:
            fakes.stop()

    def ratio(key: str) -> float | None:
        return round(full[key] / base[key], 2) if base[key] else None

    default = default_startup(args.default_runs)
    return {
        "default_config": default,
        "baseline": base,
        "full": full,
        "ratios": {
            key: ratio(key)
            for key in (
                "ready_s",
                "all_workers_s",
                "rss_mb",
                "idle_cpu_pct",
                "churn_cpu_pct",
                "apply_p50_us",
                "apply_p99_us",
                "publish_mean_us",
            )
        },
        "poll_interval": args.poll_interval,
        "targets": {
            "rss_mb": 200,
            "idle_cpu_pct": 5,
            "apply_ratio_100k_vs_1k": 2,
            "ready_s": 3,
            "default_ready_s": 1,
        },
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--workers-per-source", type=int, default=100)
    parser.add_argument("--remote-share", type=float, default=0.2)
    parser.add_argument("--poll-interval", default="30s", help="of the remote sources")
    parser.add_argument("--idle-seconds", type=float, default=15)
    parser.add_argument("--settle", type=float, default=3)
    parser.add_argument("--churn-rate", type=float, default=1000)
    parser.add_argument("--churn-seconds", type=float, default=10)
    parser.add_argument("--apply-samples", type=int, default=300)
    parser.add_argument("--startup-deadline", type=float, default=240)
    parser.add_argument("--default-runs", type=int, default=3, help="default-config start-ups")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import trio

        trio.run(_serve, Path(args.serve).read_text(), args.port, args.workers_per_source)
        return
    print(json.dumps(measure(args), indent=2))


if __name__ == "__main__":
    main()
