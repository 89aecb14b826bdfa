"""Soak: mixed load and source churn for a long time; does anything grow, fail or go missing?

Usage, from the repository root (issue 9 asks for 30 minutes; not part of the test suite)::

    python benchmarks/soak.py [--minutes 30] [--readers 8] [--json PATH]

Three processes: fake yoi runtimes (``tests/fake_runtime.py``), the daemon (this file
re-run as ``--serve``: the real :class:`~yoi_registryd.daemon.Daemon` with its signals,
plus a task that samples the process from inside once a second), and this driver. The
daemon serves four kinds of source at once:

- a local source over a data dir that a thread keeps rewriting, adding and removing
  Worker directories in;
- remote runtimes whose workers the driver adds and removes through the fake's control
  routes, and whose whole process is frozen (SIGSTOP) for a few seconds every so often, so
  each runtime times out, goes unavailable and comes back;
- the built-in demo runtime, which changes its own workers every few hundred ms;
- a second local source that the driver adds and removes by rewriting the config and
  sending SIGHUP (a reload starts and stops a supervised source).

Meanwhile ``--readers`` clients list, page, look up, watch (blocking queries), operate on
demo workers, scrape metrics and probe. Every answer is checked against what that request
may get (a deliberate bad request must get its typed 4xx; nothing may get a 5xx other
than a documented gateway answer of an operation, and no request may fail in transport).

``SOAK_TRACEMALLOC=PATH`` also traces the daemon's allocations and writes to PATH the 25
places whose held memory grew most between two minutes in and the end.

Reported: the daemon's RSS, open file descriptors, trio tasks and threads after warm-up
and at the end; request counts, errors and latency percentiles; and audit records written
against requests answered on audited routes (they must be equal).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import free_port, host_info, percentile, start_announcing  # noqa: E402

OPEN_ROUTES = ("/livez", "/readyz", "/healthz", "/metrics")
"""Not audited (``http/security.py``); every other answer must have its audit record."""
FAKE_RUNTIMES = 10
FAKE_WORKERS = 5
LOCAL_WORKERS = 200
WATCH_WAIT_S = 5

# -- the daemon side (``--serve``) --------------------------------------------------------


def task_names(task: Any) -> Counter[str]:
    """Names of a task and all its descendants (a task's name is its function's)."""
    names = Counter([task.name.rsplit(".", 1)[-1]])
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            names.update(task_names(child))
    return names


def sample() -> dict[str, Any]:
    rss = next(
        line.split()[1]
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return {
        "t": time.monotonic(),
        "rss_mib": round(int(rss) / 1024, 1),
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": sum((names := task_names(trio.lowlevel.current_root_task())).values()),
        "task_names": dict(names),
        "threads": threading.active_count(),
    }


async def serve(config_path: Path, stats_path: Path) -> None:
    from yoi_registryd.config import load_config
    from yoi_registryd.daemon import Daemon

    daemon = Daemon(load_config(config_path), config_path=config_path)

    async def report() -> None:
        with stats_path.open("a") as out:
            while True:
                out.write(json.dumps(sample()) + "\n")
                out.flush()
                await trio.sleep(1.0)

    trace_to = os.environ.get("SOAK_TRACEMALLOC")
    if trace_to:
        # Where memory grows: allocations still held at the end, against those held two
        # minutes in (tracemalloc slows the daemon down several times over).
        tracemalloc.start(12)
    first: tracemalloc.Snapshot | None = None

    async def take_first() -> None:
        nonlocal first
        await trio.sleep(120)
        gc.collect()
        first = tracemalloc.take_snapshot()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        if trace_to:
            nursery.start_soon(take_first)
        await daemon.run(handle_signals=True)
        nursery.cancel_scope.cancel()
    if trace_to and first is not None:
        gc.collect()
        growth = tracemalloc.take_snapshot().compare_to(first, "traceback")
        await trio.Path(trace_to).write_text(
            "".join(
                f"{stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks\n"
                + "\n".join(stat.traceback.format(limit=12))
                + "\n\n"
                for stat in growth[:25]
            )
        )


# -- the driver -------------------------------------------------------------------------------


@dataclass
class Tally:
    requests: Counter[str] = field(default_factory=Counter)
    audited: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def record(
        self, kind: str, path: str, status: int | None, expected: set[int], took: float
    ) -> None:
        self.requests[kind] += 1
        self.latencies.append(took)
        if status is None or status not in expected:
            self.errors.append(f"{kind} {path}: {status}")
        if status is not None and not path.startswith(OPEN_ROUTES):
            self.audited += 1


@dataclass
class Setup:
    tmp: Path
    data: Path
    extra_data: Path
    run: Path
    config: Path
    stats: Path
    audit: Path
    port: int
    fake_ports: list[int]


def local_metadata(name: str, role: str) -> str:
    return json.dumps(
        {
            "worker_name": name,
            "workspace_root": "/srv/soak/workspace",
            "resolved_manifest_snapshot": {"role": role},
        }
    )


def write_worker(pods: Path, name: str, role: str) -> None:
    entry = pods / name
    entry.mkdir(parents=True, exist_ok=True)
    tmp = entry / "metadata.json.tmp"
    tmp.write_text(local_metadata(name, role))
    tmp.replace(entry / "metadata.json")


def write_config(setup: Setup, with_extra: bool) -> None:
    remote = "".join(
        f'[[sources]]\nkind = "remote"\nruntime_id = "remote-{i:02d}"\n'
        f'base_url = "http://127.0.0.1:{port}/rt-{i:03d}"\n'
        'poll_interval = "500ms"\ntimeout = "1s"\nbackoff_max = "2s"\n'
        'stale_after = "5s"\nexpire_after = "30s"\n'
        for i, port in enumerate(setup.fake_ports)
    )
    extra = (
        f'[[sources]]\nkind = "local"\nruntime_id = "soak-extra"\n'
        f'data_dir = "{setup.extra_data}"\nruntime_dir = "{setup.run}"\n'
        if with_extra
        else ""
    )
    text = (
        f'[server]\nlisten = ["127.0.0.1:{setup.port}"]\n'
        '[logging]\nlevel = "warning"\n'
        f'[audit]\npath = "{setup.audit}"\n'
        f'[[sources]]\nkind = "local"\ndata_dir = "{setup.data}"\nruntime_dir = "{setup.run}"\n'
        'rescan_interval = "10s"\n'
        '[[sources]]\nkind = "embedded"\nruntime_id = "demo"\nentry_point = "demo"\n'
        'options = { workers = 12, interval = "300ms", seed = 7 }\n' + remote + extra
    )
    tmp = setup.config.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(setup.config)


def churn_local(pods: Path, stop: threading.Event, rng: random.Random) -> None:
    """Rewrite, add and remove Worker directories, about 50 changes a second."""
    n = 0
    while not stop.wait(0.02):
        n += 1
        i = rng.randrange(LOCAL_WORKERS * 2)
        name = f"w{i:04d}"
        if i >= LOCAL_WORKERS and (pods / name).exists() and rng.random() < 0.5:
            shutil.rmtree(pods / name, ignore_errors=True)
        else:
            write_worker(pods, name, f"role-{n}")


async def call(
    client: httpx.AsyncClient,
    tally: Tally,
    kind: str,
    method: str,
    path: str,
    expected: set[int],
    **kwargs: Any,
) -> httpx.Response | None:
    """One request, checked against the statuses it may get and counted."""
    started = trio.current_time()
    try:
        response = await client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        tally.record(kind, f"{path} ({exc!r})", None, expected, trio.current_time() - started)
        return None
    tally.record(kind, path, response.status_code, expected, trio.current_time() - started)
    return response


async def reader(client: httpx.AsyncClient, tally: Tally, rng: random.Random, until: float) -> None:
    cursor: str | None = None
    while trio.current_time() < until:
        choice = rng.random()
        params: dict[str, str] = {}
        expected = {200}
        if choice < 0.25:
            kind = "list"
            path = rng.choice(["/api/runtimes", "/api/workers", "/api/hosts", "/api/sources"])
            params = {"limit": str(rng.choice([10, 100, 1000]))}
        elif choice < 0.40:
            kind, path = "page", "/api/workers"
            params = {"limit": "50", **({"cursor": cursor} if cursor else {})}
        elif choice < 0.60:
            kind = "detail"
            rid = rng.choice(["demo", "local-worker-runtime", "remote-00", "remote-01"])
            path = f"/api/runtimes/{rid}/workers"
        elif choice < 0.70:
            kind, path = "missing", f"/api/runtimes/nope-{rng.randrange(100)}"
            expected = {404}
        elif choice < 0.75:
            kind, path = "bad", "/api/workers"
            params, expected = {"limit": "0"}, {400}
        elif choice < 0.85:
            kind, path = "probe", rng.choice(list(OPEN_ROUTES))
            if path == "/readyz":
                expected = {200, 503}  # a source added by a reload holds it for its grace
        else:
            kind, path = "root", rng.choice(["/", "/openapi.json", "/api/runtimes/demo"])
        response = await call(client, tally, kind, "GET", path, expected, params=params)
        if kind == "page" and response is not None and response.status_code == 200:
            cursor = response.json()["next_cursor"]


async def watcher(client: httpx.AsyncClient, tally: Tally, until: float) -> None:
    """Blocking queries: each answer's index is the next request's."""
    index = "0"
    while trio.current_time() < until:
        params = {"index": index, "wait": f"{WATCH_WAIT_S}s"}
        response = await call(client, tally, "watch", "GET", "/api/workers", {200}, params=params)
        if response is not None:
            index = response.headers.get("X-Registry-Index", index)


async def operator(
    client: httpx.AsyncClient, tally: Tally, rng: random.Random, until: float
) -> None:
    """Operations on demo workers; a worker that already ended or went is a typed 4xx."""
    while trio.current_time() < until:
        await trio.sleep(0.2)
        listing = "/api/runtimes/demo/workers"
        response = await call(client, tally, "operate-list", "GET", listing, {200})
        listed = response.json()["items"] if response is not None else []
        if not listed:
            continue
        worker = rng.choice(listed)["worker_id"]
        op = rng.choice(["input", "input", "stop", "cancel"])
        body = {"kind": "user", "content": "soak"} if op == "input" else {}
        path = f"{listing}/{worker}/{op}"
        # 404: the worker went; 409: it ended; 501: it can no longer take this operation.
        await call(client, tally, "operate", "POST", path, {200, 404, 409, 501}, json=body)


async def churn_remote(fake_port: int, rng: random.Random, until: float) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{fake_port}", timeout=5) as fake:
        n = 0
        while trio.current_time() < until:
            await trio.sleep(0.1)
            n += 1
            prefix = f"/rt-{rng.randrange(FAKE_RUNTIMES):03d}"
            worker = f"x-{rng.randrange(20)}"
            method = rng.choice(["PUT", "DELETE"])
            with trio.move_on_after(2):  # the fake may be frozen right now
                await fake.request(method, f"/_control{prefix}/workers/{worker}")


async def freeze_remote(fake_pid: int, every: float, until: float) -> int:
    """SIGSTOP the fake runtimes for a few seconds every ``every`` seconds."""
    freezes = 0
    while trio.current_time() + every < until:
        await trio.sleep(every)
        os.kill(fake_pid, signal.SIGSTOP)
        await trio.sleep(3)
        os.kill(fake_pid, signal.SIGCONT)
        freezes += 1
    return freezes


async def reload_sources(setup: Setup, daemon_pid: int, every: float, until: float) -> int:
    reloads = 0
    while trio.current_time() + every < until:
        await trio.sleep(every)
        reloads += 1
        write_config(setup, with_extra=reloads % 2 == 1)
        os.kill(daemon_pid, signal.SIGHUP)
    return reloads


def read_stats(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def drive(
    args: argparse.Namespace, setup: Setup, fake_pid: int, daemon: subprocess.Popen[bytes]
) -> dict[str, Any]:
    daemon_pid = daemon.pid
    tally = Tally()
    limits = httpx.Limits(max_connections=args.readers + 8)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{setup.port}", timeout=30, limits=limits
    ) as client:
        deadline = trio.current_time() + 60
        while True:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if daemon.poll() is not None or trio.current_time() > deadline:
                raise RuntimeError(f"the daemon did not become ready; see {setup.tmp}")
            await trio.sleep(0.1)
        await trio.sleep(2)
        idle_before = read_stats(setup.stats)[-1]
        started = trio.current_time()
        measured_from = time.monotonic() + args.warmup
        until = started + args.warmup + args.minutes * 60
        stop_local = threading.Event()
        local = threading.Thread(
            target=churn_local, args=(setup.data / "pods", stop_local, random.Random(1))
        )
        local.start()
        results: dict[str, int] = {}
        try:
            async with trio.open_nursery() as nursery:
                for i in range(args.readers):
                    nursery.start_soon(reader, client, tally, random.Random(args.seed + i), until)
                for _ in range(2):
                    nursery.start_soon(watcher, client, tally, until)
                nursery.start_soon(operator, client, tally, random.Random(args.seed - 1), until)
                nursery.start_soon(churn_remote, setup.fake_ports[0], random.Random(2), until)

                async def count(name: str, fn: Any, *a: Any) -> None:
                    results[name] = await fn(*a)

                nursery.start_soon(
                    count, "freezes", freeze_remote, fake_pid, args.freeze_every, until
                )
                nursery.start_soon(
                    count, "reloads", reload_sources, setup, daemon_pid, args.reload_every, until
                )
        finally:
            stop_local.set()
            local.join()
        elapsed = trio.current_time() - started - args.warmup
        measured_to = time.monotonic()
    # Back to the configuration it started with; the load's connections are closed, and
    # held watches end within their wait.
    write_config(setup, with_extra=False)
    os.kill(daemon_pid, signal.SIGHUP)
    await trio.sleep(WATCH_WAIT_S * 1.1 + 2)
    samples = read_stats(setup.stats)
    loaded = [x for x in samples if measured_from <= x["t"] <= measured_to]
    return {
        "tally": tally,
        "samples": {
            "idle_before": idle_before,
            "loaded_start": loaded[0],
            "loaded_end": loaded[-1],
            "idle_after": samples[-1],
        },
        # The shape of memory under load: growth that levels off (allocator and caches
        # warming up) reads differently from growth that goes on (a leak).
        "rss_mib_by_tenth": [
            loaded[min(len(loaded) - 1, i * (len(loaded) - 1) // 10)]["rss_mib"] for i in range(11)
        ],
        "elapsed": elapsed,
        **results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load before")
    parser.add_argument("--freeze-every", type=float, default=60.0)
    parser.add_argument("--reload-every", type=float, default=45.0)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG", "STATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
        trio.run(serve, Path(args.serve[0]), Path(args.serve[1]))
        return

    tmp = Path(tempfile.mkdtemp(prefix="yoi-soak-"))
    fake, fake_ports = start_announcing(
        [
            *(sys.executable, "-m", "tests.fake_runtime"),
            *("--runtimes", str(FAKE_RUNTIMES), "--workers", str(FAKE_WORKERS)),
        ]
    )
    setup = Setup(
        tmp=tmp,
        data=tmp / "data",
        extra_data=tmp / "extra",
        run=tmp / "run",
        config=tmp / "config.toml",
        stats=tmp / "stats.jsonl",
        audit=tmp / "audit.jsonl",
        port=free_port(),
        fake_ports=[int(p) for p in fake_ports],
    )
    for pods in (setup.data / "pods", setup.extra_data / "pods"):
        for i in range(LOCAL_WORKERS):
            write_worker(pods, f"w{i:04d}", "initial")
    setup.run.mkdir()
    write_config(setup, with_extra=False)
    log = (tmp / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(setup.config), str(setup.stats)],
        cwd=ROOT,
        stderr=log,
    )
    try:
        figures = trio.run(drive, args, setup, fake.pid, daemon)
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
        fake.send_signal(signal.SIGCONT)
        fake.terminate()
        fake.wait(10)
    tally: Tally = figures.pop("tally")
    records = len(setup.audit.read_text().splitlines())
    ms = [x * 1000 for x in tally.latencies if x > 0] or [0.0]
    report = {
        "host": host_info(),
        "minutes": round(figures["elapsed"] / 60, 2),
        "load_seconds": round(figures["elapsed"] + args.warmup, 1),
        "note": "requests and audit figures cover all the load, warm-up included",
        "readers": args.readers,
        "daemon_exit_code": code,
        "requests": sum(tally.requests.values()),
        "requests_by_kind": dict(tally.requests),
        "request_errors": len(tally.errors),
        "first_errors": tally.errors[:10],
        "latency_ms": {
            "p50": round(percentile(ms, 50), 2),
            "p99": round(percentile(ms, 99), 2),
            "max": round(max(ms), 2),
        },
        "audited_requests_answered": tally.audited,
        "audit_records": records,
        "remote_freezes": figures.get("freezes", 0),
        "reloads": figures.get("reloads", 0),
        "rss_mib_by_tenth_of_the_load": figures["rss_mib_by_tenth"],
        **{
            name: {k: v for k, v in sample.items() if k not in ("t", "task_names")}
            for name, sample in figures["samples"].items()
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if not os.environ.get("SOAK_KEEP"):
        shutil.rmtree(tmp, ignore_errors=True)
    ok = not tally.errors and records == tally.audited and code == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
