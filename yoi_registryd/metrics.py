"""Prometheus metrics: one ``CollectorRegistry`` per daemon, scraped at ``GET /metrics``.

Registry and runtime figures are read from the current Snapshot when Prometheus scrapes, by
a custom collector, rather than kept in gauges updated on every change: the actor's hot path
does no metric work, and a scrape always shows one consistent revision. Only what happens
per request (HTTP counts and latencies, held watches) is counted as it happens.

Labels identify a runtime by ``runtime_id`` and ``source_kind`` only, plus bounded enums
(status, worker state, typed error code, route template, method, status code); never a URL,
path or raw request path. A daemon has its own registry (not prometheus-client's global one)
so that several daemons can run in one process, as they do in the tests.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Final, Protocol, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector

from yoi_registryd import __version__
from yoi_registryd.discovery.runner import DiscoveryStatus
from yoi_registryd.model import ObservationMode, RuntimeStatus
from yoi_registryd.registry import RegistryActor, runtime_health

PREFIX: Final = "yoi_registryd"
ROUTE_SCOPE_KEY: Final = "yoi_registryd.route"
"""ASGI scope key where the app leaves the matched route template for the middleware."""
HELD_SCOPE_KEY: Final = "yoi_registryd.held"
"""ASGI scope key set when a request was held as a blocking query (its latency is not timed)."""
UNMATCHED_ROUTE: Final = "unmatched"
RUNTIME_LABELS: Final = ("runtime_id", "source_kind")
STATUSES: Final[tuple[RuntimeStatus, ...]] = get_args(RuntimeStatus)
HTTP_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LABEL_VALUE: Final = re.compile(r"^[A-Za-z0-9_:.-]{1,64}$")


def bounded_label(value: str) -> str:
    """A source-provided enum value (worker state, error code) fit to be a label, or ``other``.

    Keeps the label set small and free of anything that is not an identifier.
    """
    return value if _LABEL_VALUE.match(value) else "other"


class ReloadOutcome(Protocol):
    """What the config reload records (``yoi_registryd.reload.ReloadStatus``)."""

    attempts: int
    failures: int
    last_ok: bool | None
    last_success_at: datetime | None


class AuditCounters(Protocol):
    """What the audit trail counts (``yoi_registryd.audit.AuditTrail``)."""

    @property
    def queue_depth(self) -> int: ...
    @property
    def waiting_requests(self) -> int: ...

    records_written: int
    write_failures: int
    records_lost: int
    records_dropped: int
    requests_refused: int


class Metrics:
    """The metrics of one daemon. ``render`` produces a scrape; the rest is for its parts."""

    def __init__(self, actor: RegistryActor, *, process: bool = True) -> None:
        self.actor = actor
        self.registry = CollectorRegistry()
        self.reloads: ReloadOutcome | None = None
        """Set by the daemon: how its configuration reloads fared."""
        self.discoveries: Callable[[], list[DiscoveryStatus]] = list
        """Set by the daemon: the ``[[discovery]]`` entries' status."""
        self.audit: AuditCounters | None = None
        """Set by the daemon: the audit trail whose queue and counters are exported."""
        self.loaded_at = time.time()
        """When the configuration was first loaded (a successful load, as for Prometheus)."""
        r = self.registry
        self.http_requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method "
            "(requests held as blocking queries are not timed).",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.watch_held = Gauge(
            f"{PREFIX}_http_held_requests",
            "Blocking queries currently held waiting for a change.",
            registry=r,
        )
        self.watch_rejected = Counter(
            f"{PREFIX}_http_held_requests_rejected",
            "Blocking queries refused with 429 because too many were held.",
            registry=r,
        )
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        r.register(_SnapshotCollector(self))
        if process:
            ProcessCollector(registry=r)

    def observe_request(self, route: str, method: str, status: int, seconds: float | None) -> None:
        method = method if method in _METHODS else "other"
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            # ``labels()`` builds and checks its key under a lock on every call: the
            # children are kept instead (routes, methods and statuses are bounded sets).
            children = self._http_children[key] = (
                self.http_requests.labels(route, method, str(status)),
                self.http_duration.labels(route, method),
            )
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """A scrape in the format the client asked for (OpenMetrics or Prometheus text)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _SnapshotCollector:
    """Reads the actor's current snapshot and counters at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        actor = metrics.actor
        snapshot = actor.snapshot
        labels = list(RUNTIME_LABELS)

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=[*labels, *extra])

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[*labels, *extra])

        up = gauge(
            "runtime_up", "1 when the last observation of the runtime succeeded and is fresh."
        )
        status = gauge(
            "runtime_status", "The runtime's status: 1 for the current one.", ("status",)
        )
        last_success = gauge(
            "runtime_last_success_timestamp_seconds",
            "Unix time of the last successful observation of the runtime.",
        )
        duration = gauge(
            "runtime_last_observation_duration_seconds",
            "How long the last observation of the runtime took, as its source measured it.",
        )
        observations = counter(
            "runtime_observations", "Successful observations of the runtime by its source."
        )
        errors = counter(
            "runtime_observation_errors",
            "Failed observations of the runtime, by typed error code.",
            ("code",),
        )
        failures = gauge(
            "runtime_consecutive_failures", "Failed observations since the last success."
        )
        restarts = counter(
            "runtime_source_restarts", "Times the supervisor restarted the runtime's source."
        )
        workers = gauge("runtime_workers", "Workers of the runtime, by state.", ("state",))
        mode = gauge(
            "runtime_source_mode",
            "How a remote source follows its runtime: 1 for the current mode "
            "(subscription or polling).",
            ("mode",),
        )
        for rid in snapshot.sorted_runtime_ids:
            entry = snapshot.runtimes[rid]
            record = entry.record
            key = [rid, record.source.kind]
            up.add_metric(key, 1.0 if runtime_health(record) == "up" else 0.0)
            for name in STATUSES:
                status.add_metric([*key, name], 1.0 if record.registry_status == name else 0.0)
            if record.last_seen_at is not None:
                last_success.add_metric(key, record.last_seen_at.timestamp())
            if entry.stats.last_duration is not None:
                duration.add_metric(key, entry.stats.last_duration)
            observations.add_metric(key, entry.stats.successes)
            for code, count in _bounded_counts(entry.stats.errors).items():
                errors.add_metric([*key, code], count)
            failures.add_metric(key, record.consecutive_failures)
            restarts.add_metric(key, record.supervisor.restarts)
            for state, count in _bounded_counts(entry.workers_by_state.items()).items():
                workers.add_metric([*key, state], count)
            if entry.stats.mode is not None:
                for name in get_args(ObservationMode):
                    mode.add_metric([*key, name], 1.0 if entry.stats.mode == name else 0.0)
        yield from (up, status, last_success, duration, observations, errors, failures)
        yield from (restarts, workers, mode)

        yield _plain_gauge(
            "registry_revision", "The registry's current revision.", snapshot.revision
        )
        yield _plain_gauge("registry_runtimes", "Runtimes in the registry.", len(snapshot.runtimes))
        yield _plain_gauge(
            "registry_channel_depth",
            "Source messages queued for the registry actor.",
            actor.channel_depth,
        )
        yield _plain_gauge(
            "registry_channel_peak",
            "The most source messages ever queued for the registry actor at once.",
            actor.channel_peak,
        )
        yield _plain_gauge(
            "registry_channel_capacity",
            "Capacity of the registry actor's channel (sources wait when it is full).",
            actor.channel_capacity,
        )
        publish = SummaryMetricFamily(
            f"{PREFIX}_registry_snapshot_publish_duration_seconds",
            "Time the registry actor spent building and publishing snapshots.",
        )
        publish.add_metric([], actor.publish_count, actor.publish_seconds_total)
        yield publish
        if metrics.audit is not None:
            yield from _audit_metrics(metrics.audit)
        yield from _reload_metrics(metrics.reloads, metrics.loaded_at)
        yield from _discovery_metrics(metrics.discoveries())
        info = GaugeMetricFamily(
            f"{PREFIX}_build_info", "The running yoi-registryd version.", labels=["version"]
        )
        info.add_metric([__version__], 1.0)
        yield info


def _reload_metrics(reloads: ReloadOutcome | None, loaded_at: float) -> Iterator[Metric]:
    last_ok = reloads is None or reloads.last_ok is not False
    success_at = reloads.last_success_at if reloads is not None else None
    yield _plain_gauge(
        "config_last_reload_successful",
        "1 when the last configuration (re)load succeeded.",
        1.0 if last_ok else 0.0,
    )
    yield _plain_gauge(
        "config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful configuration (re)load.",
        success_at.timestamp() if success_at is not None else loaded_at,
    )
    attempts = CounterMetricFamily(
        f"{PREFIX}_config_reloads", "Configuration reloads attempted (SIGHUP)."
    )
    attempts.add_metric([], reloads.attempts if reloads is not None else 0)
    yield attempts
    failures = CounterMetricFamily(
        f"{PREFIX}_config_reload_failures", "Configuration reloads rejected (old config kept)."
    )
    failures.add_metric([], reloads.failures if reloads is not None else 0)
    yield failures


def _audit_metrics(audit: AuditCounters) -> Iterator[Metric]:
    """The audit trail's queue and what it wrote, failed, lost, dropped and refused."""
    yield _plain_gauge(
        "audit_queue_depth", "Audit records waiting to be written.", audit.queue_depth
    )
    yield _plain_gauge(
        "audit_waiting_requests",
        "Requests waiting for room in the full audit queue.",
        audit.waiting_requests,
    )
    for name, doc, value in (
        ("records_written", "Audit records written to the sink.", audit.records_written),
        ("write_failures", "Writes of a batch of audit records that failed.", audit.write_failures),
        (
            "records_lost",
            "Audit records given up at shutdown after repeated write failures.",
            audit.records_lost,
        ),
        (
            "records_dropped",
            'Audit records dropped while the sink failed and the queue was full ("serve").',
            audit.records_dropped,
        ),
        (
            "requests_refused",
            "Requests refused 503 audit_unavailable because their record could not be kept "
            '("refuse").',
            audit.requests_refused,
        ),
    ):
        counter = CounterMetricFamily(f"{PREFIX}_audit_{name}", doc)
        counter.add_metric([], value)
        yield counter


_DISCOVERY_METRICS: Final[
    tuple[
        tuple[
            type[GaugeMetricFamily | CounterMetricFamily],
            str,
            str,
            Callable[[DiscoveryStatus], float],
        ],
        ...,
    ]
] = (
    (
        GaugeMetricFamily,
        "runtimes",
        "Runtimes the last good refresh found.",
        lambda status: status.runtime_count,
    ),
    (
        GaugeMetricFamily,
        "refused_records",
        "Records the last good refresh refused.",
        lambda status: status.refused_count,
    ),
    (
        GaugeMetricFamily,
        "stale",
        "1 when no refresh succeeded for stale_after (the last good set is kept).",
        lambda status: 1.0 if status.stale else 0.0,
    ),
    (
        GaugeMetricFamily,
        "last_success_timestamp_seconds",
        "Unix time of the last successful refresh (0: none yet).",
        lambda status: (
            status.last_success_at.timestamp() if status.last_success_at is not None else 0.0
        ),
    ),
    (CounterMetricFamily, "refreshes", "Refreshes attempted.", lambda status: status.refreshes),
    (
        CounterMetricFamily,
        "refresh_failures",
        "Refreshes that failed (the last good set was kept).",
        lambda status: status.failures,
    ),
)
"""Per ``[[discovery]]`` entry: what it found, refused, when, and whether it is stale."""


def _discovery_metrics(statuses: list[DiscoveryStatus]) -> Iterator[Metric]:
    labels = ["discovery", "kind"]
    for family, name, doc, value in _DISCOVERY_METRICS:
        metric = family(f"{PREFIX}_discovery_{name}", doc, labels=labels)
        for status in statuses:
            metric.add_metric([status.name, status.kind], value(status))
        yield metric


def _plain_gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _bounded_counts(items: Any) -> dict[str, int]:
    """Sum counts under bounded label values (two odd values both become ``other``)."""
    out: dict[str, int] = {}
    for value, count in items:
        label = bounded_label(value)
        out[label] = out.get(label, 0) + count
    return out
