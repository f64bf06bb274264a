"""The mjj scan: windows laid along mjj, lines sharing one rate budget, the window of the resonance stands out."""

from __future__ import annotations

import numpy as np
import pytest

from streamflow.config import from_dict
from streamflow.errors import ConfigError
from streamflow.events import open_source
from streamflow.learners import CathodeConfig, CWoLAConfig
from streamflow.scoring.frame_scorer import FrameScorer, ScorerConfig
from streamflow.scoring.scan import ScanConfig


def test_windows_cover_the_range_overlap_by_half_and_share_the_budget() -> None:
    scan = ScanConfig(low=2600.0, high=6000.0, kinds=("cwola", "cathode"), budget=0.01)
    windows = scan.windows()
    assert len(windows) == 14
    assert windows[0][1][0][0] == pytest.approx(2600.0) and windows[-1][1][1][1] <= 6000.0
    for (sr, (low, high)), (next_sr, _) in zip(windows, windows[1:], strict=False):
        assert sr[1] / sr[0] == pytest.approx(1.10) and low[1] == sr[0] and high[0] == sr[1]
        assert next_sr[0] == pytest.approx(sr[0] + 0.5 * (sr[1] - sr[0]))  # half a width further on
    learners, lines = scan.expand()
    assert len(learners) == len(lines) == 28
    assert {type(c) for c in learners} == {CWoLAConfig, CathodeConfig}
    assert sum(line.accept for line in lines) == pytest.approx(0.01)  # the scan's stream-wide rate bound
    assert any(c.signal_region[0] < 3500 < c.signal_region[1] for c in learners)


@pytest.mark.parametrize("options, message", [
    ({"low": -100.0}, "outside the data"),
    ({"low": 5000.0, "high": 5200.0}, "no window"),
    ({"kinds": ["flow"]}, "kinds"),
    ({"budget": 0.0}, "budget"),
])
def test_bad_scan_options_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        from_dict(ScorerConfig, {"scan": options})
    assert "\n" not in str(error.value) and "scan" in str(error.value)


def test_the_window_holding_the_resonance_stands_out() -> None:
    """400k synthetic events, 1% signal at mjj ~ 3.5 TeV, a CWoLA scan at q = 1% per window (budget 14%)."""
    config = from_dict(ScorerConfig, {"scan": {"kinds": ["cwola"], "budget": 0.14, "window": 5000},
                                       "device": "cpu", "threads": 1})
    scorer = FrameScorer(config)
    for _, batch in zip(range(98), open_source("synthetic", signal_fraction=0.01, seed=5).chunks(4096), strict=False):
        scorer.process(batch)
    sic = {line["name"]: line["sic"] for line in scorer.line_stats()}
    regions = {c.name: c.signal_region for c in config.learners}
    best = max(sic, key=lambda name: np.nan_to_num(sic[name]))
    assert regions[best][0] < 3500 < regions[best][1]
    away = [np.nan_to_num(v) for name, v in sic.items() if regions[name][1] < 3300 or regions[name][0] > 3700]
    assert sic[best] > 3 * max(away), sic
