"""bench.latency on a short stream: the capacity, then one pipeline run per policy, every event scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.latency import main


@pytest.mark.timeout(600)
def test_latency_bench_measures_capacity_and_a_paced_and_a_max_rate_run(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "latency.json"
    assert main(["--quick", "--source", "synthetic", "--rates", "0.5,max", "--policies", "budget",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    capacity = result["capacity"]["events_per_s"]
    assert capacity > 1000
    paced, top = result["runs"]
    assert (paced["rate"], top["rate"]) == ("50%", "max")
    assert paced["target_events_per_s"] == pytest.approx(capacity / 2)
    for run in (paced, top):
        assert run["scored"] == run["sent"] == 40_000  # every event scored
        assert 0 < run["p50_ms"] <= run["p99_ms"]
        assert 0 <= run["learnt_min"] <= run["learnt_max"] <= 1
        assert run["of_capacity"] == pytest.approx(run["scorer_events_per_s"] / capacity)
    assert paced["producer_events_per_s"] < 0.8 * capacity  # paced, not max
    assert "score-only capacity of the default menu" in capsys.readouterr().out
