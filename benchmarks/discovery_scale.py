"""Discovery at scale: 10,000 runtimes found through a real etcd (issue 18, item 4).

Run, from the repository root (``etcd`` from the Debian package ``etcd-server``)::

    python benchmarks/discovery_scale.py [--runtimes 10000] [--baseline 100] \\
        [--samples 200] [--idle-seconds 20] [--poll-interval 10m] [--json PATH] \\
        [--profile SECONDS] [--profile-phase additions|startup]

One run measures two sizes one after the other, the baseline (``--baseline`` runtimes) first,
each against its own fresh etcd and daemon; the fake runtimes are shared. Four processes:

* etcd on loopback ports, its data in a temporary directory under ``/dev/shm`` (etcd 3.4 has
  no switch to skip fsync: on tmpfs its fsync costs nothing, so a disk shared with other
  processes does not time the puts);
* the fake runtimes: this script's ``--serve-fake`` child, one hypercorn server on one port
  where the path prefix ``/rt/<n>`` selects the runtime (``tests/fake_runtime.py``'s app:
  the current REST v1 protocol, the local bearer token, one worker each), counting the
  requests it answers;
* the daemon, ``python -m yoi_registryd serve`` with no ``[[sources]]`` and one
  ``kind = "etcd"`` ``[[discovery]]`` entry;
* this driver.

Per size, in order:

1. **Registered.** Every runtime is one key under ``/yoi/runtimes/`` holding its JSON
   description, each put with its own lease (one hour: the run ends long before, so no
   keep-alive is needed). The keys are written before the daemon starts: it reads them with
   its first range request, as a daemon (re)started against a populated etcd does.
2. **Start-up.** Process start to every runtime listed on ``/api/runtimes`` (paged, every
   0.5 s), and to the end of the sources' first looks at their runtimes: the first 2 s window
   in which the fake answers at most three times the steady polling (a look that failed is
   tried again one poll interval later). How many runtimes are ``available`` (observed once)
   then is reported too.
3. **Idle.** With nothing changing and nobody asking, the daemon's CPU time (utime + stime of
   ``/proc/<pid>/stat``) over ``--idle-seconds`` of wall time, in percent of one core, and
   its RSS (``VmRSS``; ``VmHWM``, the peak, too) at the end of that window. The fake's request
   count over the same window gives the polls that CPU paid for.
4. **Key written -> runtime listed**, ``--samples`` times, one addition at a time: a new key
   (with its own lease) for a runtime whose id sorts before every other, while a blocking
   query ``GET /api/runtimes?limit=1&index=<last X-Registry-Index>&wait=30s`` is held (it
   wakes only when that one-item page changes, so the driver's own reads cost the daemon
   almost nothing whatever the size). The clock starts just before the put is sent and stops
   when an answer listing the new runtime arrives: it includes etcd's put and its watch
   delivery, never under-estimates. Before the next sample the driver waits until the new
   runtime is ``available`` (its source started and polled it once), then 0-50 ms. The
   daemon's CPU time over the whole phase, less the idle rate, divided by the samples, is
   the CPU one addition costs.

The figures of the full size are reported with their ratio to the baseline's (same run).

Polling: every discovered runtime is polled every ``--poll-interval`` (10 minutes by
default). The fake runtimes do not serve the event subscription, so each one is polled: a
subscribed runtime is pinged every 10 s (at 10,000 runtimes, 1,000 pings a second), which
would be the idle cost measured instead of the registry's; a long poll interval keeps the
steady polling small (10,000 / 600 s = 17 polls a second) and it is reported next to the CPU.
Each remote source still looks at its runtime once at start (runtime summary, the refused
subscription upgrade, the workers), which is the start-up figure's main cost.

``--profile SECONDS`` records the daemon with py-spy (``pip install -e ".[bench]"``) for that
long during the full size's additions (or, with ``--profile-phase startup``, from its start),
into ``benchmarks/results/discovery_scale.svg``.
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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio
from harness import (
    BENCH_DIR,
    DaemonProcess,
    cpu_seconds,
    end_process,
    host_info,
    percentile,
    start_announcing,
)

from tests.etcd_member import ETCD, EtcdMember
from yoi_registryd.config import Duration

PREFIX = "/yoi/runtimes/"
LEASE_TTL_S = 3600
WAIT = "30s"
_decode = msgspec.json.Decoder(dict[str, Any])


def runtime_id(index: int) -> str:
    return f"rt-{index:05d}"


def sample_id(index: int, samples: int) -> str:
    """Each sample's id sorts before every runtime and every earlier sample."""
    return f"add-{samples - index:05d}"


def now_ms() -> float:
    return time.monotonic_ns() / 1e6


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


# -- the fake runtimes (a child process) ---------------------------------------------------


def serve_fake(runtimes: int, samples: int, token: str) -> None:
    """Serve ``runtimes`` at ``/rt/<n>`` and ``samples`` at ``/add/<n>`` on one port; print
    ``READY <port>``. ``GET /_stats`` answers the requests served so far."""
    from tests.fake_runtime import (
        Discard,
        FakeRuntimeApp,
        FakeServer,
        current_runtime,
        new_worker_id,
    )

    class CountingApp(FakeRuntimeApp):
        requests = 0

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] == "/_stats":
                body = json.dumps({"requests": self.requests}).encode()
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": body})
                return
            if scope["type"] in ("http", "websocket"):
                self.requests += 1
            await super().__call__(scope, receive, send)

    app = CountingApp()
    mounts = [(f"/rt/{i}", runtime_id(i)) for i in range(runtimes)]
    mounts += [(f"/add/{i}", sample_id(i, samples)) for i in range(samples)]
    for prefix, rid in mounts:
        runtime = current_runtime(rid, token=token)
        runtime.add(new_worker_id())
        runtime.requests = Discard()
        runtime.auth_headers = Discard()
        runtime.contexts = Discard()
        app.mount(prefix, runtime)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await FakeServer(app).start(nursery)
            print("READY", server.port, flush=True)

    trio.run(main)


@dataclass
class Fake:
    proc: subprocess.Popen[str]
    port: int

    @classmethod
    def start(cls, runtimes: int, samples: int, token_file: Path) -> Fake:
        proc, (port, *_) = start_announcing(
            [
                *(sys.executable, __file__, "--serve-fake", str(runtimes)),
                *("--samples", str(samples), "--token-file", str(token_file)),
            ]
        )
        return cls(proc, int(port))

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}{prefix}"

    async def requests(self, client: httpx.AsyncClient) -> int:
        answer = await client.get(self.url("/_stats"))
        count: int = answer.json()["requests"]
        return count


# -- etcd ----------------------------------------------------------------------------------


class Etcd:
    """One etcd member on loopback (``tests/etcd_member.py``), its data on tmpfs."""

    def __init__(self) -> None:
        shm = Path("/dev/shm")
        self.dir = Path(
            tempfile.mkdtemp(prefix="yoi-bench-etcd-", dir=shm if shm.is_dir() else None)
        )
        self.member = EtcdMember(self.dir / "data", name="bench")
        self.url = self.member.url
        self.member.start()

    async def ready(self, deadline_s: float = 30) -> None:
        await self.member.ready(deadline_s)

    async def put_runtime(
        self, client: httpx.AsyncClient, rid: str, base_url: str, lease: str
    ) -> None:
        value = {"runtime_id": rid, "base_url": base_url, "label": f"bench {rid}"}
        await self.member.put(PREFIX + rid, value, lease, client)

    async def lease(self, client: httpx.AsyncClient) -> str:
        return await self.member.grant(LEASE_TTL_S, client)

    def stop(self) -> None:
        self.member.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- one size ------------------------------------------------------------------------------


@dataclass
class SizeResult:
    runtimes: int
    register_s: float
    listed_after_s: float
    settled_after_s: float
    available_at_idle: int
    idle_cpu_percent: float
    idle_fake_requests_per_s: float
    rss_mib: float
    hwm_mib: float
    samples: int
    listed_p50_ms: float
    listed_p99_ms: float
    listed_max_ms: float
    put_p50_ms: float
    cpu_ms_per_addition: float
    load_avg_1m: float


def daemon_config(etcd: Etcd, token_file: Path, poll_interval: str, limit: int) -> str:
    return f"""
[[discovery]]
kind = "etcd"
name = "etcd"
endpoints = ["{etcd.url}"]
prefix = "{PREFIX}"
token_file = "{token_file}"
poll_interval = "{poll_interval}"
max_runtimes = {limit}
"""


async def runtimes_page(client: httpx.AsyncClient, cursor: str | None) -> dict[str, Any]:
    params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
    response = await client.get("/api/runtimes", params=params)
    response.raise_for_status()
    return _decode.decode(response.content)


async def count_runtimes(client: httpx.AsyncClient) -> tuple[int, int]:
    """(listed, available) over every page of ``/api/runtimes``."""
    listed = available = 0
    cursor: str | None = None
    while True:
        page = await runtimes_page(client, cursor)
        listed += len(page["items"])
        available += sum(r["registry_status"] == "available" for r in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return listed, available


async def wait_until(check: Any, deadline_s: float, every: float) -> None:
    """Ask ``check()`` every ``every`` seconds until it answers True (or fail)."""
    with trio.fail_after(deadline_s):
        while True:
            if await check():
                return
            await trio.sleep(every)


async def register(etcd: Etcd, client: httpx.AsyncClient, fake: Fake, count: int) -> float:
    """Put ``count`` keys, each with its own lease, 16 at a time; seconds it took."""
    started = time.monotonic()
    limiter = trio.CapacityLimiter(16)

    async def one(i: int) -> None:
        async with limiter:
            lease = await etcd.lease(client)
            await etcd.put_runtime(client, runtime_id(i), fake.url(f"/rt/{i}"), lease)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return time.monotonic() - started


@asynccontextmanager
async def daemon_client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        yield client


async def addition(
    etcd: Etcd,
    etcd_client: httpx.AsyncClient,
    client: httpx.AsyncClient,
    rid: str,
    base_url: str,
) -> tuple[float, float]:
    """One key written while a blocking query on the first runtime is held: (key written
    -> runtime listed, the put's own round trip), in ms."""
    lease = await etcd.lease(etcd_client)
    first = await client.get("/api/runtimes", params={"limit": "1"})
    index = int(first.headers["x-registry-index"])
    listed_at: list[float] = []
    listed = trio.Event()

    async def held() -> None:
        nonlocal index
        while True:
            answer = await client.get(
                "/api/runtimes", params={"limit": "1", "index": str(index), "wait": WAIT}
            )
            received = now_ms()
            index = int(answer.headers["x-registry-index"])
            items = _decode.decode(answer.content)["items"]
            if items and items[0]["runtime_id"] == rid:
                listed_at.append(received)
                listed.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(held)
        await trio.sleep(0.02)  # spacing: the query is held by now (if not, it answers at once)
        made = now_ms()
        await etcd.put_runtime(etcd_client, rid, base_url, lease)
        put_ms = now_ms() - made
        with trio.fail_after(60):
            await listed.wait()
    return listed_at[0] - made, put_ms


async def available(client: httpx.AsyncClient, rid: str) -> bool:
    """Whether runtime ``rid`` is ``available``: its source started and polled it."""
    answer = await client.get(f"/api/runtimes/{rid}")
    return answer.status_code == 200 and answer.json()["registry_status"] == "available"


async def measure_size(
    size: int, fake: Fake, token_file: Path, args: argparse.Namespace, profile: float
) -> SizeResult:
    print(f"size {size}:", file=sys.stderr, flush=True)
    etcd = Etcd()
    daemon: DaemonProcess | None = None
    try:
        async with httpx.AsyncClient(timeout=30) as etcd_client:
            await etcd.ready()
            register_s = await register(etcd, etcd_client, fake, size)
            print(f"  {size} keys put in {register_s:.1f}s", file=sys.stderr, flush=True)
            limit = size + args.samples + 1
            daemon = DaemonProcess(
                sources="",
                preamble="sources = []",
                extra_toml=daemon_config(etcd, token_file, args.poll_interval, limit),
            ).start()
            at_start = args.profile_phase == "startup"
            spy = start_profile(daemon.pid, profile) if profile and at_start else None
            await trio.to_thread.run_sync(daemon.wait_ready)
            async with (
                daemon_client(daemon.url) as client,
                httpx.AsyncClient(timeout=10) as fake_client,
            ):
                started = daemon.started_at

                async def all_listed() -> bool:
                    return (await count_runtimes(client))[0] == size

                await wait_until(all_listed, 900, 0.5)
                listed_s = time.monotonic() - started
                # The start-up is over when the fake's request rate falls to a few times the
                # steady polling (every source's first look at its runtime is done or failed:
                # a failed one tries again a poll interval later).
                steady = size / Duration.parse(args.poll_interval).total_seconds()
                window = 2.0
                last = await fake.requests(fake_client)

                async def quiet() -> bool:
                    nonlocal last
                    await trio.sleep(window)
                    now = await fake.requests(fake_client)
                    calm = now - last <= window * (3 * steady + 5)
                    last = now
                    return calm

                await wait_until(quiet, 900, 0)
                settled_s = time.monotonic() - started
                up = (await count_runtimes(client))[1]
                requests0 = await fake.requests(fake_client)
                cpu0, wall0 = cpu_seconds(daemon.pid), time.monotonic()
                await trio.sleep(args.idle_seconds)
                wall = time.monotonic() - wall0
                idle_cpu = cpu_seconds(daemon.pid) - cpu0
                idle_requests = await fake.requests(fake_client) - requests0
                rss = status_kib(daemon.pid, "VmRSS") / 1024
                hwm = status_kib(daemon.pid, "VmHWM") / 1024
                idle_rate = idle_cpu / wall
                print(
                    f"  idle {100 * idle_rate:.2f}% of a core, RSS {rss:.0f} MiB", file=sys.stderr
                )

                if profile and not at_start:
                    spy = start_profile(daemon.pid, profile)
                rng = random.Random(size)
                listed_ms: list[float] = []
                put_ms: list[float] = []
                cpu0, wall0 = cpu_seconds(daemon.pid), time.monotonic()
                for k in range(args.samples):
                    rid = sample_id(k, args.samples)
                    took, put = await addition(
                        etcd, etcd_client, client, rid, fake.url(f"/add/{k}")
                    )
                    listed_ms.append(took)
                    put_ms.append(put)
                    await wait_until(partial(available, client, rid), 60, 0.02)
                    await trio.sleep(rng.uniform(0, 0.05))
                spent = cpu_seconds(daemon.pid) - cpu0 - idle_rate * (time.monotonic() - wall0)
                if spy is not None:
                    spy.wait()
        return SizeResult(
            runtimes=size,
            register_s=round(register_s, 2),
            listed_after_s=round(listed_s, 2),
            settled_after_s=round(settled_s, 2),
            available_at_idle=up,
            idle_cpu_percent=round(100 * idle_rate, 2),
            idle_fake_requests_per_s=round(idle_requests / wall, 2),
            rss_mib=round(rss, 1),
            hwm_mib=round(hwm, 1),
            samples=len(listed_ms),
            listed_p50_ms=round(percentile(listed_ms, 50), 2),
            listed_p99_ms=round(percentile(listed_ms, 99), 2),
            listed_max_ms=round(max(listed_ms), 2),
            put_p50_ms=round(percentile(put_ms, 50), 2),
            cpu_ms_per_addition=round(1000 * spent / len(listed_ms), 2),
            load_avg_1m=round(os.getloadavg()[0], 2),
        )
    finally:
        if daemon is not None:
            daemon.stop()
        etcd.stop()


def start_profile(pid: int, seconds: float) -> subprocess.Popen[bytes]:
    spy = Path(sys.executable).with_name("py-spy")
    out = BENCH_DIR / "results" / "discovery_scale.svg"
    out.parent.mkdir(exist_ok=True)
    return subprocess.Popen(
        [
            *(str(spy) if spy.exists() else "py-spy", "record", "-p", str(pid)),
            *("-d", str(int(seconds)), "-r", "100", "-o", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def ratio(full: float, base: float) -> float | None:
    return round(full / base, 2) if base else None


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="yoi-bench-discovery-"))
    token_file = tmp / "token"
    token_file.write_text("bench-" + os.urandom(12).hex() + "\n")
    fake = Fake.start(max(args.runtimes, args.baseline), args.samples, token_file)
    try:
        base = await measure_size(args.baseline, fake, token_file, args, 0)
        full = await measure_size(args.runtimes, fake, token_file, args, args.profile)
    finally:
        end_process(fake.proc)
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = {
        "listed_p50": ratio(full.listed_p50_ms, base.listed_p50_ms),
        "listed_p99": ratio(full.listed_p99_ms, base.listed_p99_ms),
        "cpu_per_addition": ratio(full.cpu_ms_per_addition, base.cpu_ms_per_addition),
        "rss": ratio(full.rss_mib, base.rss_mib),
    }
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "benchmarks/discovery_scale.py", *sys.argv[1:]]),
        "host": host_info(),
        "poll_interval": args.poll_interval,
        "baseline": asdict(base),
        "full": asdict(full),
        "ratios_full_to_baseline": ratios,
    }


def print_table(result: dict[str, Any]) -> None:
    base, full, ratios = result["baseline"], result["full"], result["ratios_full_to_baseline"]
    rows = [
        ("runtimes", "runtimes", None),
        ("key written -> listed p50 (ms)", "listed_p50_ms", "listed_p50"),
        ("key written -> listed p99 (ms)", "listed_p99_ms", "listed_p99"),
        ("key written -> listed max (ms)", "listed_max_ms", None),
        ("etcd put round trip p50 (ms)", "put_p50_ms", None),
        ("daemon CPU per addition (ms)", "cpu_ms_per_addition", "cpu_per_addition"),
        ("RSS (MiB)", "rss_mib", "rss"),
        ("peak RSS, VmHWM (MiB)", "hwm_mib", None),
        ("idle CPU (% of one core)", "idle_cpu_percent", None),
        ("fake requests/s while idle", "idle_fake_requests_per_s", None),
        ("start -> all listed (s)", "listed_after_s", None),
        ("start -> start-up looks done (s)", "settled_after_s", None),
        ("available when idle (observed once)", "available_at_idle", None),
        ("load average (1 min) at the end", "load_avg_1m", None),
    ]
    print(f"{'':34} {'baseline':>10} {'full':>10} {'ratio':>7}")
    for name, key, ratio_key in rows:
        r = ratios.get(ratio_key) if ratio_key else None
        print(f"{name:34} {base[key]:>10} {full[key]:>10} {'' if r is None else r:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtimes", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=100)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=20)
    parser.add_argument("--poll-interval", default="10m")
    parser.add_argument("--profile", type=float, default=0, help="py-spy seconds (full size)")
    parser.add_argument("--profile-phase", choices=("additions", "startup"), default="additions")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "discovery_scale.json")
    parser.add_argument("--serve-fake", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake is not None:
        serve_fake(args.serve_fake, args.samples, args.token_file.read_text().strip())
        return
    if not Path(ETCD).exists():
        sys.exit("etcd is not installed (Debian package etcd-server)")
    result = trio.run(measure, args)
    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


if __name__ == "__main__":
    main()
