"""Trigger lines and menu: accept rates, warm-up, bursts, bits, labels, agreement across scorers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamflow.config import coerce, from_dict, read_toml
from streamflow.errors import ConfigError, StreamflowError
from streamflow.trigger import (
    MAX_LINES,
    LineConfig,
    LogBinning,
    RollingQuantile,
    TriggerMenu,
    quantile_from_counts,
    rank_error_bound,
)

FRAME = 4096


def _run(menu: TriggerMenu, scores: np.ndarray, learner: str = "flow") -> None:
    for i in range(0, len(scores), FRAME):
        menu.select({learner: scores[i : i + FRAME]})


def _expected_and_sigma(q: float, window: int, judged: int) -> tuple[float, float]:
    """Expected accept fraction on iid continuous scores, and a conservative standard deviation.

    Mean: the threshold is the order statistic of rank k + g = (W - 1)(1 - q) of W
    iid scores (linear rule), whose exceedance probability has mean
    1 - (k + g + 1) / (W + 1) = (W q + 1 - q) / (W + 1): q + 1/W to first order.
    Spread: N judged events give a binomial term q (1 - q) / N; the threshold's own
    exceedance probability fluctuates with variance q (1 - q) / W, but windows
    more than W events apart are independent and overlapping ones are correlated
    as 1 - d/W, so its average over N >> W events has variance ~ q (1 - q) / N.
    Treating the two terms as independent gives sigma = sqrt(2 q (1 - q) / N),
    an upper bound: the two are anti-correlated (events that raise the window
    also raise the threshold), and over seeds the spread measured ~6x smaller.
    """
    mean = (window * q + 1 - q) / (window + 1)
    return mean, math.sqrt(2 * q * (1 - q) / judged)


def test_one_percent_line_accepts_one_percent_of_a_stationary_stream() -> None:
    q, window = 0.01, 20_000
    menu = TriggerMenu([LineConfig("flow1", "flow", q, window=window, warmup=window, control=0)])
    _run(menu, np.random.default_rng(0).normal(size=1_000_000))
    stats = menu.stats()[0]
    assert stats.judged == 1_000_000 - 5 * FRAME  # warm-up: the first frames fill the 20k window
    mean, sigma = _expected_and_sigma(q, window, stats.judged)
    assert abs(stats.accept_fraction - mean) < 5 * sigma  # 1% +- 0.07%


def test_accept_fraction_holds_while_the_score_scale_drifts_tenfold() -> None:
    """Scores E * s(t), E ~ Exp(1), s growing 10x over the stream: the rolling threshold follows.

    The window lags the drift: its threshold reflects a scale between s(t - W - B)
    and s(t), so an event passes with probability q^r, r in [10^(-(W + B)/N), 1]:
    the accept fraction lies in [q, q^r_min] up to the statistical tolerance.
    """
    q, window, n = 0.01, 10_000, 2_000_000
    rng = np.random.default_rng(1)
    scale = 10.0 ** (np.arange(n) / n)
    scores = rng.exponential(size=n) * scale
    menu = TriggerMenu([LineConfig("flow1", "flow", q, window=window, warmup=window, control=0)])
    _run(menu, scores)
    stats = menu.stats()[0]
    mean, sigma = _expected_and_sigma(q, window, stats.judged)
    lag_high = q ** (10.0 ** (-(window + FRAME) / n))
    assert mean - 5 * sigma < stats.accept_fraction < lag_high + 5 * sigma  # 0.96% .. 1.13% (got 1.05%)
    frozen = np.mean(scores[window:] > np.quantile(scores[:window], 1 - q))
    assert frozen > 0.25  # a threshold frozen after warm-up would accept a quarter of the stream


def test_no_accepts_during_warm_up_then_thresholds_from_the_past() -> None:
    menu = TriggerMenu([LineConfig("flow1", "flow", 0.1, window=10_000, warmup=5_000, control=0)])
    x = np.random.default_rng(2).normal(size=12 * 1000)
    reference = RollingQuantile(10_000, 0.9)
    for i in range(12):
        frame = x[i * 1000 : (i + 1) * 1000]
        selection = menu.select({"flow": frame})
        if reference.count < 5_000:
            assert np.isnan(selection.thresholds[0]) and not selection.accept.any()
        else:
            assert selection.thresholds[0] == reference.value()
            np.testing.assert_array_equal(selection.accept, frame > reference.value())
        reference.update(frame)
    assert menu.stats()[0].judged == 7_000


def _burst(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    frame = rng.normal(size=FRAME)
    burst = rng.choice(FRAME, size=1000, replace=False)
    frame[burst] = 10.0 + rng.random(1000)
    return frame, burst


def test_a_burst_is_judged_against_the_past_not_diluted_by_itself() -> None:
    menu = TriggerMenu([LineConfig("flow1", "flow", 0.01, window=20_000, control=0)])  # a plain line
    rng = np.random.default_rng(3)
    _run(menu, rng.normal(size=24_576))
    frame, burst = _burst(rng)
    selection = menu.select({"flow": frame})
    assert set(burst) <= set(selection.indices)  # all 1000, not 1% of the frame
    assert selection.accept.sum() < 1000 + 3 * 0.01 * FRAME


def test_a_controlled_line_holds_its_rate_through_a_burst() -> None:
    """A controlled line judges a frame in steps: the burst's first step passes (it beats the past), then the
    rate control cuts the line back to its rate within the frame and pays the excess back after it."""
    menu = TriggerMenu([LineConfig("flow1", "flow", 0.01, window=20_000)])
    rng = np.random.default_rng(3)
    _run(menu, rng.normal(size=24_576))
    frame, burst = _burst(rng)
    taken = int(menu.select({"flow": frame}).accept.sum())
    assert 0.01 * FRAME < taken < 500, "the first step's burst events pass, not the whole burst"
    before = menu.stats()[0].accepted
    quiet = 30
    for _ in range(quiet):
        menu.select({"flow": rng.normal(size=FRAME)})
    assert menu.stats()[0].accepted - before < 0.01 * quiet * FRAME, "the excess is paid back by taking less"


def test_bits_mark_each_line_and_accept_is_their_union() -> None:
    # plain lines (control 0) apply one threshold a frame; a controlled line's steps each have their own
    lines = [
        LineConfig("flow_1pc", "flow", 0.01, window=8_000, control=0),
        LineConfig("flow_10pc", "flow", 0.10, window=8_000, control=0),
        LineConfig("ae_5pc", "ae", 0.05, window=8_000, estimator="histogram", control=0),
    ]
    menu = TriggerMenu(lines)
    assert menu.learners == ("flow", "ae")
    rng = np.random.default_rng(4)
    for _ in range(5):
        scores = {"flow": rng.normal(size=FRAME), "ae": rng.exponential(size=FRAME)}
        selection = menu.select(scores)
    for i, line in enumerate(lines):
        passed = scores[line.learner] > selection.thresholds[i]
        np.testing.assert_array_equal((selection.bits >> np.uint64(i)) & np.uint64(1), passed)
    np.testing.assert_array_equal(selection.accept, selection.bits != 0)
    assert selection.bits.dtype == np.uint64
    assert 0.08 < menu.stats()[1].accept_fraction < 0.12


def test_non_finite_scores_are_never_accepted_and_never_enter_the_window() -> None:
    menu = TriggerMenu([LineConfig("cwola", "cwola", 0.5, window=1_000, warmup=10, control=0)])
    rng = np.random.default_rng(5)
    first = rng.normal(size=100)
    menu.select({"cwola": first})
    frame = rng.normal(size=100)
    frame[:30] = np.nan
    frame[30:40] = np.inf
    selection = menu.select({"cwola": frame})
    assert not selection.accept[:40].any() and selection.accept[40:].any()
    stats = menu.stats()[0]
    assert (stats.seen, stats.skipped, stats.not_judged, stats.judged) == (160, 40, 100, 60)
    threshold = menu.select({"cwola": np.zeros(1)}).thresholds[0]
    assert threshold == np.quantile(np.concatenate([first, frame[40:]]), 0.5)


def test_scores_tied_with_the_threshold_do_not_pass() -> None:
    menu = TriggerMenu([LineConfig("flow1", "flow", 0.01, window=1_000, warmup=100)])
    menu.select({"flow": np.ones(500)})
    selection = menu.select({"flow": np.array([1.0, 1.0, 1.0 + 1e-12])})
    assert selection.thresholds[0] == 1.0
    np.testing.assert_array_equal(selection.accept, [False, False, True])


def test_labels_give_signal_and_background_efficiencies_and_sic() -> None:
    menu = TriggerMenu([LineConfig("flow1", "flow", 0.05, window=5_000)])
    rng = np.random.default_rng(6)
    accepted_s = accepted_b = judged_s = judged_b = 0
    for _ in range(20):
        labels = (rng.random(FRAME) < 0.1).astype(np.int8)
        scores = rng.normal(size=FRAME) + 1.5 * labels
        selection = menu.select({"flow": scores}, labels=labels)
        if not np.isnan(selection.thresholds[0]):
            judged_s += (labels == 1).sum()
            judged_b += (labels == 0).sum()
            accepted_s += (selection.accept & (labels == 1)).sum()
            accepted_b += (selection.accept & (labels == 0)).sum()
    stats = menu.stats()[0]
    assert (stats.signal_events, stats.signal_accepted) == (judged_s, accepted_s)
    assert (stats.background_events, stats.background_accepted) == (judged_b, accepted_b)
    assert stats.sic == pytest.approx((accepted_s / judged_s) / math.sqrt(accepted_b / judged_b))
    assert stats.eff_s > 5 * stats.eff_b  # the signal is shifted up: the line enriches it
    assert set(stats.to_dict()) >= {"eff_s", "eff_b", "sic", "accept_fraction", "threshold"}


def test_histogram_lines_of_two_scorers_agree_on_the_union_threshold() -> None:
    """Each scorer all-reduces its window histograms; both apply the threshold of the union."""
    line = LineConfig("ae1", "ae", 0.01, window=20_000, warmup=8_000, estimator="histogram")
    rng = np.random.default_rng(7)
    peer: dict[str, np.ndarray] = {}
    menus = {
        rank: TriggerMenu([line], reduce=lambda local, other=other: local + peer[other])
        for rank, other in (("a", "b"), ("b", "a"))
    }
    seen = {"a": np.empty(0), "b": np.empty(0)}
    for _ in range(14):
        frames = {"a": rng.exponential(size=2048), "b": 3 * rng.exponential(size=2048)}
        peer.update({rank: menu.window_counts() for rank, menu in menus.items()})  # as an all-reduce sees them
        thresholds = [menus[rank].select({"ae": frames[rank]}).thresholds[0] for rank in ("a", "b")]
        summed = peer["a"][0] + peer["b"][0]
        union = np.concatenate([seen[rank][len(seen[rank]) - peer[rank][0].sum() :] for rank in ("a", "b")])
        if len(union) < 8_000:
            assert np.isnan(thresholds).all()
        else:
            assert thresholds[0] == thresholds[1] == quantile_from_counts(summed, 0.99, LogBinning())
            rank_error = abs(np.sum(union <= thresholds[0]) - np.sum(union <= np.quantile(union, 0.99)))
            assert rank_error <= rank_error_bound(summed, 0.99, LogBinning()) * len(union)
        for rank in seen:
            seen[rank] = np.concatenate([seen[rank], frames[rank]])
    assert len(union) > 40_000  # both windows full


def test_shared_thresholds_can_be_summed_every_k_frames() -> None:
    """reduce_every = 3: one all-reduce per 3 frames, and the frames in between reuse that sum."""
    line = LineConfig("ae1", "ae", 0.01, window=4_000, warmup=1_000, estimator="histogram")
    sums: list[np.ndarray] = []
    menu = TriggerMenu([line], reduce=lambda local: sums.append(local.copy()) or local, reduce_every=3)
    rng = np.random.default_rng(3)
    thresholds = [menu.select({"ae": rng.exponential(size=1000) * (1 + i)}).thresholds[0] for i in range(7)]
    assert len(sums) == 3  # frames 0, 3 and 6
    assert np.isnan(thresholds[1]) and np.isnan(thresholds[2])  # frame 0's sum was taken before any score
    assert thresholds[4] == thresholds[5] == quantile_from_counts(sums[1][0], 0.99, LogBinning())
    assert thresholds[6] > thresholds[5]  # a fresh sum takes the rising scores in
    with pytest.raises(ConfigError, match="reduce_every"):
        TriggerMenu([line], reduce=lambda local: local, reduce_every=0)


def test_line_configs_load_from_toml(tmp_path) -> None:
    path = tmp_path / "trigger.toml"
    path.write_text(
        """
[[scorer.lines]]
name = "flow_1pc"
learner = "flow"
accept = 0.01
window = 200000
warmup = 50000

[[scorer.lines]]
name = "cwola_1pc"
learner = "cwola"
accept = 0.01
estimator = "histogram"
"""
    )
    lines = coerce(tuple[LineConfig, ...], read_toml(path)["scorer"]["lines"], "scorer.lines")  # as ScorerConfig
    assert lines[0] == LineConfig("flow_1pc", "flow", 0.01, window=200_000, warmup=50_000)
    assert lines[1].warmup_events == 500  # ceil(5 / q): the window grows from there to 100,000
    menu = TriggerMenu(lines)  # as FrameScorer
    assert [line.name for line in menu.lines] == ["flow_1pc", "cwola_1pc"]


@pytest.mark.parametrize(
    "bad",
    [
        {"accept": 1.0},
        {"accept": 0},
        {"window": 0},
        {"warmup": 2_000_000},
        {"estimator": "tdigest"},
        {"colour": "red"},
    ],
)
def test_bad_line_configs_are_config_errors(bad: dict) -> None:
    with pytest.raises(ConfigError):
        from_dict(LineConfig, {"name": "l", "learner": "flow", "accept": 0.01, **bad})


def test_menu_limits_and_missing_scores() -> None:
    lines = [LineConfig(f"l{i}", "flow", 0.01, window=10) for i in range(MAX_LINES + 1)]
    TriggerMenu(lines[:MAX_LINES])
    with pytest.raises(ConfigError, match="64"):
        TriggerMenu(lines)
    with pytest.raises(ConfigError, match="l0"):
        TriggerMenu([lines[0], lines[0]])
    menu = TriggerMenu(lines[:2])
    assert menu.window_counts().shape == (0, 0)  # no histogram lines: nothing to all-reduce
    with pytest.raises(StreamflowError, match="flow"):
        menu.select({"ae": np.zeros(3)})
    with pytest.raises(StreamflowError, match="labels"):
        menu.select({"flow": np.zeros(3)}, labels=np.zeros(4))
