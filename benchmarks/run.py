"""Run every benchmark, print one table and write the figures as JSON.

Usage, from the repository root::

    python benchmarks/run.py [--quick] [--only throughput,freshness,scale]
                             [--json benchmarks/results/latest.json] [--no-install]

Every figure is printed next to a baseline measured in the same run and their ratio,
because these machines are shared and noisy (see ``benchmarks/README.md`` for what each
figure means and the targets). ``--quick`` shrinks every benchmark to a few seconds: it
proves the suite works, its figures mean little. ``wrk`` is installed from the
distribution's packages when missing, unless ``--no-install``; without it the throughput
part is reported as skipped and the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import freshness
import scale
import throughput
from harness import BENCH_DIR, ensure_wrk, host_info

PARTS = ("throughput", "freshness", "scale")


def run_throughput(quick: bool, install: bool) -> dict[str, Any]:
    if ensure_wrk(install) is None:
        return {"skipped": "wrk is not installed" + ("" if install else " (--no-install)")}
    if quick:
        return throughput.measure(seconds=1, rounds=1, workers=100, warmup=0, wrapper=False)
    return throughput.measure(seconds=4, rounds=5, workers=1000, warmup=1)


def run_freshness(quick: bool) -> dict[str, Any]:
    if quick:
        return freshness.measure(samples=10, poll_interval=0.2)
    return freshness.measure(samples=200, poll_interval=1.0)


def run_scale(quick: bool) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    scale.add_arguments(parser)
    if quick:
        argv = ["--sources", "200", "--workers-per-source", "5", "--idle-seconds", "0.5"]
        argv += ["--settle", "0", "--churn-rate", "200", "--churn-seconds", "0.5"]
        argv += ["--apply-samples", "20", "--default-runs", "1"]
    else:
        argv = []
    return scale.measure(parser.parse_args(argv))


# -- the table ------------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text} {unit}".strip()


Row = tuple[str, str, str, str, str, str]


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "NOT MET")


def _spread(ratios: dict[str, float]) -> str:
    return f"{ratios['median']:.2f} ({ratios['min']:.2f}-{ratios['max']:.2f})"


def throughput_rows(t: dict[str, Any]) -> list[Row]:
    """Per route: req/s and CPU per request of the registry (and of the wrapper row) against
    stock hypercorn-trio; ratio = median of the per-round ratios (min-max)."""
    out: list[Row] = []
    target = t["target_ratio"]
    for name, label in (
        ("list_workers", "GET /api/workers?limit=1000"),
        ("worker_lookup", "GET one worker"),
    ):
        r = t[name]
        stock = r["stock"]
        for side in ("registry", "wrapper"):
            if side not in r:
                continue
            own = r[side]
            judged = side == "registry"
            prefix = label if judged else "  same app on the daemon's serve()"
            rps_ok = own["rps_ratio"]["median"] >= target
            cpu_ok = own["cpu_ratio"]["median"] >= target
            out.append(
                (
                    f"{prefix} (req/s, {t['connections']} conns)",
                    _fmt(own["rps"]),
                    _fmt(stock["rps"]) + " hypercorn-trio",
                    _spread(own["rps_ratio"]),
                    f">= {target:.2f}" if judged else "",
                    _verdict(rps_ok) if judged else "",
                )
            )
            out.append(
                (
                    "  server CPU per request (us)" + ("" if judged else ", serve()"),
                    _fmt(own["cpu_us_per_request"]),
                    _fmt(stock["cpu_us_per_request"]),
                    _spread(own["cpu_ratio"]),
                    f">= {target:.2f} (stock/registry)" if judged else "(stock/serve())",
                    _verdict(cpu_ok) if judged else "",
                )
            )
    return out


def rows(results: dict[str, Any]) -> list[Row]:
    """(figure, registry, baseline, ratio, target, verdict) for every figure."""
    out: list[Row] = []
    t = results.get("throughput")
    if t is not None and "skipped" in t:
        out.append(("throughput", "skipped: " + t["skipped"], "", "", "", ""))
    elif t is not None:
        out += throughput_rows(t)
    f = results.get("freshness")
    if f is not None:
        floor = f["baseline_held_request"]
        for name, label in (
            ("local_file_write", "local file write"),
            ("embedded_event", "embedded event"),
        ):
            r = f[name]
            for q in ("p50", "p99"):
                target = f"<= {r['target_p99_ms']} ms" if q == "p99" else ""
                ok = r["p99_ms"] <= r["target_p99_ms"] if q == "p99" else None
                out.append(
                    (
                        f"freshness {label} {q}",
                        _fmt(r[f"{q}_ms"], "ms"),
                        _fmt(floor[f"{q}_ms"], "ms") + " held req",
                        f"{r[f'{q}_ratio']:.2f}",
                        target,
                        _verdict(ok),
                    )
                )
        r = f["remote_poll"]
        interval = r["poll_interval_ms"]
        for q in ("p50", "p99"):
            ok = r["p99_ms"] < r["target_p99_ms"] if q == "p99" else None
            out.append(
                (
                    f"freshness remote poll {q}",
                    _fmt(r[f"{q}_ms"], "ms"),
                    _fmt(interval, "ms") + " interval",
                    f"{r[f'{q}_ms'] / interval:.2f}",
                    f"< {_fmt(r['target_p99_ms'])} ms" if q == "p99" else "",
                    _verdict(ok),
                )
            )
    s = results.get("scale")
    if s is not None:
        base, full, ratios, targets = s["baseline"], s["full"], s["ratios"], s["targets"]
        scale_label = f"{full['sources']} src / {full['workers']:,} workers"
        base_label = f" @{base['workers']:,}"

        def add(label: str, key: str, unit: str, target: str = "", ok: bool | None = None) -> None:
            ratio = ratios.get(key)
            out.append(
                (
                    f"{label} ({scale_label})",
                    _fmt(full[key], unit),
                    _fmt(base[key], unit) + base_label,
                    "-" if ratio is None else f"{ratio:.2f}",
                    target,
                    _verdict(ok),
                )
            )

        d = s["default_config"]
        out.append(
            (
                "start-up to /readyz (default configuration)",
                _fmt(d["ready_s"], "s"),
                _fmt(d["stock_serving_s"], "s") + " hypercorn-trio",
                f"{d['ready_s'] / d['stock_serving_s']:.2f}",
                f"<= {targets['default_ready_s']} s",
                _verdict(d["ready_s"] <= targets["default_ready_s"]),
            )
        )
        add(
            "start-up to /readyz",
            "ready_s",
            "s",
            f"<= {targets['ready_s']} s",
            full["ready_s"] <= targets["ready_s"],
        )
        add("start-up to every worker", "all_workers_s", "s")
        add(
            "RSS",
            "rss_mb",
            "MB",
            f"<= {targets['rss_mb']} MB",
            full["peak_rss_mb"] <= targets["rss_mb"],
        )
        add(
            "idle CPU",
            "idle_cpu_pct",
            "%",
            f"<= {targets['idle_cpu_pct']}%",
            full["idle_cpu_pct"] <= targets["idle_cpu_pct"],
        )
        out.append(
            (
                "  remote polls/s in the idle window",
                _fmt(full["idle_remote_polls_per_s"]),
                _fmt(base["idle_remote_polls_per_s"]) + base_label,
                "-",
                f"poll_interval {s['poll_interval']}",
                "",
            )
        )
        add(f"CPU under {full['churn_rate_achieved']} changes/s", "churn_cpu_pct", "%")
        target = targets["apply_ratio_100k_vs_1k"]
        add("apply one change p50", "apply_p50_us", "us")
        add(
            "apply one change p99",
            "apply_p99_us",
            "us",
            f"ratio <= {target}",
            ratios["apply_p99_us"] <= target,
        )
        add(
            "snapshot publish mean",
            "publish_mean_us",
            "us",
            f"ratio <= {target}",
            ratios["publish_mean_us"] <= target,
        )
    return out


def table(results: dict[str, Any]) -> str:
    header: Row = ("figure", "registry", "baseline (same run)", "ratio", "target", "")
    body = rows(results)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(6)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *body]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: proves it works")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "latest.json")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    args = parser.parse_args()
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    results: dict[str, Any] = {"host": host_info(), "quick": args.quick}
    for part in parts:
        print(f"== {part} ...", file=sys.stderr, flush=True)
        part_started = time.monotonic()
        if part == "throughput":
            results[part] = run_throughput(args.quick, not args.no_install)
        elif part == "freshness":
            results[part] = run_freshness(args.quick)
        else:
            results[part] = run_scale(args.quick)
        print(f"   {part}: {time.monotonic() - part_started:.0f}s", file=sys.stderr, flush=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    host = results["host"]
    print(
        f"yoi-registryd benchmarks{' (--quick: figures mean little)' if args.quick else ''}: "
        f"{host['cpus']} CPUs, Python {host['python']}, load {host['load_avg_1m']}, "
        f"{results['seconds']}s"
    )
    print(table(results))
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
