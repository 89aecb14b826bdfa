"""Throughput of the two hottest read routes, against a bare ASGI app in the same run.

Run: ``python benchmarks/throughput.py [--seconds 5] [--rounds 2] [--workers 1000]``

The daemon runs as its own process with its default settings (audit file sink, security
middleware, metrics) and one embedded source holding ``--workers`` workers that do not
change during the run. ``wrk`` (one thread, 16 keep-alive connections) loads:

* ``GET /api/workers?limit=1000``: the whole worker list in one page;
* ``GET /api/runtimes/<rid>/workers/<wid>``: a single worker lookup.

The baseline (``baseline_app.py``) is a bare ASGI app served by the same hypercorn/trio
server that answers each of those targets with the very bytes the daemon answered. Registry
and baseline runs alternate (baseline, registry, baseline, registry, ...) so that drift on a
shared machine hits both alike; each side's figure is the median of its rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from harness import BENCH_DIR, DaemonProcess, ensure_wrk, run_wrk, source_toml

RUNTIME_ID = "bench-throughput"
LOOKUP_WORKER = "worker-500"


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


def start_baseline(answers: dict[str, httpx.Response]) -> tuple[subprocess.Popen[str], str, Path]:
    """The bare app, answering each target with the daemon's very answer: its body and its
    headers (all but ``date``, which the server adds to both)."""
    tmp = Path(tempfile.mkdtemp(prefix="yoi-bench-baseline-"))
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
    (tmp / "routes.json").write_text(json.dumps(mapping))
    proc = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "baseline_app.py"), "--routes", str(tmp / "routes.json")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline().split()
    if not ready or ready[0] != "READY":
        raise RuntimeError("the baseline app did not start")
    return proc, f"http://127.0.0.1:{ready[1]}", tmp


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


def measure(
    seconds: float = 5.0, rounds: int = 2, workers: int = 1000, warmup: float = 1.0
) -> dict[str, Any]:
    wrk = ensure_wrk()
    if wrk is None:
        return {"skipped": "wrk is not installed and could not be installed"}
    routes = targets(workers)
    with daemon_for(workers) as daemon:
        daemon.wait_ready()
        wait_for_workers(daemon.url, workers)
        with httpx.Client(base_url=daemon.url, timeout=10) as client:
            answers = {}
            for target in routes.values():
                response = client.get(target)
                response.raise_for_status()
                answers[target] = response
        baseline, baseline_url, _ = start_baseline(answers)
        try:
            results: dict[str, Any] = {}
            for name, target in routes.items():
                sides: dict[str, list[Any]] = {"baseline": [], "registry": []}
                servers = (
                    ("baseline", baseline_url, baseline.pid),
                    ("registry", daemon.url, daemon.pid),
                )
                for _, url, _ in servers:
                    run_wrk(wrk, url + target, warmup)
                for _ in range(rounds):
                    for side, url, pid in servers:
                        sides[side].append(run_wrk(wrk, url + target, seconds, server_pid=pid))
                row: dict[str, Any] = {"target": target, "body_bytes": len(answers[target].content)}
                for side, runs in sides.items():
                    if any(r.errors for r in runs):
                        raise RuntimeError(f"{side} {target}: wrk saw errors or non-2xx answers")
                    row[f"{side}_rps"] = round(statistics.median(r.requests_per_s for r in runs))
                    row[f"{side}_rounds_rps"] = [round(r.requests_per_s) for r in runs]
                    p99 = statistics.median(r.latency_p99_ms for r in runs)
                    row[f"{side}_p99_ms"] = round(p99, 2)
                    cpu = statistics.median(r.server_cpu_us_per_request or 0.0 for r in runs)
                    row[f"{side}_cpu_us_per_request"] = round(cpu, 1)
                row["ratio"] = round(row["registry_rps"] / row["baseline_rps"], 3)
                # The same comparison by server CPU per request (less sensitive to noise).
                row["cpu_ratio"] = round(
                    row["baseline_cpu_us_per_request"] / row["registry_cpu_us_per_request"], 3
                )
                results[name] = row
        finally:
            baseline.terminate()
            baseline.wait(10)
    return {
        "workers": workers,
        "connections": 16,
        "seconds_per_round": seconds,
        "rounds": rounds,
        "target_ratio": 0.8,
        **results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps(measure(args.seconds, args.rounds, args.workers), indent=2))


if __name__ == "__main__":
    main()
