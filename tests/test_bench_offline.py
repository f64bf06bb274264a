"""bench.offline on a short synthetic stream: every online line beside its offline anchors."""

from __future__ import annotations

import json

import pytest

from bench.offline import main


@pytest.mark.timeout(300)
def test_offline_anchor_reports_every_line_at_its_stream_rate(tmp_path, capsys):
    out = tmp_path / "offline.json"
    assert main(["--events", "30000", "--signal-fraction", "0.05", "--window", "2000", "--epochs", "1",
                 "--folds", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {row["line"]: row for row in result["lines"]}
    assert set(rows) == {"flow_m", "flow_logm", "cwola", "ae"}
    # The lines judge from their first frame (a frame's own quantile until the window holds enough scores),
    # so the population is every event from the first frame every line judged on.
    assert result["population_start"] >= 0 and result["population_events"] == 30000 - result["population_start"]
    cwola = rows["cwola"]
    assert cwola["scored_fraction"] < 0.5 and 0 < cwola["rate"]  # CWoLA scores only 3.1-3.9 TeV
    assert 0 <= cwola["online_line"]["eff_s"] <= 1 and 0 <= cwola["online_line"]["purity"] <= 1
    for name in ("online_scores", "offline_same_architecture", "offline_hgb_cwola"):
        figures = cwola[name]
        at_rate, at_1pct = figures["at_rate_eff_s"], figures["at_1pct_eff_s"]
        assert 0 <= min(at_rate, at_1pct) and max(at_rate, at_1pct) <= 1, name
        assert (at_rate <= at_1pct) if cwola["rate"] <= 0.01 else (at_rate >= at_1pct), name  # a wider cut keeps more
        assert 0 <= figures["sr_auc"] <= 1, name
    # A 5% resonance is what the offline CWoLA classifier finds, inside the SR too.
    assert cwola["offline_hgb_cwola"]["sr_auc"] > 0.6
    assert cwola["offline_hgb_cwola"]["at_rate_purity"] > 5 * result["signal_fraction"]
    assert "offline HistGradientBoosting CWoLA" in capsys.readouterr().out
