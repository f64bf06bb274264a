"""Prometheus metrics of a streamflow process: its telemetry records, served on ``/metrics``.

Every long-running process (replay, consume, sink, proxy) already sums its work
into a typed telemetry record about twice a second
(:mod:`streamflow.stream.telemetry`). A :class:`MetricsExporter` is one more
observer of those records: it keeps the latest one and, when Prometheus scrapes,
turns it into metric families -- so a counter on ``/metrics`` is the very count
the process reports, the ledger's at the end of a run (no second bookkeeping
that could drift from the first). Served by prometheus_client's own HTTP server
on a thread, in its own registry (no process-global state):

- ``streamflow_events_total`` / ``streamflow_frames_total`` {process, stage}:
  events and frames through the process's stage (producer: sent; scorer: scored;
  sink: received; reco: reconstructed; proxy: forwarded);
- ``streamflow_rejected_messages_total`` {process}; ``streamflow_blocked_seconds_total``
  {process}: time a send waited on a full queue downstream (back-pressure);
- scorer: ``streamflow_accepted_total`` {process} (by at least one line) and per
  trigger line {process, line}: ``streamflow_line_seen_total``,
  ``streamflow_line_not_judged_total``, ``streamflow_line_accepted_total``,
  ``streamflow_line_recorded_total``, ``streamflow_line_unique_total``, and
  gauges ``streamflow_line_threshold``, ``streamflow_line_target``,
  ``streamflow_line_correction`` (the rate control's factor),
  ``streamflow_line_warm`` (1 once the line judges);
- sink: ``streamflow_written_total`` (rows committed) and the queue-depth gauge
  ``streamflow_pending_rows`` (rows waiting for the next flush);
- ``streamflow_latency_seconds`` {process}: the histogram of the process's
  latency from the producer's send, from its :class:`LatencyHistogram` (bucket
  bounds: every decade from 10 us to 1000 s, exact edges of its log buckets).

The monitor, which hears every process's records, can serve them all (``by_role``:
the ``process`` label is each record's role), side by side with its dashboard.

A process that ends would take its final counts with it before the next scrape
(Prometheus scrapes every 15 s by default): ``hold`` keeps ``/metrics`` up that
long after the final record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from streamflow.errors import ConfigError
from streamflow.stream.telemetry import BUCKETS_PER_DECADE, LatencyHistogram, record_kind

STAGES = {"producer": "sent", "scorer": "scored", "sink": "received", "reco": "reconstructed", "proxy": "forwarded"}
"""The stage a process kind's ``events`` count, as the ``stage`` label says it."""

LINE_COUNTERS = ("seen", "not_judged", "accepted", "recorded", "unique")
LINE_GAUGES = {"threshold": "threshold", "q": "target", "correction": "correction"}


def start_exporter(process: str, port: int | None, latency: LatencyHistogram | None = None,
                   address: str = "0.0.0.0", by_role: bool = False) -> MetricsExporter | None:
    """A serving exporter for ``process`` on ``port``, or None when ``port`` is None (no metrics asked for)."""
    if port is None:
        return None
    exporter = MetricsExporter(process, latency, by_role)
    try:
        exporter.serve(port, address)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot serve /metrics there ({exc.strerror or exc})") from None
    return exporter


def check_metrics(port: int | None, hold: float) -> None:
    """ConfigError unless ``port`` is None or a TCP port and ``hold`` is >= 0 seconds."""
    check_port(port)
    if isinstance(hold, bool) or not isinstance(hold, (int, float)) or not hold >= 0:
        raise ConfigError(f"--metrics-hold must be >= 0 seconds, got {hold!r}")


def check_port(port: int | None) -> None:
    """ConfigError unless ``port`` is None or a TCP port (0: any free one)."""
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        raise ConfigError(f"--metrics-port must be a TCP port in [0, 65535], got {port!r}")


class MetricsExporter(Collector):
    """The latest telemetry record of one process as Prometheus metrics (module docstring)."""

    def __init__(self, process: str, latency: LatencyHistogram | None = None, by_role: bool = False) -> None:
        self.process = process
        self.latency = latency
        self.by_role = by_role
        self._latest: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def observe(self, message: Mapping[str, Any]) -> None:
        """Take a telemetry message (what the process reports) as the current state (of its
        ``role``, for an exporter ``by_role``: the monitor's, which hears every process)."""
        process = str(message.get("role") or self.process) if self.by_role else self.process
        with self._lock:
            self._latest[process] = dict(message)

    def serve(self, port: int, address: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``port`` (0: a free one) from a thread; returns the port."""
        check_port(port)
        self._server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        self.port = int(self._server.server_port)
        return self.port

    def close(self, hold: float = 0.0) -> None:
        """Stop serving, after ``hold`` seconds (so a scraper gets the final record)."""
        if self._server is None:
            return
        if hold > 0:
            time.sleep(hold)
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            latest = dict(self._latest)
        families: dict[str, Metric] = {}
        for process, record in sorted(latest.items()):
            for family in self._families(process, record):
                if family.name in families:
                    families[family.name].samples += family.samples
                else:
                    families[family.name] = family
        yield from families.values()
        if self.latency is not None:
            yield self._histogram()

    def _families(self, process: str, record: Mapping[str, Any]) -> Iterator[Metric]:
        kind = str(record["kind"]) if record.get("kind") in STAGES else record_kind(record)
        if record:
            yield _counter("streamflow_events", "events through the process's stage",
                           ["process", "stage"], [([process, STAGES.get(kind, kind)], record.get("events"))])
            yield _counter("streamflow_frames", "frames through the process's stage",
                           ["process", "stage"], [([process, STAGES.get(kind, kind)], record.get("frames"))])
            yield _counter("streamflow_rejected_messages", "malformed or unexpected messages rejected",
                           ["process"], [([process], record.get("rejected"))])
            yield _counter("streamflow_blocked_seconds", "seconds sends waited on a full queue downstream",
                           ["process"], [([process], record.get("blocked_s"))])
        if kind == "scorer":
            yield from self._scorer(process, record)
        if kind == "sink":
            yield _counter("streamflow_written", "rows committed to the selections file", ["process"],
                           [([process], record.get("written"))])
            yield _gauge("streamflow_pending_rows", "rows waiting for the next flush (queue depth)", ["process"],
                         [([process], record.get("pending"))])

    def _scorer(self, process: str, record: Mapping[str, Any]) -> Iterator[Metric]:
        yield _counter("streamflow_accepted", "events accepted by at least one trigger line", ["process"],
                       [([process], record.get("accepted"))])
        lines = [line for line in record.get("lines") or [] if isinstance(line, Mapping) and line.get("name")]
        for key in LINE_COUNTERS:
            yield _counter(f"streamflow_line_{key}", f"per trigger line: events {key.replace('_', ' ')}",
                           ["process", "line"], [([process, str(line["name"])], line.get(key)) for line in lines])
        for key, name in LINE_GAUGES.items():
            yield _gauge(f"streamflow_line_{name}", f"per trigger line: its {name}", ["process", "line"],
                         [([process, str(line["name"])], line.get(key)) for line in lines])
        yield _gauge("streamflow_line_warm", "per trigger line: 1 once it judges", ["process", "line"],
                     [([process, str(line["name"])], float(bool(line.get("warm")))) for line in lines])

    def _histogram(self) -> Metric:
        assert self.latency is not None
        counts = self.latency.counts.copy()
        cumulative = np.cumsum(counts)
        buckets = []
        for decade in range(1, len(counts) // BUCKETS_PER_DECADE + 1):
            index = decade * BUCKETS_PER_DECADE  # buckets 0..index hold latencies below 1 us * 10**decade
            edge_s = float(LatencyHistogram.upper_edge_ns(index)) * 1e-9
            buckets.append((f"{edge_s:g}", float(cumulative[min(index, len(counts) - 1)])))
        buckets.append(("+Inf", float(cumulative[-1])))
        family = HistogramMetricFamily("streamflow_latency_seconds", "latency from the producer's send",
                                       labels=["process"])
        edges = np.array([float(LatencyHistogram.upper_edge_ns(i)) for i in range(len(counts))]) * 1e-9
        family.add_metric([self.process], buckets, sum_value=float((counts * edges).sum()))
        return family


def _counter(name: str, doc: str, labels: list[str], values: list[tuple[list[str], Any]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for label_values, value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            family.add_metric(label_values, float(value))
    return family


def _gauge(name: str, doc: str, labels: list[str], values: list[tuple[list[str], Any]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in values:
        family.add_metric(label_values, float(value) if isinstance(value, (int, float)) and value is not None
                          else float("nan"))
    return family
