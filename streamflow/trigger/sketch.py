"""A mergeable, fixed-memory quantile estimator: a histogram on a log axis.

When to use which. The exact :class:`~streamflow.trigger.rolling.RollingQuantile`
is the default: no approximation, the fastest per frame (bench/quantile.py), and
about 10 bytes per window event (10 MB for W = 1M). Use this histogram when the
window is too big to hold -- its memory (1.4 MB) does not grow with W -- or when
several scorers must agree on one threshold: the window's histogram is a plain
int64 array, so ranks all-reduce it (a sum) and each derives the same threshold
from the sum, the threshold of the union of their windows. It costs ~30 ns per
event (a log10 per value, and clearing a block's row of counts per W/K events).

Binning. A fixed monotone map of the score axis onto ``2 M + 1`` bins with
``M = D (hi - lo)`` (D bins per decade; lo, hi decades):

    x >= 10^lo:      bin M + 1 + floor(D log10(x / 10^lo))   (clipped to the last bin)
    |x| < 10^lo:     bin M                                   (one "zero" bin)
    x <= -10^lo:     bin M - 1 - floor(D log10(|x| / 10^lo))

so every bin spans the same *relative* width 10^(1/D) - 1 (0.46% for D = 500)
whatever the scale of the scores: an online model's score scale may drift by
orders of magnitude and a reconstruction error may live at 1e-4, where a fixed
linear or log1p axis would lose all resolution. Defaults: D = 500,
|x| in [1e-9, 1e9) -- 18001 bins, 144 kB per histogram; outside it the outer
bins absorb the values (the value bound below then loosens there, the rank bound
does not).

Quantile. For level p over n values the exact 'linear' rule (numpy's) reads the
order statistics x_(k), x_(k+1) with k = floor((n - 1) p); the histogram finds
the bins b_k and b_(k+1) holding those ranks and places the r-th value of a bin
of c values at fraction (r + 1/2) / c of the bin (in log10 |x|), then
interpolates between the two exactly as numpy does.

Error bound (tested). Let x* be the exact quantile and x^ the estimate. Both lie
between the lower edge of b_k and the upper edge of b_(k+1), and no value lies
in a bin strictly between those two, so

    | #{x_i <= x^} - #{x_i <= x*} |  <=  c(b_k) + c(b_(k+1))   (c(b_k) if one bin)

values: the selected fraction above the estimate differs from the exact one by
at most that many events -- :func:`rank_error_bound` returns it as a fraction
of n. For a density f at the threshold x*, c(b) / n ~ f(x*) x* (10^(1/D) - 1):
for an exponential tail at q = 1% that is 2% of q, i.e. 1% +- 0.02%. And when
x_(k), x_(k+1) share a bin, |x^ / x* - 1| < 10^(1/D) - 1.

Window. :class:`RollingHistogramQuantile` keeps K + 1 blocks of ``ceil(W / K)``
events (a ring of int32 count rows) and their int64 sum: the window is the
last K full blocks plus the filling one, so it holds at least W and fewer than
W + W / K of the latest finite values (exactly the last ``count`` values).
Memory: (K + 1) x bins x 4 + bins x 8 bytes, 1.4 MB for K = 16 and the default
bins, whatever W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from streamflow.errors import ConfigError
from streamflow.trigger.rolling import check_window_level


@dataclass(frozen=True)
class LogBinning:
    """The fixed bins: ``bins_per_decade`` per decade of |x| in [10^lo_decade, 10^hi_decade)."""

    bins_per_decade: int = 500
    lo_decade: int = -9
    hi_decade: int = 9

    def __post_init__(self) -> None:
        if self.bins_per_decade < 1:
            raise ConfigError(f"log binning: bins_per_decade must be >= 1, got {self.bins_per_decade}")
        if self.hi_decade <= self.lo_decade:
            raise ConfigError(
                f"log binning: hi_decade ({self.hi_decade}) must exceed lo_decade ({self.lo_decade})"
            )

    @property
    def per_sign(self) -> int:
        """M: bins on each side of the zero bin."""
        return self.bins_per_decade * (self.hi_decade - self.lo_decade)

    @property
    def n_bins(self) -> int:
        return 2 * self.per_sign + 1

    @property
    def relative_width(self) -> float:
        """Relative width of every bin outside the zero bin: 10^(1/D) - 1."""
        return 10.0 ** (1.0 / self.bins_per_decade) - 1.0

    def index(self, values: np.ndarray) -> np.ndarray:
        """Bin of each finite value (int64); non-finite values get -1."""
        values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        out = np.empty(values.shape[0], dtype=np.int64)
        _index_many(values, self.bins_per_decade, self.lo_decade, self.per_sign, out)
        return out

    def empty(self) -> np.ndarray:
        """An all-zero count array of this binning."""
        return np.zeros(self.n_bins, dtype=np.int64)


@njit(cache=True)
def _bin_of(x, d, lo, m):
    a = abs(x)
    t = d * (math.log10(a) - lo) if a > 0.0 else -1.0
    if t < 0.0:
        return m
    j = min(int(t), m - 1)
    return m + 1 + j if x > 0.0 else m - 1 - j


@njit(cache=True)
def _index_many(values, d, lo, m, out):
    for i in range(values.shape[0]):
        x = values[i]
        out[i] = _bin_of(x, d, lo, m) if math.isfinite(x) else -1


@njit(cache=True)
def _add(counts, values, d, lo, m):
    """Count the finite values into ``counts``; return how many there were."""
    added = 0
    for x in values:
        if math.isfinite(x):
            counts[_bin_of(x, d, lo, m)] += 1
            added += 1
    return added


@njit(cache=True)
def _rank_bin(counts, r, start, before):
    """First bin from ``start`` (with ``before`` values below it) holding 0-based rank ``r``."""
    b = start
    while before + counts[b] <= r:
        before += counts[b]
        b += 1
    return b, before


@njit(cache=True)
def _value_at(b, f, d, lo, m):
    """The value at fraction ``f`` in [0, 1] of bin ``b`` (uniform in log10 |x|)."""
    if b == m:
        return 10.0**lo * (2.0 * f - 1.0)
    if b > m:
        return 10.0 ** (lo + (b - m - 1 + f) / d)
    return -(10.0 ** (lo + (m - 1 - b + 1.0 - f) / d))


@njit(cache=True)
def _quantile(counts, level, d, lo, m):
    """Estimate of the 'linear' quantile and the bound c(b_k) [+ c(b_(k+1))] on its rank error."""
    n = 0
    for c in counts:
        n += c
    if n == 0:
        return np.nan, 0
    v = (n - 1) * level
    k = min(int(math.floor(v)), n - 1)
    bk, before = _rank_bin(counts, k, 0, 0)
    a = _value_at(bk, (k - before + 0.5) / counts[bk], d, lo, m)
    if v >= n - 1:
        return a, counts[bk]
    bk1, before1 = _rank_bin(counts, k + 1, bk, before)
    b = _value_at(bk1, (k + 1 - before1 + 0.5) / counts[bk1], d, lo, m)
    g = v - math.floor(v)
    diff = b - a
    q = b - diff * (1.0 - g) if g >= 0.5 else a + diff * g
    bound = counts[bk] if bk1 == bk else counts[bk] + counts[bk1]
    return q, bound


def quantile_from_counts(counts: np.ndarray, level: float, binning: LogBinning) -> float:
    """The estimated quantile at ``level`` of the values histogrammed in ``counts``; NaN if empty."""
    counts = _check_counts(counts, binning)
    q, _ = _quantile(counts, float(level), binning.bins_per_decade, binning.lo_decade, binning.per_sign)
    return float(q)


def rank_error_bound(counts: np.ndarray, level: float, binning: LogBinning) -> float:
    """Bound on |F(estimate) - F(exact quantile)| as a fraction of the values (module docstring)."""
    counts = _check_counts(counts, binning)
    n = int(counts.sum())
    if n == 0:
        return 0.0
    _, bound = _quantile(counts, float(level), binning.bins_per_decade, binning.lo_decade, binning.per_sign)
    return float(bound) / n


def _check_counts(counts: np.ndarray, binning: LogBinning) -> np.ndarray:
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if counts.shape != (binning.n_bins,):
        raise ConfigError(f"histogram counts: expected shape ({binning.n_bins},), got {counts.shape}")
    return counts


class Histogram:
    """Counts of values in :class:`LogBinning` bins: add, merge, read quantiles."""

    def __init__(self, binning: LogBinning | None = None) -> None:
        self.binning = binning or LogBinning()
        self.counts = self.binning.empty()

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def add(self, values: np.ndarray) -> None:
        """Count the finite values (NaN and +-inf are skipped)."""
        b = self.binning
        values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        _add(self.counts, values, b.bins_per_decade, b.lo_decade, b.per_sign)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts: the histogram of both value sets together."""
        if other.binning != self.binning:
            raise ConfigError(f"histogram merge: binnings differ ({self.binning} vs {other.binning})")
        self.counts += other.counts

    def quantile(self, level: float) -> float:
        return quantile_from_counts(self.counts, level, self.binning)

    def rank_error_bound(self, level: float) -> float:
        return rank_error_bound(self.counts, level, self.binning)


@njit(cache=True)
def _rolling_add(rows, row_n, total, st, values, block, d, lo, m):
    """Count finite values into the filling row, rotating to the oldest row when it is full."""
    for x in values:
        if not math.isfinite(x):
            continue
        cur = st[0]
        if row_n[cur] == block:
            cur = cur + 1 if cur + 1 < rows.shape[0] else 0
            row = rows[cur]
            for b in range(row.shape[0]):
                total[b] -= row[b]
                row[b] = 0
            st[1] -= row_n[cur]
            row_n[cur] = 0
            st[0] = cur
        b = _bin_of(x, d, lo, m)
        rows[cur, b] += 1
        total[b] += 1
        row_n[cur] += 1
        st[1] += 1


class RollingHistogramQuantile:
    """Approximate quantile at ``level`` over at least the last ``window`` finite values.

    Same interface as :class:`~streamflow.trigger.rolling.RollingQuantile`, plus
    ``counts()`` (the window's histogram, to all-reduce across scorers) and
    ``value_from(counts)`` (the threshold of such a sum). See the module
    docstring for the window rule, the error bound and the memory.
    """

    def __init__(self, window: int, level: float, blocks: int = 16, binning: LogBinning | None = None) -> None:
        check_window_level(window, level, "histogram quantile")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ConfigError(f"histogram quantile: blocks must be a positive integer, got {blocks!r}")
        self.window = int(window)
        self.level = float(level)
        self.binning = binning or LogBinning()
        self.block = -(-self.window // blocks)
        self._rows = np.zeros((blocks + 1, self.binning.n_bins), dtype=np.int32)
        self._row_n = np.zeros(blocks + 1, dtype=np.int64)
        self._total = self.binning.empty()
        self._st = np.zeros(2, dtype=np.int64)  # filling row, values in the window

    @property
    def count(self) -> int:
        """Values in the window now."""
        return int(self._st[1])

    @property
    def nbytes(self) -> int:
        """Bytes held: the block rows and their sum (independent of the window)."""
        return self._rows.nbytes + self._total.nbytes

    def update(self, values: np.ndarray) -> None:
        """Add a frame of values in order; non-finite ones are skipped."""
        b = self.binning
        values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        _rolling_add(
            self._rows, self._row_n, self._total, self._st, values, self.block,
            b.bins_per_decade, b.lo_decade, b.per_sign,
        )

    def set_level(self, level: float) -> None:
        """Move the quantile to ``level`` (read from the histogram at the next ``value``)."""
        check_window_level(self.window, level, "histogram quantile")
        self.level = float(level)

    def counts(self) -> np.ndarray:
        """The window's histogram (a copy, int64[n_bins]): sum it across scorers to agree."""
        return self._total.copy()

    def value(self) -> float:
        """Estimated quantile of the window; NaN if empty."""
        return quantile_from_counts(self._total, self.level, self.binning)

    def value_from(self, counts: np.ndarray) -> float:
        """Estimated quantile of a window histogram, e.g. the all-reduced sum of ``counts()``."""
        return quantile_from_counts(counts, self.level, self.binning)

    def rank_error_bound(self) -> float:
        return rank_error_bound(self._total, self.level, self.binning)
