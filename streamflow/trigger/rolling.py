"""Exact sliding-window quantile in Numba: two heaps on a band around the quantile.

The window is the last ``W`` *finite* values inserted (NaN and +-inf are skipped:
never inserted, so they never count towards ``W``). The quantile at level ``p`` is
numpy's default ('linear', Hyndman & Fan type 7) rule, reproduced bit for bit:

    v = (n - 1) * p,  k = floor(v),  g = v - k
    Q = x_(k) + g * (x_(k+1) - x_(k))          if g < 1/2
    Q = x_(k+1) - (1 - g) * (x_(k+1) - x_(k))  otherwise   (numpy's ``_lerp``)
    Q = x_(n-1)                                if v >= n - 1

with x_(i) the i-th smallest window value, so ``value()`` equals
``np.quantile(window_values, p)`` exactly (float64 values).

Structure. A ring holds the window's values and, per value, its class. A band
[b, c] of values around the quantile is kept exactly; values below b ("far low")
and above c ("far high") are only counted, so inserting or evicting one is O(1)
and touches no heap. Inside the band, a "low" max-heap holds the values up to
x_(k) (its top) and a "high" min-heap the rest (its top is x_(k+1)); with
``n_far_low`` values below the band the low heap holds k + 1 - n_far_low of them.
Both heaps are min-heaps in one shared cell array -- the low heap stores negated
values (exact for floats) from the front, the high heap from the back -- and every
cell carries its value's insertion index ``i``: a value has left the window once
``i < seen - W``. So evicting a band value is O(1) too: its heap's live count
drops, and the dead cell is reused later (popped when it surfaces at a top,
overwritten when a push probes it as a leaf, or dropped by a compaction when the
cell array is full). A push is O(1) expected for values in random order, O(log W)
at worst. After each frame (each event in per-event mode) the heaps are
rebalanced, O(log W) per value moved. The band is rebuilt from the ring in O(W)
(selecting the values within +-W/64 ranks of the quantile by default) when the quantile
leaves it or it has grown to twice its size: about log2(32) times during
warm-up, never on a stationary stream (the quantile's rank wanders by about
sqrt(W p (1 - p)), far less than W/64), and on a drifting stream each time the
quantile has moved by about W/64 ranks -- the band doubles when that happens
within W events, so a fast drift costs O(1) amortised per event.

So per event: the ring update, plus heap work for the ~1/32 + (1 - p) of values
that land in the band (with p = 0.99). Measured alternatives (bench/quantile.py
and its history): two heaps over the whole window (a push per event, and
compactions of the big heap that cost 10-40 ms at W = 1M), addressable heaps
(random memory accesses per eviction: 3-4x slower per frame at W = 1M), and
sorted-block lists (a memmove per event) were all slower.

Memory: 9 bytes per window event for the ring (float64 value + int8 class), plus
16 bytes per heap cell in use (float64 value + int64 index; about W/32 cells, the
array of 2W + 64 cells is allocated but untouched pages stay virtual), plus
8 bytes per window event, transiently, while a band rebuild runs.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from streamflow.errors import ConfigError

# Classes of a window value (ring entries); the first two are also heap sides.
_LO = 0  # in the low heap (band, <= x_(k))
_HI = 1  # in the high heap (band, >= x_(k+1))
_FAR_LO = 2  # below the band: counted only
_FAR_HI = 3  # above the band: counted only

# Scalar state, one int64 array so the kernels update it in place.
_SEEN = 0  # finite values inserted so far = insertion index of the next one
_START = 1  # first insertion index of the current window (a frame >= W restarts it)
_SLOT = 2  # ring slot of the next value (= _SEEN mod W, without a division)
_SIZE = 3  # cells in use per heap (live + dead): +_LO, +_HI
_LIVE = 5  # live values per class: +_LO, +_HI, +_FAR_LO, +_FAR_HI
_PROBE = 9  # leaf-probe cursor per heap: +_LO, +_HI
_BAND_LIMIT = 11  # rebuild the band when it holds more live values than this
_BAND_RANKS = 12  # ranks the band spans around the quantile when (re)built
_LAST_BUILD = 13  # _SEEN at the last band rebuild
_BAND_BASE = 14  # the band's usual span in ranks (it widens on fast drifts, then returns)
_NSTATE = 15

_PROBES = 2  # leaves probed for a dead cell per push


@njit(cache=True)
def _sift_up(hv, hi, side, i):
    base = side * (hv.shape[0] - 1)
    step = 1 - 2 * side
    c = base + step * i
    v = hv[c]
    ix = hi[c]
    while i > 0:
        parent = (i - 1) >> 1
        pc = base + step * parent
        if hv[pc] <= v:
            break
        hv[c] = hv[pc]
        hi[c] = hi[pc]
        i = parent
        c = pc
    hv[c] = v
    hi[c] = ix


@njit(cache=True)
def _sift_down(hv, hi, side, i, size):
    base = side * (hv.shape[0] - 1)
    step = 1 - 2 * side
    c = base + step * i
    v = hv[c]
    ix = hi[c]
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        cc = base + step * child
        if child + 1 < size and hv[cc + step] < hv[cc]:
            child += 1
            cc += step
        if hv[cc] >= v:
            break
        hv[c] = hv[cc]
        hi[c] = hi[cc]
        i = child
        c = cc
    hv[c] = v
    hi[c] = ix


@njit(cache=True)
def _heapify(hv, hi, side, size):
    for i in range((size >> 1) - 1, -1, -1):
        _sift_down(hv, hi, side, i, size)


@njit(cache=True)
def _pop(st, hv, hi, side):
    """Remove the top cell of heap ``side``."""
    size = st[_SIZE + side] - 1
    st[_SIZE + side] = size
    if size > 0:
        base = side * (hv.shape[0] - 1)
        last = base + (1 - 2 * side) * size
        hv[base] = hv[last]
        hi[base] = hi[last]
        _sift_down(hv, hi, side, 0, size)


@njit(cache=True)
def _clean_top(st, hv, hi, side, oldest):
    """Pop dead cells until the top of heap ``side`` is live (or the heap is empty)."""
    top = side * (hv.shape[0] - 1)
    while st[_SIZE + side] > 0 and hi[top] < oldest:
        _pop(st, hv, hi, side)


@njit(cache=True)
def _compact(st, hv, hi, side, oldest):
    """Drop the dead cells of heap ``side`` and re-heapify it (Floyd, O(size))."""
    base = side * (hv.shape[0] - 1)
    step = 1 - 2 * side
    kept = 0
    for i in range(st[_SIZE + side]):
        c = base + step * i
        if hi[c] >= oldest:
            k = base + step * kept
            hv[k] = hv[c]
            hi[k] = hi[c]
            kept += 1
    st[_SIZE + side] = kept
    st[_PROBE + side] = 0
    _heapify(hv, hi, side, kept)


@njit(cache=True)
def _push(st, ring_c, hv, hi, side, key, index, slot):
    """Push ``key`` (negated for the low heap), inserted as ``index`` into ring ``slot``."""
    oldest = st[_SEEN] - ring_c.shape[0]
    base = side * (hv.shape[0] - 1)
    step = 1 - 2 * side
    ring_c[slot] = side
    st[_LIVE + side] += 1
    size = st[_SIZE + side]
    # A dead leaf (heap index >= size // 2) can take the new value in place.
    for _ in range(_PROBES):
        leaf = st[_PROBE + side]
        if leaf < size >> 1 or leaf >= size:
            leaf = size >> 1
        st[_PROBE + side] = leaf + 1
        if leaf < size and hi[base + step * leaf] < oldest:
            hv[base + step * leaf] = key
            hi[base + step * leaf] = index
            _sift_up(hv, hi, side, leaf)
            return
    if st[_SIZE + _LO] + st[_SIZE + _HI] >= hv.shape[0]:
        dead_lo = st[_SIZE + _LO] - st[_LIVE + _LO]
        dead_hi = st[_SIZE + _HI] - st[_LIVE + _HI]
        _compact(st, hv, hi, _LO if dead_lo >= dead_hi else _HI, oldest)
        size = st[_SIZE + side]
    c = base + step * size
    hv[c] = key
    hi[c] = index
    st[_SIZE + side] = size + 1
    _sift_up(hv, hi, side, size)


@njit(cache=True)
def _target_low(n, level):
    """k + 1: how many of the smallest values reach up to x_(k) (numpy 'linear' rule)."""
    if n == 0:
        return 0
    v = (n - 1) * level
    if v >= n - 1:
        return n
    return int(math.floor(v)) + 1


@njit(cache=True)
def _n_live(st):
    return st[_LIVE + _LO] + st[_LIVE + _HI] + st[_LIVE + _FAR_LO] + st[_LIVE + _FAR_HI]


@njit(cache=True)
def _store(st, band, ring_v, ring_c, x):
    """Put a finite value into the ring, evicting the oldest; count it if it is outside the band.

    Returns its ring slot when it falls inside the band (the caller pushes it onto
    a heap), else -1. The per-event path calls only functions that cannot raise
    (no allocation, no division by a variable): a Numba function that can raise,
    or calls one that can, pays reference counting on each of its array
    arguments at every call -- about 40 ns per call here, more than the work.
    """
    w = ring_c.shape[0]
    seen = st[_SEEN]
    slot = st[_SLOT]
    if seen - w >= st[_START]:  # the value in this slot leaves the window
        st[_LIVE + ring_c[slot]] -= 1
    st[_SEEN] = seen + 1
    st[_SLOT] = slot + 1 if slot + 1 < w else 0
    ring_v[slot] = x
    if x < band[0]:
        ring_c[slot] = _FAR_LO
    elif x > band[1]:
        ring_c[slot] = _FAR_HI
    else:
        return slot
    st[_LIVE + ring_c[slot]] += 1
    return -1


@njit(cache=True)
def _push_band(st, ring_c, hv, hi, x, slot, level):
    """Push a band value stored by ``_store`` onto the heap it belongs to."""
    seen = st[_SEEN] - 1
    oldest = st[_SEEN] - ring_c.shape[0]
    _clean_top(st, hv, hi, _LO, oldest)
    _clean_top(st, hv, hi, _HI, oldest)
    n_lo = st[_LIVE + _LO]
    n_hi = st[_LIVE + _HI]
    # Either heap keeps max(low) <= min(high) when x lies between the two tops.
    if n_lo > 0 and x < -hv[0]:
        side = _LO
    elif n_hi > 0 and x > hv[hv.shape[0] - 1]:
        side = _HI
    elif n_lo < _target_low(_n_live(st) + 1, level) - st[_LIVE + _FAR_LO]:
        side = _LO
    else:
        side = _HI
    _push(st, ring_c, hv, hi, side, -x if side == _LO else x, seen, slot)


@njit(cache=True)
def _select(a, k):
    """The k-th smallest of ``a`` (0-based), partially ordering ``a`` in place around it.

    Quickselect with a median-of-three pivot and a three-way partition (runs of
    equal values cost nothing), O(len(a)) expected; afterwards a[:k] <= a[k] <=
    a[k+1:]. Used instead of np.partition, whose Numba compile takes ~20 s.
    """
    lo = 0
    hi = a.shape[0] - 1
    while lo < hi:
        x = a[lo]
        y = a[(lo + hi) >> 1]
        z = a[hi]
        pivot = max(min(x, y), min(max(x, y), z))
        lt = lo
        i = lo
        gt = hi
        while i <= gt:
            v = a[i]
            if v < pivot:
                a[i] = a[lt]
                a[lt] = v
                lt += 1
                i += 1
            elif v > pivot:
                a[i] = a[gt]
                a[gt] = v
                gt -= 1
            else:
                i += 1
        if k < lt:
            hi = lt - 1
        elif k > gt:
            lo = gt + 1
        else:
            break
    return a[k]


@njit(cache=True)
def _rebuild(st, band, ring_v, ring_c, hv, hi, level, reason):
    """Choose a new band of +-_BAND_RANKS/2 ranks around the quantile and refill the heaps (O(W)).

    ``reason`` is ``_rebalance``'s: 1 (the quantile left the band) widens the band
    when that happened within a window's worth of events (a fast drift) and
    narrows it back after a long calm; 2 (the band outgrew its limit) keeps it.
    """
    w = ring_c.shape[0]
    since = st[_SEEN] - st[_LAST_BUILD]
    if reason == 1 and since < w:
        st[_BAND_RANKS] = min(2 * st[_BAND_RANKS], w)
    elif reason == 1 and since > 8 * w:
        st[_BAND_RANKS] = max(st[_BAND_BASE], st[_BAND_RANKS] // 2)
    band_ranks = st[_BAND_RANKS]
    st[_LAST_BUILD] = st[_SEEN]
    n = _n_live(st)
    first = max(st[_START], st[_SEEN] - w)
    first_slot = first % w
    vals = np.empty(n, dtype=np.float64)
    s = first_slot
    for j in range(n):
        vals[j] = ring_v[s]
        s = s + 1 if s + 1 < w else 0
    k = _target_low(n, level) - 1
    k1 = min(k + 1, n - 1)
    lo_r = max(0, k - band_ranks // 2)
    hi_r = min(n - 1, k1 + band_ranks // 2)
    xk = _select(vals, k)
    b = xk if lo_r == k else _select(vals[:k], lo_r)
    c = xk if hi_r == k else _select(vals[k + 1 :], hi_r - k - 1)
    band[0] = b
    band[1] = c
    # Values equal to x_(k) fill the low heap up to k + 1 - n_far_low, the rest go high.
    n_far_lo = 0
    n_below_k = 0
    for j in range(n):
        if vals[j] < b:
            n_far_lo += 1
        elif vals[j] < xk:
            n_below_k += 1
    ties_low = k + 1 - n_far_lo - n_below_k
    for side in range(4):
        st[_LIVE + side] = 0
    st[_SIZE + _LO] = 0
    st[_SIZE + _HI] = 0
    cap = hv.shape[0]
    s = first_slot
    for j in range(n):
        x = ring_v[s]
        if x < b:
            cls = _FAR_LO
        elif x > c:
            cls = _FAR_HI
        elif x < xk or (x == xk and ties_low > 0):
            cls = _LO
            if x == xk:
                ties_low -= 1
            cell = st[_SIZE + _LO]
            hv[cell] = -x
            hi[cell] = first + j
            st[_SIZE + _LO] = cell + 1
        else:
            cls = _HI
            cell = cap - 1 - st[_SIZE + _HI]
            hv[cell] = x
            hi[cell] = first + j
            st[_SIZE + _HI] += 1
        ring_c[s] = cls
        st[_LIVE + cls] += 1
        s = s + 1 if s + 1 < w else 0
    st[_PROBE + _LO] = 0
    st[_PROBE + _HI] = 0
    _heapify(hv, hi, _LO, st[_SIZE + _LO])
    _heapify(hv, hi, _HI, st[_SIZE + _HI])
    st[_BAND_LIMIT] = max(2 * band_ranks, 2 * (st[_LIVE + _LO] + st[_LIVE + _HI]))


@njit(cache=True)
def _balanced(st, level):
    """True when the low heap holds the band values up to x_(k) and x_(k+1) is in the band."""
    n = _n_live(st)
    target = _target_low(n, level)
    low = target - st[_LIVE + _FAR_LO]
    need_high = 1 if target < n else 0  # x_(k+1) is needed too
    near = st[_LIVE + _LO] + st[_LIVE + _HI]
    fits = low >= 1 and low + need_high <= near <= st[_BAND_LIMIT]
    return n == 0 or (fits and st[_LIVE + _LO] == low)


@njit(cache=True)
def _rebalance(st, ring_c, hv, hi, level):
    """Move tops across until the low heap holds the band values up to x_(k).

    Returns 0 when done, or -- without moving anything -- 1 when the quantile has
    left the band and 2 when the band has outgrown its limit (the caller rebuilds
    it: kept out of here so that this function cannot raise, which keeps Numba's
    reference counting off the per-event path).
    """
    n = _n_live(st)
    if n == 0:
        return 0
    target = _target_low(n, level)
    low = target - st[_LIVE + _FAR_LO]
    near = st[_LIVE + _LO] + st[_LIVE + _HI]
    need_high = 1 if target < n else 0
    if low < 1 or low + need_high > near:
        return 1
    if near > st[_BAND_LIMIT]:
        return 2
    w = ring_c.shape[0]
    seen = st[_SEEN]
    oldest = seen - w
    top_hi = hv.shape[0] - 1
    while st[_LIVE + _LO] != low:
        src = _LO if st[_LIVE + _LO] > low else _HI
        _clean_top(st, hv, hi, src, oldest)
        top = 0 if src == _LO else top_hi
        key = -hv[top]
        index = hi[top]
        _pop(st, hv, hi, src)
        st[_LIVE + src] -= 1
        slot = st[_SLOT] - (seen - index)  # the ring slot of insertion ``index``
        _push(st, ring_c, hv, hi, 1 - src, key, index, slot + w if slot < 0 else slot)
    return 0


@njit(cache=True)
def _tops_live(st, ring_c, hi):
    """True when neither heap has a dead cell on top (so ``_quantile`` may read them)."""
    oldest = st[_SEEN] - ring_c.shape[0]
    lo_ok = st[_SIZE + _LO] == 0 or hi[0] >= oldest
    return lo_ok and (st[_SIZE + _HI] == 0 or hi[hi.shape[0] - 1] >= oldest)


@njit(cache=True)
def _clean_tops(st, ring_c, hv, hi):
    oldest = st[_SEEN] - ring_c.shape[0]
    _clean_top(st, hv, hi, _LO, oldest)
    _clean_top(st, hv, hi, _HI, oldest)


@njit(cache=True)
def _quantile(st, hv, level):
    """The 'linear' quantile from the two (live) tops; NaN when the window is empty."""
    n = _n_live(st)
    if n == 0:
        return np.nan
    a = -hv[0]
    v = (n - 1) * level
    if v >= n - 1:
        return a
    b = hv[hv.shape[0] - 1]
    g = v - math.floor(v)
    d = b - a
    if g >= 0.5:
        return b - d * (1.0 - g)
    return a + d * g


@njit(cache=True)
def _reset(st, band, w, skip):
    st[_SEEN] += skip
    st[_START] = st[_SEEN]
    st[_SLOT] = st[_SEEN] % w
    for j in range(4):
        st[_LIVE + j] = 0
    st[_SIZE + _LO] = 0
    st[_SIZE + _HI] = 0
    st[_BAND_RANKS] = st[_BAND_BASE]
    st[_BAND_LIMIT] = 2 * st[_BAND_RANKS]
    st[_LAST_BUILD] = st[_SEEN]
    band[0] = -np.inf
    band[1] = np.inf


@njit(cache=True)
def _insert_frame(st, band, ring_v, ring_c, hv, hi, values, level):
    """Insert a frame's finite values (only its last W matter), then rebalance once."""
    w = ring_c.shape[0]
    finite = 0
    for x in values:
        if math.isfinite(x):
            finite += 1
    skip = finite - w
    if skip >= 0:  # the frame alone fills the window: start it afresh
        _reset(st, band, w, skip)
    for x in values:
        if math.isfinite(x):
            if skip > 0:
                skip -= 1
                continue
            slot = _store(st, band, ring_v, ring_c, x)
            if slot >= 0:
                _push_band(st, ring_c, hv, hi, x, slot, level)
    if not _balanced(st, level):
        reason = _rebalance(st, ring_c, hv, hi, level)
        if reason:
            _rebuild(st, band, ring_v, ring_c, hv, hi, level, reason)


@njit(cache=True)
def _per_event(st, band, ring_v, ring_c, hv, hi, values, level, out):
    for j in range(values.shape[0]):
        x = values[j]
        if math.isfinite(x):
            slot = _store(st, band, ring_v, ring_c, x)
            if slot >= 0:
                _push_band(st, ring_c, hv, hi, x, slot, level)
            if not _balanced(st, level):
                reason = _rebalance(st, ring_c, hv, hi, level)
                if reason:
                    _rebuild(st, band, ring_v, ring_c, hv, hi, level, reason)
        if not _tops_live(st, ring_c, hi):
            _clean_tops(st, ring_c, hv, hi)
        out[j] = _quantile(st, hv, level)


def check_window_level(window: int, level: float, what: str = "rolling quantile") -> None:
    """Raise ConfigError unless ``window`` is a positive int and ``level`` lies in [0, 1]."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ConfigError(f"{what}: window must be a positive integer, got {window!r}")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= level <= 1.0:
        raise ConfigError(f"{what}: level must be a number in [0, 1], got {level!r}")


class RollingQuantile:
    """Exact quantile at ``level`` of the last ``window`` finite values, updated per frame.

    ``update(values)`` is O(B) expected for a frame of B values in random order
    (O(B log W) at worst, plus an O(W) band rebuild when the quantile drifts out
    of its band); ``value()`` is O(1) amortised. Memory: see the module docstring.
    ``band`` is how many ranks around the quantile are kept in heaps (default
    max(256, W / 32)): wider costs more per event, narrower more rebuilds on a
    drifting stream; results are exact either way.
    """

    def __init__(self, window: int, level: float, band: int | None = None) -> None:
        check_window_level(window, level)
        if band is not None and (isinstance(band, bool) or not isinstance(band, int) or band < 1):
            raise ConfigError(f"rolling quantile: band must be a positive integer, got {band!r}")
        self.window = int(window)
        self.level = float(level)
        self._st = np.zeros(_NSTATE, dtype=np.int64)
        self._st[_BAND_BASE] = max(256, self.window // 32) if band is None else band
        self._band = np.empty(2, dtype=np.float64)
        self._ring_v = np.empty(self.window, dtype=np.float64)
        self._ring_c = np.zeros(self.window, dtype=np.int8)
        self._hv = np.empty(2 * self.window + 64, dtype=np.float64)
        self._hi = np.empty(2 * self.window + 64, dtype=np.int64)
        _reset(self._st, self._band, self.window, 0)

    @property
    def count(self) -> int:
        """Values in the window now (at most ``window``)."""
        return int(_n_live(self._st))

    @property
    def seen(self) -> int:
        """Finite values inserted since creation."""
        return int(self._st[_SEEN])

    def _args(self) -> tuple:
        return self._st, self._band, self._ring_v, self._ring_c, self._hv, self._hi

    def update(self, values: np.ndarray) -> None:
        """Add a frame of values in order; non-finite ones are skipped."""
        values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        _insert_frame(*self._args(), values, self.level)

    def value(self) -> float:
        """The quantile of the current window (``np.quantile`` 'linear' rule); NaN if empty."""
        _clean_tops(self._st, self._ring_c, self._hv, self._hi)
        return float(_quantile(self._st, self._hv, self.level))


def rolling_quantile(values: np.ndarray, window: int, level: float, band: int | None = None) -> np.ndarray:
    """The window quantile after every single value (float64[n]).

    Equals pandas ``Series(values).rolling(window, min_periods=1).quantile(level)``
    on finite input (to rounding: pandas interpolates with its own formula). A
    non-finite value is skipped: its output is the quantile of the unchanged window
    (pandas instead counts NaN rows towards the window length).
    """
    q = RollingQuantile(window, level, band)
    values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    out = np.empty(values.shape[0], dtype=np.float64)
    _per_event(*q._args(), values, q.level, out)
    return out
