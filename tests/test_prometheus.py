"""Prometheus /metrics: a live scorer scraped over HTTP, its counters checked against its ledger."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamflow.errors import ConfigError
from streamflow.ops.prometheus import MetricsExporter, check_metrics
from streamflow.stream.telemetry import LatencyHistogram, TelemetryReporter
from tests.helpers import REPO, STREAMFLOW, free_port_block

MENU = """
[scorer]
device = "cpu"

[[scorer.learners]]
kind = "autoencoder"
name = "ae"
features = ["x0", "x1"]
warmup_events = 1000

[[scorer.lines]]
name = "ae_5pc"
learner = "ae"
accept = 0.05
window = 4000

[[scorer.lines]]
name = "ae_20pc_ps4"
learner = "ae"
accept = 0.2
window = 4000
prescale = 4

[[scorer.lines]]
name = "zero_bias"
kind = "zero_bias"
accept = 0.01
"""
EVENTS, FRAME = 12_000, 1000


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of http://127.0.0.1:port/metrics: {(name, sorted labels): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_a_live_scorer_serves_counters_equal_to_its_ledger(tmp_path: Path) -> None:
    (tmp_path / "menu.toml").write_text(MENU)
    base = free_port_block(7)  # the producer's and the sink's data sockets (each with its control), three /metrics
    endpoint, metrics_port, producer_port = f"tcp://127.0.0.1:{base}", base + 2, base + 3
    selections, sink_port = f"tcp://127.0.0.1:{base + 4}", base + 6
    run_dir = tmp_path / "run"
    sink = subprocess.Popen(
        [*STREAMFLOW, "sink", "--endpoint", selections, "--run-dir", str(run_dir), "--idle-timeout", "90",
         "--metrics-port", str(sink_port), "--metrics-hold", "60"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    producer = subprocess.Popen(  # first: it binds (a scorer connecting to a free port could take it)
        [*STREAMFLOW, "replay", "gaussian", "--events", str(EVENTS), "--frame-size", str(FRAME),
         "--endpoint", endpoint, "--eos-timeout", "90", "--metrics-port", str(producer_port), "--metrics-hold", "60"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scorer = subprocess.Popen(
        [*STREAMFLOW, "consume", "--config", str(tmp_path / "menu.toml"), "--endpoint", endpoint,
         "--selections", selections, "--run-dir", str(run_dir), "--idle-timeout", "60",
         "--metrics-port", str(metrics_port),
         "--metrics-hold", "60"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ledger_path, sink_ledger_path = run_dir / "ledger-scorer.json", run_dir / "ledger-sink.json"
    try:
        deadline = time.monotonic() + 120
        for path, process in ((ledger_path, scorer), (sink_ledger_path, sink)):
            while not path.exists():  # written at the end of the run, before the metrics hold
                assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
                time.sleep(0.2)
        time.sleep(0.5)  # the ledger is one write; the final record was observed before it
        samples = scrape(metrics_port)
        produced = scrape(producer_port)
        sunk = scrape(sink_port)
    finally:
        for process in (scorer, producer, sink):
            process.kill()
        scorer.communicate()
    ledger = json.loads(ledger_path.read_text())
    sink_stages = {stage["name"]: stage["events"] for stage in json.loads(sink_ledger_path.read_text())["stages"]}
    stages = {stage["name"]: stage["events"] for stage in ledger["stages"]}
    scorer_labels = (("process", "scorer"),)
    assert samples[("streamflow_events_total", (("process", "scorer"), ("stage", "scored")))] == stages["scored"]
    assert stages["scored"] == EVENTS
    assert produced[("streamflow_events_total", (("process", "producer"), ("stage", "sent")))] == EVENTS
    assert produced[("streamflow_frames_total", (("process", "producer"), ("stage", "sent")))] == EVENTS // FRAME
    assert samples[("streamflow_accepted_total", scorer_labels)] == stages["accepted"]
    sink_labels = (("process", "sink"),)
    assert sunk[("streamflow_events_total", (("process", "sink"), ("stage", "received")))] \
        == sink_stages["selections received"] == stages["sent to sink"] == stages["accepted"] > 0
    assert sunk[("streamflow_written_total", sink_labels)] == sink_stages["written"] == stages["accepted"]
    assert sunk[("streamflow_pending_rows", sink_labels)] == 0  # everything flushed at the end
    lines = {line["name"]: line for line in ledger["lines"]}
    assert set(lines) == {"ae_5pc", "ae_20pc_ps4", "zero_bias"}
    for name, line in lines.items():
        labels = (("line", name), ("process", "scorer"))
        for key in ("seen", "not_judged", "accepted", "recorded", "unique"):
            assert samples[(f"streamflow_line_{key}_total", labels)] == line[key], (name, key)
        assert samples[("streamflow_line_target", labels)] == line["q"]
    assert lines["ae_20pc_ps4"]["recorded"] == lines["ae_20pc_ps4"]["accepted"] // 4
    frames = ledger["sequence"]["frames"]
    assert samples[("streamflow_latency_seconds_count", scorer_labels)] == frames == EVENTS // FRAME


def test_exporter_histogram_buckets_are_cumulative_decades_of_the_latency_histogram() -> None:
    histogram = LatencyHistogram()
    latencies_ns = np.array([5e3, 2e6, 2e6, 4e7, 3e9])
    histogram.record(latencies_ns)
    exporter = MetricsExporter("sink", histogram)
    reporter = TelemetryReporter("sink", observers=[exporter.observe])
    reporter.report({"kind": "sink", "events": 7, "frames": 2, "written": 5, "pending": 2, "rejected": 0})
    port = exporter.serve(0, "127.0.0.1")
    try:
        samples = scrape(port)
    finally:
        exporter.close()
    labels = (("process", "sink"),)
    assert samples[("streamflow_written_total", labels)] == 5
    assert samples[("streamflow_pending_rows", labels)] == 2
    for le in ("1e-05", "0.001", "0.01", "0.1", "1", "10", "+Inf"):
        bound = float(le)
        expected = int((latencies_ns * 1e-9 <= bound).sum())
        assert samples[("streamflow_latency_seconds_bucket", (("le", le), ("process", "sink")))] == expected, le


@pytest.mark.parametrize(("port", "hold"), [(-1, 0.0), (70000, 0.0), (9100, -1.0)])
def test_bad_metrics_options_are_config_errors(port: int, hold: float) -> None:
    with pytest.raises(ConfigError, match="--metrics-"):
        check_metrics(port, hold)


def test_the_monitor_serves_every_process_telemetry_beside_its_dashboard() -> None:
    import io
    import threading

    from rich.console import Console

    from consumers.monitor import run_monitor
    from tests.test_monitor import Publisher, free_endpoint

    endpoint, port = free_endpoint(), free_port_block(1)
    publisher = Publisher(endpoint)
    publisher.start()
    out, scraped = io.StringIO(), {}
    stop = threading.Event()

    def scrape_then_stop() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(k[0] == "streamflow_line_accepted_total" for k in scraped):
            time.sleep(0.3)
            try:
                scraped.update(scrape(port))
            except OSError:
                continue
        publisher.stop.set()
        stop.set()

    threading.Thread(target=scrape_then_stop, daemon=True).start()
    state = run_monitor(endpoint, console=Console(file=out), stop_event=stop, duration=30, interval=0.5,
                        metrics_port=port)
    assert state.exit_reason == "stopped"
    assert "flow_m" in out.getvalue()  # the dashboard drew the same telemetry
    processes = {dict(labels)["process"] for name, labels in scraped if name == "streamflow_events_total"}
    assert processes == {role for role, _ in state.processes} == {"producer", "scorer", "sink"}
    assert any(name == "streamflow_line_accepted_total" and dict(labels)["line"] == "flow_m"
               for name, labels in scraped)


def test_a_proxy_serves_its_forwarded_counts() -> None:
    import zmq

    from producers.proxy import ProxyConfig, ProxyStats
    from streamflow.stream.transport import Receiver, Sender
    from tests.test_proxy import ProxyThread, drain, endpoints, frame

    up, down = endpoints(2)
    port = free_port_block(1)
    proxy = ProxyThread(ProxyConfig(upstream=(up,), endpoint=down, idle_timeout=20, metrics_port=port,
                                    metrics_hold=3))
    ctx = zmq.Context()
    try:
        with Sender(ctx, up, stream_id=1) as producer, Receiver(ctx, down, name="scorer") as scorer:
            for seq in range(6):
                assert producer.send(frame(seq, 1), 7)
            producer.end_stream(timeout_s=20)
            received, _ = drain(scorer)
            samples = scrape(port)
        stats = proxy.join()
    finally:
        ctx.destroy(linger=0)
    assert isinstance(stats, ProxyStats) and len(received) == 6
    labels = (("process", "proxy"), ("stage", "forwarded"))
    assert samples[("streamflow_events_total", labels)] == 42 == stats.ledger().stages[1].events
    assert samples[("streamflow_frames_total", labels)] == 6
