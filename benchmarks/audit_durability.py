"""What ``audit.durability = "before_response"`` costs in throughput, against the default
(``"batched"``) measured in the same run.

Run: ``python benchmarks/audit_durability.py [--seconds 4] [--rounds 3] [--connections 16]``

Two daemons run side by side, each its own process with default settings but for
``[audit] durability``: the file sink (JSON lines, fsync), the security middleware, metrics,
no source. ``wrk`` (one thread, ``--connections`` keep-alive connections) asks each for
``GET /api/runtimes``, a small audited answer, so that the audit trail's cost shows rather
than the registry's. The daemons alternate round by round; each round gives the ratio of
requests per second, ``before_response`` / ``batched``, reported as min/median/max,, with
the latencies (p50, p99) and server CPU time per request of both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from harness import DaemonProcess, WrkResult, ensure_wrk, run_wrk

TARGET = "/api/runtimes"
MODES = ("batched", "before_response")


def daemon(mode: str) -> DaemonProcess:
    # Inside [audit] (the harness writes that table's path line just before this text).
    return DaemonProcess("", extra_toml=f'durability = "{mode}"\n')


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def measure(seconds: float = 4.0, rounds: int = 3, connections: int = 16) -> dict[str, Any]:
    wrk = ensure_wrk()
    if wrk is None:
        return {"skipped": "wrk is not installed and could not be installed"}
    daemons = {mode: daemon(mode) for mode in MODES}
    runs: dict[str, list[WrkResult]] = {mode: [] for mode in MODES}
    try:
        for d in daemons.values():
            d.start()
        for d in daemons.values():
            d.wait_ready()
            run_wrk(wrk, d.url + TARGET, 1, connections)  # warm-up
        for k in range(rounds):
            order = MODES if k % 2 == 0 else MODES[::-1]
            for mode in order:
                d = daemons[mode]
                runs[mode].append(run_wrk(wrk, d.url + TARGET, seconds, connections, d.pid))
    finally:
        for d in daemons.values():
            d.stop()
    ratios = [
        after.requests_per_s / before.requests_per_s
        for before, after in zip(runs["batched"], runs["before_response"], strict=True)
    ]
    return {
        "target": TARGET,
        "connections": connections,
        "seconds_per_round": seconds,
        "rounds": rounds,
        "requests_per_s_ratio_before_response_to_batched": spread(ratios),
        **{
            mode: {
                "requests_per_s": spread([r.requests_per_s for r in results]),
                "latency_p50_ms": spread([r.latency_p50_ms for r in results]),
                "latency_p99_ms": spread([r.latency_p99_ms for r in results]),
                "server_cpu_us_per_request": spread(
                    [r.server_cpu_us_per_request or 0.0 for r in results]
                ),
                "errors": sum(r.errors for r in results),
            }
            for mode, results in runs.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    result = measure(args.seconds, args.rounds, args.connections)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
