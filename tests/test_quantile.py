"""Rolling quantiles: the exact Numba window against numpy and pandas, the log histogram against its bound."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamflow.errors import ConfigError
from streamflow.trigger import (
    Histogram,
    LogBinning,
    RollingHistogramQuantile,
    RollingQuantile,
    rolling_quantile,
)

LEVELS = [0.0, 1.0, 0.5, 0.99, 0.01, 0.25]


def _frame(rng: np.random.Generator, size: int, kind: int, shift: float) -> np.ndarray:
    """Scores of one frame: continuous, heavily tied, or drifting; with NaN and inf sprinkled in."""
    if kind == 0:
        x = rng.normal(size=size)
    elif kind == 1:
        x = rng.integers(0, 4, size=size).astype(np.float64)
    else:
        x = rng.exponential(size=size) + shift  # the quantile walks out of any band
    x[rng.random(size) < 0.05] = np.nan
    x[rng.random(size) < 0.01] = np.inf
    return x


def _check_stream(window: int, level: float, band: int | None, frames: list[np.ndarray]) -> int:
    """Feed frames; after each, value() must equal np.quantile of the last `window` finite values."""
    q = RollingQuantile(window, level, band=band)
    kept = np.empty(0)
    for x in frames:
        q.update(x)
        kept = np.concatenate([kept, x[np.isfinite(x)]])[-window:]
        assert q.count == len(kept)
        if len(kept) == 0:
            assert np.isnan(q.value())
        else:
            assert q.value() == np.quantile(kept, level)
    return len(frames)


def test_exact_window_equals_numpy_over_thousands_of_windows() -> None:
    rng = np.random.default_rng(7)
    windows = 0
    for case in range(240):
        window = int(rng.choice([1, 2, 3, 17, 64, 300, 1000]))
        level = float(rng.choice(LEVELS)) if case % 3 else float(rng.random())
        band = int(rng.choice([1, 4, 32])) if case % 2 else None  # small bands force rebuilds
        kind = case % 3
        frames = [
            _frame(rng, int(rng.integers(0, 3 * window + 2)), kind, shift=(f - 10) * 0.5 * (-1) ** case)
            for f in range(20)
        ]
        windows += _check_stream(window, level, band, frames)
    assert windows == 240 * 20


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(1, 60),
    level=st.one_of(st.sampled_from(LEVELS), st.floats(0.0, 1.0)),
    band=st.one_of(st.none(), st.integers(1, 8)),
    frames=st.lists(
        st.lists(st.one_of(st.integers(-3, 3).map(float), st.floats(-1e6, 1e6), st.just(float("nan"))), max_size=90),
        min_size=1,
        max_size=12,
    ),
)
def test_exact_window_equals_numpy_hypothesis(window, level, band, frames) -> None:
    _check_stream(window, level, band, [np.array(f, dtype=np.float64) for f in frames])


def test_warm_up_before_the_window_is_full_uses_what_is_there() -> None:
    q = RollingQuantile(1000, 0.99)
    assert q.count == 0 and np.isnan(q.value())
    x = np.random.default_rng(1).normal(size=700)
    for i in range(0, 700, 70):
        q.update(x[i : i + 70])
        assert q.count == i + 70
        assert q.value() == np.quantile(x[: i + 70], 0.99)


def test_a_frame_longer_than_the_window_keeps_its_last_values() -> None:
    x = np.random.default_rng(2).normal(size=5000)
    q = RollingQuantile(300, 0.9)
    q.update(x[:100])
    q.update(x)
    assert q.count == 300 and q.seen == 5100
    assert q.value() == np.quantile(x[-300:], 0.9)
    q.update(x[:10])
    assert q.value() == np.quantile(np.concatenate([x[-290:], x[:10]]), 0.9)


@pytest.mark.parametrize("window", [1, 7, 1000, 5000])
@pytest.mark.parametrize("level", [0.0, 0.5, 0.99, 1.0])
def test_per_event_mode_equals_pandas(window: int, level: float) -> None:
    x = np.random.default_rng(window).standard_t(3, size=20_000)
    x[::5] = np.round(x[::5])  # ties
    ours = rolling_quantile(x, window, level)
    ours_small_band = rolling_quantile(x, window, level, band=3)
    theirs = pd.Series(x).rolling(window, min_periods=1).quantile(level).to_numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(ours, ours_small_band)


def test_per_event_mode_skips_nan_and_keeps_the_last_value() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=3000)
    x[rng.random(3000) < 0.2] = np.nan
    x[:3] = np.nan
    out = rolling_quantile(x, 100, 0.9)
    finite = np.isfinite(x)
    expected = pd.Series(x[finite]).rolling(100, min_periods=1).quantile(0.9).to_numpy()
    np.testing.assert_allclose(out[finite], expected, rtol=1e-12)
    assert np.isnan(out[:3]).all()
    gaps = np.flatnonzero(~finite[3:]) + 3
    np.testing.assert_array_equal(out[gaps], out[gaps - 1])


@pytest.mark.parametrize(
    ("window", "level", "band"), [(0, 0.5, None), (10, 1.5, None), (10, -0.1, None), (True, 0.5, None), (10, 0.5, 0)]
)
def test_bad_arguments_are_config_errors(window, level, band) -> None:
    with pytest.raises(ConfigError):
        RollingQuantile(window, level, band=band)


# --- the mergeable log histogram -------------------------------------------------------------


def _datasets(rng: np.random.Generator) -> list[np.ndarray]:
    n = 4000
    return [
        rng.normal(size=n),
        rng.lognormal(0, 3, size=n) * 10.0 ** rng.uniform(-6, 6),  # scores at any scale
        rng.standard_cauchy(size=n),  # negatives and heavy tails
        rng.integers(-3, 4, size=n).astype(np.float64),  # ties
        rng.normal(size=n) * 1e-12,  # all in the zero bin
        rng.normal(size=n) * 1e12,  # beyond the binned range
        rng.exponential(size=n) * 1e-4,  # a reconstruction error
    ]


def test_histogram_rank_error_is_within_its_stated_bound() -> None:
    rng = np.random.default_rng(4)
    binning = LogBinning()
    for _ in range(10):
        for x in _datasets(rng):
            hist = Histogram(binning)
            hist.add(x)
            for level in [0.0, 0.01, 0.5, 0.9, 0.99, 0.999, 1.0, float(rng.random())]:
                estimate, exact = hist.quantile(level), np.quantile(x, level)
                rank_error = abs(np.sum(x <= estimate) - np.sum(x <= exact))
                assert rank_error <= hist.rank_error_bound(level) * len(x)


def test_histogram_threshold_accepts_one_percent_to_a_few_per_mille_of_it() -> None:
    """The bound is small where it matters: an exponential tail at q = 1% (docstring: ~2% of q)."""
    x = np.random.default_rng(5).exponential(size=1_000_000)
    hist = Histogram()
    hist.add(x)
    assert hist.rank_error_bound(0.99) < 0.03 * 0.01
    assert abs(np.mean(x > hist.quantile(0.99)) - 0.01) < 0.03 * 0.01
    value_error = abs(hist.quantile(0.99) / np.quantile(x, 0.99) - 1)
    assert value_error < LogBinning().relative_width


def test_merge_equals_the_histogram_of_the_concatenation() -> None:
    rng = np.random.default_rng(6)
    parts = _datasets(rng)[:4]
    merged = Histogram()
    for part in parts:
        h = Histogram()
        h.add(part)
        merged.merge(h)
    whole = Histogram()
    whole.add(np.concatenate(parts))
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert merged.quantile(0.99) == whole.quantile(0.99)
    with pytest.raises(ConfigError):
        merged.merge(Histogram(LogBinning(bins_per_decade=10)))


def test_binning_is_monotone_with_the_stated_width() -> None:
    binning = LogBinning(bins_per_decade=100, lo_decade=-3, hi_decade=3)
    x = np.sort(np.concatenate([np.random.default_rng(8).standard_cauchy(10_000) * 10.0 ** k for k in range(-4, 5)]))
    index = binning.index(x)
    assert (np.diff(index) >= 0).all() and index.min() >= 0 and index.max() < binning.n_bins
    assert binning.index(np.array([np.nan, np.inf]))[0] == -1
    assert binning.relative_width == pytest.approx(10 ** 0.01 - 1)


def test_rolling_histogram_window_is_the_histogram_of_its_latest_values() -> None:
    rng = np.random.default_rng(9)
    x = rng.exponential(size=50_000)
    x[rng.random(50_000) < 0.01] = np.nan
    rolling = RollingHistogramQuantile(10_000, 0.99, blocks=8)
    finite = x[np.isfinite(x)]
    fed = 0
    for i in range(0, len(x), 3000):
        rolling.update(x[i : i + 3000])
        fed += np.isfinite(x[i : i + 3000]).sum()
        n = rolling.count
        if fed > 8 * rolling.block:
            assert 8 * rolling.block < n <= 9 * rolling.block
        latest = Histogram(rolling.binning)
        latest.add(finite[fed - n : fed])
        np.testing.assert_array_equal(rolling.counts(), latest.counts)
        assert rolling.value() == latest.quantile(0.99)
        assert rolling.value_from(latest.counts) == rolling.value()
