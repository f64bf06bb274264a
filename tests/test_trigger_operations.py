"""Trigger operations: short warm-up, rate control under drift, prescales, zero-bias, budget, unique/overlap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamflow.errors import ConfigError
from streamflow.trigger import LineConfig, TriggerMenu

FRAME = 4096


def _frames(scores: dict[str, np.ndarray]):
    n = len(next(iter(scores.values())))
    for start in range(0, n, FRAME):
        yield {name: values[start : start + FRAME] for name, values in scores.items()}


def test_a_line_judges_after_its_stated_minimum_and_counts_what_it_did_not_judge() -> None:
    line = LineConfig("flow1", "flow", 0.01, window=20_000, control=0)
    assert line.warmup_events == 500
    menu = TriggerMenu([line])
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=300), rng.normal(size=300)
    assert np.isnan(menu.select({"flow": first}).thresholds[0])  # 300 < 500 scores: not judged
    selection = menu.select({"flow": second})
    assert np.isnan(selection.thresholds[0]) and not selection.accept.any()
    third = rng.normal(size=1000)
    selection = menu.select({"flow": third})  # 600 scores: judged, on the window so far (it grows to 20,000)
    assert selection.thresholds[0] == np.quantile(np.concatenate([first, second]), 0.99)
    stats = menu.stats()[0]
    assert (stats.seen, stats.not_judged, stats.judged) == (1600, 600, 1000)
    assert stats.population_fraction == stats.accepted / 1600


def _drifting(n: int, seed: int) -> np.ndarray:
    """A learning classifier's scores: a logistic spread whose location grows steadily (+30 over the stream)."""
    rng = np.random.default_rng(seed)
    return rng.logistic(size=n) + 30.0 * np.arange(n) / n


def _interval_fractions(menu: TriggerMenu, scores: np.ndarray, interval: int) -> np.ndarray:
    accepted = np.zeros(len(scores) // interval)
    for start, frame in zip(range(0, len(scores), FRAME), _frames({"clf": scores}), strict=True):
        selection = menu.select(frame)
        np.add.at(accepted, (start + np.flatnonzero(selection.accept)) // interval, 1)
    return accepted / interval


def test_rate_control_holds_one_percent_on_every_interval_while_scores_grow() -> None:
    q, n, interval = 0.01, 1_000_000, 100_000
    scores = _drifting(n, 1)
    free = _interval_fractions(TriggerMenu([LineConfig("l", "clf", q, window=20_000, control=0)]), scores, interval)
    assert free[1:].min() > 1.3 * q  # the window's threshold lags the growing scores: > 1.3% for 1%
    held = _interval_fractions(TriggerMenu([LineConfig("l", "clf", q, window=20_000)]), scores, interval)
    assert np.all(np.abs(held - q) < 0.05 * q), held  # within +-5% on every 100k interval, warm-up's included


def _sparse_counts(seed: int, frames: int = 100) -> np.ndarray:
    """(judged, accepted) per frame of a line whose learner scores ~15% of each frame (CATHODE's SR)."""
    rng = np.random.default_rng(seed)
    menu = TriggerMenu([LineConfig("cathode", "cathode", 0.01, window=20_000)])
    counts = []
    for _ in range(frames):
        scores = np.full(FRAME, np.nan)
        inside = rng.random(FRAME) < 0.146
        scores[inside] = rng.normal(size=int(inside.sum()))
        before = menu.stats()[0]
        menu.select({"cathode": scores})
        after = menu.stats()[0]
        counts.append((after.judged - before.judged, after.accepted - before.accepted))
    return np.array(counts).T


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_sparse_line_holds_its_count_far_below_counting_noise(seed: int) -> None:
    """CATHODE's and ANODE's lines score only the SR: ~600 finite scores, 6 expected accepts a 4096-event frame.
    A fixed threshold's count over 25 frames scatters binomially (~12 of 150); the stepped control holds it to
    a few accepts of q times the judged scores over every such stretch -- the issue's +-5% per 100k events --
    and judges from the first frame (tracking it on itself). The once-a-frame control with tau = 20 that came
    before missed this on two of these three streams."""
    judged, accepted = _sparse_counts(seed)
    assert judged[0] > 0, "the first frame is judged"
    assert abs(accepted[:3].sum() - 0.01 * judged[:3].sum()) <= 4  # tracked on itself
    for start in range(0, 100, 25):
        expected = 0.01 * judged[start:start + 25].sum()
        assert abs(accepted[start:start + 25].sum() - expected) <= 7, (start, accepted[start:start + 25].sum())
    assert abs(accepted.sum() - 0.01 * judged.sum()) <= 6


def test_prescale_records_every_nth_pass_exactly() -> None:
    menu = TriggerMenu([LineConfig("every3", "flow", 0.05, window=5_000, prescale=3),
                        LineConfig("all", "flow", 0.05, window=5_000)])
    rng = np.random.default_rng(2)
    passes = []
    for _ in range(30):
        selection = menu.select({"flow": rng.normal(size=1000)})
        passed = (selection.passed & 1).astype(bool)
        recorded = (selection.bits & 1).astype(bool)
        assert not (recorded & ~passed).any()  # recorded is a subset of passed
        passes += list(recorded[passed])
    assert passes == [(k + 1) % 3 == 0 for k in range(len(passes))]  # the 3rd, 6th, ... pass
    stats = menu.stats()
    assert stats[0].recorded == stats[0].accepted // 3
    assert (stats[1].recorded, stats[1].prescale) == (stats[1].accepted, 1)


def test_zero_bias_line_samples_uniformly_at_its_rate_and_is_reproducible() -> None:
    zb = LineConfig("zero_bias", accept=0.002, kind="zero_bias", seed=7)
    runs = []
    for _ in range(2):
        menu = TriggerMenu([zb, LineConfig("flow1", "flow", 0.01, window=20_000)])
        rng = np.random.default_rng(3)
        bits = np.concatenate([menu.select({"flow": rng.normal(size=FRAME)}).bits for _ in range(250)])
        runs.append(bits)
    np.testing.assert_array_equal(runs[0], runs[1])
    stats = menu.stats()[0]
    n = 250 * FRAME
    assert stats.seen == stats.judged == n and np.isnan(stats.threshold)
    assert abs(stats.recorded - 0.002 * n) < 3 * math.sqrt(0.002 * n)  # binomial error
    with pytest.raises(ConfigError, match="no learner"):
        LineConfig("zb", "flow", 0.01, kind="zero_bias")


def test_budget_holds_the_union_of_overlapping_lines_and_rejects_a_line_above_it() -> None:
    q_budget, n = 0.02, 1_000_000
    rng = np.random.default_rng(4)
    common = rng.normal(size=n)
    scores = {"a": common + 0.5 * rng.normal(size=n), "b": common + 0.5 * rng.normal(size=n),
              "c": _drifting(n, 5)}
    lines = [LineConfig("a", "a", 0.01, window=20_000), LineConfig("b", "b", 0.01, window=20_000),
             LineConfig("c", "c", 0.005, window=20_000), LineConfig("zb", accept=0.001, kind="zero_bias")]
    menu = TriggerMenu(lines, budget=q_budget)
    union = 0
    for frame in _frames(scores):
        union += int(menu.select(frame).accept.sum())
    assert abs(union / n - q_budget) < 0.05 * q_budget
    stats = {s.name: s for s in menu.stats()}
    assert stats["a"].overlap["b"] > 0.3 * stats["a"].recorded  # correlated lines overlap
    shares = stats["a"].accepted / stats["c"].accepted
    assert 1.8 < shares < 2.2  # the lines keep their 2:1 shares inside the budget
    with pytest.raises(ConfigError, match="'big'.*budget"):
        TriggerMenu([LineConfig("big", "a", 0.05)], budget=0.02)


def test_unique_and_overlap_counts_match_the_bits() -> None:
    lines = [LineConfig(f"l{i}", f"s{i}", 0.05, window=5_000, warmup=500) for i in range(3)]
    menu = TriggerMenu(lines)
    rng = np.random.default_rng(6)
    all_bits = []
    for _ in range(20):
        base = rng.normal(size=1000)
        all_bits.append(menu.select({f"s{i}": base + rng.normal(size=1000) for i in range(3)}).bits)
    bits = np.concatenate(all_bits)
    member = [(bits >> np.uint64(i)) & np.uint64(1) == 1 for i in range(3)]
    stats = menu.stats()
    matrix = menu.overlap()
    for i in range(3):
        others = [member[j] for j in range(3) if j != i]
        assert stats[i].unique == int((member[i] & ~others[0] & ~others[1]).sum())
        assert matrix[i, i] == stats[i].recorded == int(member[i].sum())
        for j in range(3):
            if j != i:
                assert matrix[i, j] == stats[i].overlap[f"l{j}"] == int((member[i] & member[j]).sum())


def test_a_toml_menu_sets_the_budget_a_zero_bias_line_and_a_prescale(tmp_path) -> None:
    from streamflow.config import from_dict, read_toml
    from streamflow.scoring.frame_scorer import ScorerConfig

    path = tmp_path / "menu.toml"
    path.write_text("""
[scorer]
budget = 0.03

[[scorer.learners]]
kind = "autoencoder"
name = "ae"
features = ["mj1", "mj2"]

[[scorer.lines]]
name = "ae_1pc"
learner = "ae"
accept = 0.01

[[scorer.lines]]
name = "ae_10pc_ps10"
learner = "ae"
accept = 0.1
prescale = 10

[[scorer.lines]]
name = "zero_bias"
kind = "zero_bias"
accept = 0.001
seed = 3
""")
    config = from_dict(ScorerConfig, read_toml(path)["scorer"], "menu.toml [scorer]")
    assert config.budget == 0.03
    assert [(line.kind, line.recorded) for line in config.lines] == [("score", 0.01), ("score", 0.01),
                                                                     ("zero_bias", 0.001)]
    table = read_toml(path)["scorer"]
    with pytest.raises(ConfigError, match="'ae_1pc': records 0.01 of its population, more than the menu budget"):
        from_dict(ScorerConfig, {**table, "budget": 0.005}, "menu.toml [scorer]")


def test_small_frames_fill_the_warm_up_window_and_are_judged_on_it() -> None:
    menu = TriggerMenu([LineConfig("flow1", "flow", 0.01, window=20_000)])  # warm-up: 500 scores
    rng = np.random.default_rng(9)
    frames = [rng.normal(size=100) for _ in range(30)]
    thresholds = [menu.select({"flow": frame}).thresholds[0] for frame in frames]
    assert np.isnan(thresholds[:4]).all()  # 100 .. 400 scores: not judged
    assert thresholds[4] == np.quantile(np.concatenate(frames[:5]), 0.99)  # the 5th frame reaches 500, with itself
    stats = menu.stats()[0]
    assert stats.not_judged == 400 and stats.judged == 2_600
    assert abs(stats.accepted - 0.01 * stats.judged) <= 0.5 * 0.01 * stats.judged  # near 1% from there on
