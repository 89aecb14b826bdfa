"""The benchmark suite's one command works: a ``--quick`` run of every part, end to end.

This proves the command, its processes (daemon, bare baseline app, fake remote runtimes,
``wrk``) and its report; the figures of a run this short mean little and are not judged,
only that each one was measured against a baseline from the same run (for throughput, stock
``hypercorn --worker-class trio``). Without ``wrk`` on
the machine the throughput part must say it was skipped and the rest must still run.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


def test_quick_run_reports_every_figure_with_its_baseline(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--no-install", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["quick"] is True

    throughput = results["throughput"]
    if shutil.which("wrk") is None:
        assert "skipped" in throughput
        assert "throughput" in run.stdout and "skipped" in run.stdout
    else:
        assert throughput["baseline"].startswith("hypercorn --worker-class trio")
        for route in ("list_workers", "worker_lookup"):
            row = throughput[route]
            for side in ("stock", "registry"):
                for key in ("rps", "cpu_us_per_request"):
                    assert finite(row[side][key]) and row[side][key] > 0, (route, side, key)
            for key in ("rps_ratio", "cpu_ratio"):
                ratios = row["registry"][key]
                assert 0 < ratios["min"] <= ratios["median"] <= ratios["max"], (route, key)

    freshness = results["freshness"]
    assert finite(freshness["baseline_held_request"]["p99_ms"])
    for kind in ("local_file_write", "embedded_event", "remote_poll"):
        row = freshness[kind]
        assert row["samples"] >= 10, kind
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"], (kind, row)
    # A remote change cannot be seen before the next poll, nor long after it.
    assert freshness["remote_poll"]["p99_ms"] < 5 * freshness["remote_poll"]["poll_interval_ms"]

    scale = results["scale"]
    base, full = scale["baseline"], scale["full"]
    assert full["workers"] > base["workers"] > 0
    assert full["remote"] > 0 and full["embedded"] > 0
    for key in ("ready_s", "all_workers_s", "rss_mb", "idle_cpu_pct", "churn_cpu_pct"):
        assert finite(base[key]) and finite(full[key]), key
    for key in ("apply_p50_us", "apply_p99_us"):
        assert finite(scale["ratios"][key]) and scale["ratios"][key] > 0, key
    assert full["churn_rate_achieved"] > 0
    default = scale["default_config"]
    assert finite(default["ready_s"]) and finite(default["stock_serving_s"])

    lines = run.stdout.splitlines()
    assert any(line.startswith("figure") and "baseline (same run)" in line for line in lines)
    for label in ("freshness local file write p99", "apply one change p50", "RSS"):
        assert any(line.startswith(label) for line in lines), label
