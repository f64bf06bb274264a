"""Lines are judged on one population at one rate: a line whose learner scores only the
mjj sidebands and signal region is charged for the events it does not score."""

from __future__ import annotations

import numpy as np
import pytest

from streamflow.config import from_dict, to_dict
from streamflow.errors import ConfigError
from streamflow.scoring.frame_scorer import ScorerConfig
from streamflow.trigger import LineConfig, TriggerMenu

FRAME = 5_000
FRAMES = 40


def _stream(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """mjj uniform over 2-5 TeV for both classes (so only 27% of the signal lies in 3.1-3.9 TeV); 2% signal."""
    labels = (rng.random(FRAME) < 0.02).astype(np.int8)
    return labels, rng.uniform(2000.0, 5000.0, FRAME)


def test_a_partial_line_is_counted_on_all_events_and_on_the_signal_region() -> None:
    rng = np.random.default_rng(3)
    q = 0.01
    menu = TriggerMenu([LineConfig("window", "cwola", q, window=20_000, warmup=1_000),
                        LineConfig("everything", "flow", q, window=20_000, warmup=1_000)])
    tally = {key: 0 for key in ("events", "signal", "background", "window_signal", "window_signal_acc",
                                "window_acc", "window_judged", "sr_signal", "sr_signal_acc_w", "sr_signal_acc_e")}
    for _ in range(FRAMES):
        labels, mjj = _stream(rng)
        in_window = (mjj >= 3100) & (mjj < 3900)
        # The partial learner sees signal clearly where it scores; NaN outside 3.1-3.9 TeV.
        partial = np.where(in_window, rng.normal(size=FRAME) + 4.0 * labels, np.nan)
        full = rng.normal(size=FRAME) + 1.0 * labels
        selection = menu.select({"cwola": partial, "flow": full}, labels, mjj)
        if np.isnan(selection.thresholds).any():
            continue
        passed_w = (selection.bits & 1) == 1
        passed_e = (selection.bits & 2) == 2
        sr = (mjj >= 3300) & (mjj < 3700)
        signal = labels == 1
        tally["events"] += FRAME
        tally["signal"] += int(signal.sum())
        tally["background"] += int((~signal).sum())
        tally["window_signal"] += int((signal & in_window).sum())
        tally["window_signal_acc"] += int((passed_w & signal).sum())
        tally["window_acc"] += int(passed_w.sum())
        tally["window_judged"] += int(in_window.sum())
        tally["sr_signal"] += int((sr & signal).sum())
        tally["sr_signal_acc_w"] += int((passed_w & sr & signal).sum())
        tally["sr_signal_acc_e"] += int((passed_e & sr & signal).sum())
    window, everything = menu.stats()
    # Both lines are counted over the same events: every event after warm-up, scored or not.
    assert window.events == everything.events == tally["events"]
    assert window.signal_events == everything.signal_events == tally["signal"]
    assert window.judged == tally["window_judged"] < 0.3 * window.events
    assert window.scored_fraction == pytest.approx(window.judged / window.events)
    assert everything.scored_fraction == 1.0
    # The threshold holds q of the scored events; of the stream the partial line takes ~0.27 q.
    assert window.accept_fraction == pytest.approx(q, rel=0.2)
    assert window.stream_fraction == pytest.approx(tally["window_acc"] / tally["events"])
    assert window.stream_fraction < 0.4 * everything.stream_fraction
    # Stream-wide eff_S: accepted signal over *all* signal, whatever the learner scored.
    assert window.eff_s == pytest.approx(tally["window_signal_acc"] / tally["signal"])
    counted_the_old_way = tally["window_signal_acc"] / tally["window_signal"]  # over the signal it scored
    old_rate = window.accepted / window.judged
    assert counted_the_old_way > 2 * window.eff_s  # the old counting overstated eff_S by more than 2x ...
    assert old_rate > 2 * window.stream_fraction  # ... and its rate
    # The signal-region figures: both lines over the same SR events.
    assert window.sr_signal == everything.sr_signal == tally["sr_signal"] > 0
    assert window.sr_eff_s == pytest.approx(tally["sr_signal_acc_w"] / tally["sr_signal"])
    assert everything.sr_eff_s == pytest.approx(tally["sr_signal_acc_e"] / tally["sr_signal"])
    assert window.sr_events == everything.sr_events
    assert np.isfinite(window.sr_sic) and np.isfinite(window.sic)


def test_without_a_region_feature_the_signal_region_figures_are_undefined() -> None:
    menu = TriggerMenu([LineConfig("flow", "flow", 0.1, window=100)])
    rng = np.random.default_rng(0)
    for _ in range(3):
        menu.select({"flow": rng.normal(size=200)}, (rng.random(200) < 0.1).astype(np.int8))
    stats = menu.stats()[0]
    assert stats.sr_events == 0 and np.isnan(stats.sr_eff_s) and np.isfinite(stats.eff_s)


def test_the_signal_region_is_configurable_and_checked() -> None:
    tables = {"learners": [{"kind": "autoencoder", "name": "ae"}],
              "lines": [{"name": "ae", "learner": "ae", "accept": 0.01}]}
    assert from_dict(ScorerConfig, tables).signal_region == (3300.0, 3700.0)
    config = from_dict(ScorerConfig, {**tables, "signal_region": [3000, 3500]})
    assert config.signal_region == (3000.0, 3500.0) and to_dict(config)["signal_region"] == (3000.0, 3500.0)
    for bad in ([3500, 3000], [3000], "SR"):
        with pytest.raises(ConfigError, match="signal_region"):
            from_dict(ScorerConfig, {**tables, "signal_region": bad})
