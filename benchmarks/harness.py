"""What every benchmark shares: processes, ports, CPU and memory readings, percentiles, wrk.

The daemon under test always runs as its own process (``python -m yoi_registryd serve`` with
a generated config, or a benchmark's ``--serve`` child when the benchmark must reach into
the daemon's process), so its CPU and memory are read from ``/proc`` without counting the
load generator or the measuring client.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))  # ``tests.fake_runtime``, the fake remote runtimes
BENCH_DIR = ROOT / "benchmarks"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process in seconds (fields 14 and 15 of ``/proc/<pid>/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (``/proc/<pid>/task/<tid>/children``)."""
    found = [pid]
    for pid_ in found:
        for task in Path(f"/proc/{pid_}/task").glob("*"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants (each read from its own stat)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(member)
    return total


def rss_mb(pid: int) -> float:
    """Resident set size in MiB (``/proc/<pid>/statm``)."""
    resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident * PAGE_SIZE / 2**20


class CpuWindow:
    """CPU share of a process over a wall-clock window, in percent of one core."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.wall0 = time.monotonic()
        self.cpu0 = cpu_seconds(pid)

    def share(self) -> float:
        wall = time.monotonic() - self.wall0
        return 100.0 * (cpu_seconds(self.pid) - self.cpu0) / wall


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def host_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


# -- the daemon as a process ----------------------------------------------------------------


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def source_toml(kind: str, **keys: object) -> str:
    lines = ["[[sources]]", f"kind = {toml_value(kind)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def end_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if the process is still there after 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_announcing(argv: list[str]) -> tuple[subprocess.Popen[str], list[str]]:
    """Start a helper process that prints ``READY <values...>`` once it serves (the fake
    runtimes); the process and those values. ``RuntimeError`` if it says anything else."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready = proc.stdout.readline().split()
    if not ready or ready[0] != "READY":
        end_process(proc)
        raise RuntimeError(f"{' '.join(argv[1:3])} did not start: {ready}")
    return proc, ready[1:]


@dataclass
class DaemonProcess:
    """``python -m yoi_registryd serve`` on a loopback port, with its own temp dir."""

    sources: str
    """``[[sources]]`` tables (TOML text)."""
    env: dict[str, str] = field(default_factory=dict)
    extra_toml: str = ""
    preamble: str = ""
    """Top-level keys, written before every table (``sources = []``)."""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="yoi-bench-")))
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> DaemonProcess:
        self.port = free_port()
        config = self.tmp / "config.toml"
        config.write_text(
            f"{self.preamble}\n"
            "[server]\n"
            f'listen = ["127.0.0.1:{self.port}"]\n'
            "[logging]\n"
            'level = "warning"\n'
            "[audit]\n"
            f"path = {toml_value(str(self.tmp / 'audit.jsonl'))}\n"
            f"{self.extra_toml}\n{self.sources}"
        )
        env = {**os.environ, "PYTHONPATH": str(BENCH_DIR), **self.env}
        self.started_at = time.monotonic()
        with (self.tmp / "daemon.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "yoi_registryd", "--config", str(config), "serve"],
                cwd=ROOT,
                stderr=log,
                env=env,
            )
        return self

    def wait_ready(self, deadline_s: float = 120.0) -> float:
        """Wait until ``/readyz`` answers 200; seconds since :meth:`start`."""
        deadline = time.monotonic() + deadline_s
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited early; see {self.tmp / 'daemon.log'}")
                try:
                    if client.get("/readyz").status_code == 200:
                        return time.monotonic() - self.started_at
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon was not ready in {deadline_s}s")
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StockHypercorn:
    """``hypercorn --worker-class trio`` serving ``baseline_app:app``, started as a user
    starts it: hypercorn's own command line and defaults (one worker process), with only
    the bind address given. ``routes`` is ``baseline_app.py``'s routes file (or None)."""

    def __init__(self, routes: Path | None = None) -> None:
        self.routes = routes
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.serving_after = 0.0
        """Seconds from starting the process to its first answer (polled every 20 ms)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, deadline_s: float = 60.0) -> StockHypercorn:
        self.port = free_port()
        env = dict(os.environ)
        if self.routes is not None:
            env["YOI_BENCH_ROUTES"] = str(self.routes)
        hypercorn = Path(sys.executable).with_name("hypercorn")
        self.proc = subprocess.Popen(
            [
                str(hypercorn) if hypercorn.exists() else "hypercorn",
                *("--worker-class", "trio", "--bind", f"127.0.0.1:{self.port}"),
                "baseline_app:app",
            ],
            cwd=BENCH_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        deadline = started + deadline_s
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError("stock hypercorn exited early")
                with contextlib.suppress(httpx.HTTPError):
                    client.get("/")
                    self.serving_after = time.monotonic() - started
                    return self
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stock hypercorn did not serve in {deadline_s}s")
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)

    def __enter__(self) -> StockHypercorn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- wrk ------------------------------------------------------------------------------------

WRK_CONNECTIONS = 16


def ensure_wrk(install: bool = True) -> str | None:
    """The path of ``wrk``; installed from the distribution's packages when missing (root)."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing wrk (apt-get install wrk) ...", file=sys.stderr, flush=True)
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        result = subprocess.run(command, env=env, capture_output=True, check=False)
        if result.returncode != 0:
            print(result.stderr.decode(errors="replace")[-2000:], file=sys.stderr)
            return None
    return shutil.which("wrk")


@dataclass
class WrkResult:
    requests_per_s: float
    requests: int
    latency_p50_ms: float
    latency_p99_ms: float
    errors: int
    server_cpu_us_per_request: float | None = None


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def run_wrk(
    wrk: str,
    url: str,
    seconds: float,
    connections: int = WRK_CONNECTIONS,
    server_pid: int | None = None,
) -> WrkResult:
    """One wrk run: one thread, ``connections`` keep-alive connections, ``seconds`` long.

    With ``server_pid``, the server's CPU time per request is measured too (that process's
    and its children's: stock hypercorn serves from a child of the process started): on a
    shared, noisy machine it moves less than requests per second do.
    """
    cpu0 = tree_cpu_seconds(server_pid) if server_pid is not None else 0.0
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    cpu_us = None
    if server_pid is not None and total:
        cpu_us = (tree_cpu_seconds(server_pid) - cpu0) / total * 1e6
    return WrkResult(rps, total, p50, p99, errors, cpu_us)


# -- fake remote runtimes (tests/fake_runtime.py) -------------------------------------------


@dataclass
class FakeRemotes:
    """``python -m tests.fake_runtime``: ``runtimes`` fake yoi runtimes, one port each,
    requiring a bearer token (read from ``token_file`` by the daemon as in production)."""

    runtimes: int
    workers: int
    proc: subprocess.Popen[str] | None = None
    ports: list[int] = field(default_factory=list)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="yoi-bench-fake-")))

    @property
    def token_file(self) -> Path:
        return self.tmp / "token"

    def start(self) -> FakeRemotes:
        self.token_file.write_text("bench-" + os.urandom(12).hex() + "\n")
        self.proc, ports = start_announcing(
            [
                *(sys.executable, "-m", "tests.fake_runtime"),
                *("--runtimes", str(self.runtimes), "--workers", str(self.workers)),
                *("--token-file", str(self.token_file)),
            ]
        )
        self.ports = [int(p) for p in ports]
        return self

    def base_url(self, index: int) -> str:
        from tests.fake_runtime import runtime_prefix

        return f"http://127.0.0.1:{self.ports[index]}{runtime_prefix(index)}"

    def control_url(self, index: int, worker_id: str) -> str:
        from tests.fake_runtime import runtime_prefix

        return (
            f"http://127.0.0.1:{self.ports[0]}/_control{runtime_prefix(index)}/workers/{worker_id}"
        )

    def runtime_id(self, index: int) -> str:
        return f"bench-{index:03d}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        shutil.rmtree(self.tmp, ignore_errors=True)
