"""Telemetry: histogram percentiles within their stated 6 %, merge, the JSON stats lines."""

import json

import numpy as np

from streamflow.stream.telemetry import LatencyHistogram, TelemetryReporter, read_jsonl


def test_percentiles_within_bucket_width_of_exact():
    rng = np.random.default_rng(1)
    latencies_ns = rng.lognormal(mean=np.log(2e6), sigma=1.0, size=100_000)  # around 2 ms
    hist = LatencyHistogram()
    hist.record(latencies_ns)
    for p in (50, 90, 99):
        exact = np.percentile(latencies_ns, p) * 1e-9
        reported = hist.percentile(p)
        assert exact <= reported * 1.0000001, "the upper edge never under-reports"
        assert reported <= exact * 1.06, f"p{p}: {reported} vs exact {exact}"


def test_merge_equals_recording_everything_in_one():
    rng = np.random.default_rng(2)
    a, b = rng.exponential(1e5, 1000), rng.exponential(1e8, 1000)
    h1, h2, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    h1.record(a), h2.record(b), both.record(np.concatenate([a, b]))
    h1.merge(h2)
    assert np.array_equal(h1.counts, both.counts)
    assert h1.total == 2000


def test_extremes_land_in_under_and_overflow_buckets():
    hist = LatencyHistogram()
    hist.record(np.array([0.0, 10.0, 1e13]))
    assert hist.counts[0] == 2 and hist.counts[-1] == 1
    assert np.isnan(LatencyHistogram().percentile(50))


def test_reporter_writes_json_lines_with_nan_as_null(tmp_path):
    sent = []
    path = tmp_path / "telemetry-scorer.jsonl"
    reporter = TelemetryReporter("scorer", publish=sent.append, jsonl_path=path, interval=0.0)
    assert reporter.maybe_report(lambda: {"events": 5, "threshold": float("nan")})
    reporter.report({"events": 7})
    reporter.close()
    lines = read_jsonl(path)
    assert [m["events"] for m in lines] == [5, 7]
    assert lines[0]["threshold"] is None and lines[0]["role"] == "scorer"
    assert json.loads(sent[1]) == lines[1]
