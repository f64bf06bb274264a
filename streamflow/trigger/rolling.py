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
(the values within +-W/64 ranks of the quantile, by default) when the
quantile leaves it or it has grown to twice its size: about log2(32) times during
warm-up, never on a stationary stream (the quantile's rank wanders by about
sqrt(W p (1 - p)), far less than W/64), and on a drifting stream each time the
quantile has moved by about W/64 ranks -- the band doubles when that happens
within W events, so a fast drift widens the band instead of rebuilding it every
few frames (at worst the band is the whole window: plain two heaps).

So per event: a ring update on local counters, plus heap work for the values
that land in the band (about 1/64 + (1 - p) of them). Measured on the shared
2-core machine (bench/quantile.py): ~20-40 ns per event in per-event mode, and
40-80 us per 4096-event frame on a 1M window. Tried while building this, and
slower: two heaps over the whole window (a push per event, and compactions of
the big heap costing 10-40 ms at W = 1M), and addressable heaps (each slot knows
its cell, no dead cells, but random memory accesses per eviction: 2-4x slower per
frame at W = 1M). Not tried: sorted-block lists, which pay a memmove per event.

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


@njit(cache=True, inline="always")
def _target_low(n, level):
    """k + 1: how many of the smallest values reach up to x_(k) (numpy 'linear' rule)."""
    if n == 0:
        return 0
    v = (n - 1) * level
    if v >= n - 1:
        return n
    return int(math.floor(v)) + 1


# What _band_state finds, and what it takes to read the quantile off the heap tops.
_READY = 0
_UNBALANCED = 1  # move tops across (_rebalance)
_MISSED = 2  # x_(k) or x_(k+1) lies outside the band: rebuild it
_OVERGROWN = 3  # the band holds more than its limit: rebuild it narrower


@njit(cache=True, inline="always")
def _band_state(n_lo, n_hi, n_far_lo, n_far_hi, limit, level):
    n = n_lo + n_hi + n_far_lo + n_far_hi
    if n == 0:
        return _READY
    target = _target_low(n, level)
    low = target - n_far_lo  # band values up to x_(k): what the low heap must hold
    near = n_lo + n_hi
    if low < 1 or low + (1 if target < n else 0) > near:
        return _MISSED
    if near > limit:
        return _OVERGROWN
    return _READY if n_lo == low else _UNBALANCED


@njit(cache=True, inline="always")
def _lerp_tops(n, level, a, b):
    """numpy's 'linear' quantile from x_(k) = a and x_(k+1) = b; NaN when n = 0."""
    if n == 0:
        return np.nan
    v = (n - 1) * level
    if v >= n - 1:
        return a
    g = v - math.floor(v)
    d = b - a
    if g >= 0.5:
        return b - d * (1.0 - g)
    return a + d * g


@njit(cache=True)
def _n_live(st):
    return st[_LIVE + _LO] + st[_LIVE + _HI] + st[_LIVE + _FAR_LO] + st[_LIVE + _FAR_HI]


@njit(cache=True)
def _push_band(st, ring_c, hv, hi, x, slot, level):
    """Push a band value, just stored in ring ``slot``, onto the heap it belongs to."""
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

    ``reason`` is ``_band_state``'s: _MISSED widens the band when the quantile left
    it within a window's worth of events (a fast drift) and narrows it back after
    a long calm; _OVERGROWN keeps its width.
    """
    w = ring_c.shape[0]
    since = st[_SEEN] - st[_LAST_BUILD]
    if reason == _MISSED and since < w:
        st[_BAND_RANKS] = min(2 * st[_BAND_RANKS], w)
    elif reason == _MISSED and since > 8 * w:
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
def _rebalance(st, ring_c, hv, hi, level):
    """Move tops across until the low heap holds the band values up to x_(k) (state _UNBALANCED)."""
    w = ring_c.shape[0]
    seen = st[_SEEN]
    oldest = seen - w
    low = _target_low(_n_live(st), level) - st[_LIVE + _FAR_LO]
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


@njit(cache=True)
def _settle(st, band, ring_v, ring_c, hv, hi, level):
    """Bring the state to _READY: rebalance, or rebuild the band first if it missed or grew."""
    state = _band_state(
        st[_LIVE + _LO], st[_LIVE + _HI], st[_LIVE + _FAR_LO], st[_LIVE + _FAR_HI], st[_BAND_LIMIT], level
    )
    if state == _MISSED or state == _OVERGROWN:
        _rebuild(st, band, ring_v, ring_c, hv, hi, level, state)
    elif state == _UNBALANCED:
        _rebalance(st, ring_c, hv, hi, level)


@njit(cache=True)
def _clean_tops(st, ring_c, hv, hi):
    oldest = st[_SEEN] - ring_c.shape[0]
    _clean_top(st, hv, hi, _LO, oldest)
    _clean_top(st, hv, hi, _HI, oldest)


@njit(cache=True)
def _value(st, ring_c, hv, hi, level):
    """The window quantile (the state must be _READY)."""
    _clean_tops(st, ring_c, hv, hi)
    return _lerp_tops(_n_live(st), level, -hv[0], hv[hv.shape[0] - 1])


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
def _save(st, seen, slot, n_lo, n_hi, n_far_lo, n_far_hi):
    st[_SEEN] = seen
    st[_SLOT] = slot
    st[_LIVE + _LO] = n_lo
    st[_LIVE + _HI] = n_hi
    st[_LIVE + _FAR_LO] = n_far_lo
    st[_LIVE + _FAR_HI] = n_far_hi


@njit(cache=True)
def _run(st, band, ring_v, ring_c, hv, hi, values, level, out, per_event):
    """Insert the finite values in order; per event, also settle and write each quantile to ``out``.

    A frame (``per_event`` false) settles once at its end, and only its last W
    finite values matter. The common case -- a value outside the band replacing
    one outside the band -- runs on local counters, with no call: Numba does not
    inline calls between compiled functions, and a call that passes arrays costs
    more than that work (~15 ns; ~40 ns when the callee can raise).
    """
    w = ring_c.shape[0]
    skip = 0
    if not per_event:
        finite = 0
        for x in values:
            if math.isfinite(x):
                finite += 1
        if finite >= w:  # the frame alone fills the window: start it afresh
            skip = finite - w
            _reset(st, band, w, skip)
    seen = st[_SEEN]
    slot = st[_SLOT]
    start = st[_START]
    n_lo = st[_LIVE + _LO]
    n_hi = st[_LIVE + _HI]
    n_far_lo = st[_LIVE + _FAR_LO]
    n_far_hi = st[_LIVE + _FAR_HI]
    b_lo = band[0]
    b_hi = band[1]
    top_hi = hv.shape[0] - 1
    for j in range(values.shape[0]):
        x = values[j]
        if math.isfinite(x):
            if skip > 0:
                skip -= 1
                continue
            if seen - w >= start:  # the value in this slot leaves the window
                c = ring_c[slot]
                if c == _FAR_LO:
                    n_far_lo -= 1
                elif c == _FAR_HI:
                    n_far_hi -= 1
                elif c == _LO:
                    n_lo -= 1
                else:
                    n_hi -= 1
            ring_v[slot] = x
            here = slot
            seen += 1
            slot = slot + 1 if slot + 1 < w else 0
            if x < b_lo:
                ring_c[here] = _FAR_LO
                n_far_lo += 1
            elif x > b_hi:
                ring_c[here] = _FAR_HI
                n_far_hi += 1
            else:
                _save(st, seen, slot, n_lo, n_hi, n_far_lo, n_far_hi)
                _push_band(st, ring_c, hv, hi, x, here, level)
                n_lo = st[_LIVE + _LO]
                n_hi = st[_LIVE + _HI]
            if per_event and _band_state(n_lo, n_hi, n_far_lo, n_far_hi, st[_BAND_LIMIT], level) != _READY:
                _save(st, seen, slot, n_lo, n_hi, n_far_lo, n_far_hi)
                _settle(st, band, ring_v, ring_c, hv, hi, level)
                n_lo = st[_LIVE + _LO]
                n_hi = st[_LIVE + _HI]
                n_far_lo = st[_LIVE + _FAR_LO]
                n_far_hi = st[_LIVE + _FAR_HI]
                b_lo = band[0]
                b_hi = band[1]
        if per_event:
            oldest = seen - w
            if (st[_SIZE + _LO] > 0 and hi[0] < oldest) or (st[_SIZE + _HI] > 0 and hi[top_hi] < oldest):
                st[_SEEN] = seen
                _clean_tops(st, ring_c, hv, hi)
            out[j] = _lerp_tops(n_lo + n_hi + n_far_lo + n_far_hi, level, -hv[0], hv[top_hi])
    _save(st, seen, slot, n_lo, n_hi, n_far_lo, n_far_hi)
    if not per_event:
        _settle(st, band, ring_v, ring_c, hv, hi, level)


def check_window_level(window: int, level: float, what: str = "rolling quantile") -> None:
    """Raise ConfigError unless ``window`` is a positive int and ``level`` lies in [0, 1]."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ConfigError(f"{what}: window must be a positive integer, got {window!r}")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= level <= 1.0:
        raise ConfigError(f"{what}: level must be a number in [0, 1], got {level!r}")


_NO_OUT = np.empty(0)  # the per-event output array, unused in frame mode


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

    @property
    def nbytes(self) -> int:
        """Bytes in use: the ring (9 per window event) and the heap cells in use (16 each)."""
        cells = int(self._st[_SIZE + _LO] + self._st[_SIZE + _HI])
        return self._ring_v.nbytes + self._ring_c.nbytes + 16 * cells

    def _args(self) -> tuple:
        return self._st, self._band, self._ring_v, self._ring_c, self._hv, self._hi

    def update(self, values: np.ndarray) -> None:
        """Add a frame of values in order; non-finite ones are skipped."""
        values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        _run(*self._args(), values, self.level, _NO_OUT, False)  # type: ignore[call-arg]

    def value(self) -> float:
        """The quantile of the current window (``np.quantile`` 'linear' rule); NaN if empty."""
        return float(_value(self._st, self._ring_c, self._hv, self._hi, self.level))

    def set_level(self, level: float) -> None:
        """Move the quantile to ``level`` (a trigger line's rate control does, a little each frame).

        The heaps are rebalanced to the new rank (O(log W) per rank moved), or the
        band is rebuilt (O(W)) if the new rank lies outside it."""
        check_window_level(self.window, level)
        self.level = float(level)
        if self.count:
            _settle(*self._args(), self.level)  # type: ignore[call-arg]


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
    _run(*q._args(), values, q.level, out, True)  # type: ignore[call-arg]
    return out
