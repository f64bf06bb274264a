"""A trigger menu: up to 64 lines judged side by side, frame by frame.

Per frame and per line, in this order:

1. the threshold is the line's rolling (1 - q) quantile of the scores seen
   *before* this frame -- NaN (nothing accepted) until the window holds the
   line's ``warmup`` scores;
2. an event passes if its score is finite and strictly greater than the
   threshold (ties with the threshold fail: with heavily tied scores the line
   accepts less than q, never more);
3. the frame's finite scores enter the window.

Judging a frame against the past, not against itself, matters for bursts: if a
frame brings a cluster of anomalous events, a threshold that included them would
rise into the cluster and accept only a fraction q of the frame; judged against
the preceding window, every event of the burst that beats the past passes, so a
burst is not diluted by itself. On a stationary stream the two choices agree to
O(B / W). The price is a lag of one frame when the score scale jumps.

Non-finite scores (NaN: a learner that does not score an event, +-inf) are never
accepted and never enter a window; they are counted per line as ``skipped``.

Every line is counted two ways (:class:`~streamflow.trigger.lines.LineStats`):
over all events of the frames it judges (a NaN score is a rejection, so a line
whose learner scores only some events is charged for the rest) and over the
events inside the signal region, when ``select`` is given each event's region
feature (mjj) -- ``signal_region`` = (low, high), low <= mjj < high.

Scorers that must agree on thresholds use histogram lines and pass ``reduce``:
a function that all-reduces (sums) an int64 array across scorers, e.g.
``torch.distributed.all_reduce`` on a tensor view. Once per frame the menu stacks
the window histograms of all histogram lines into one (lines, bins) array,
reduces it and takes every histogram line's threshold (and warm-up count) from
the sum, so all scorers apply the same thresholds: those of the union of their
windows. With ``reduce_every`` K > 1 the sum is taken every K frames and reused
in between (fewer all-reduces; the shared thresholds then lag by up to K - 1
frames, equally on every scorer, since all call ``select`` in step). Exact
lines always use their own scorer's window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from streamflow.errors import ConfigError, StreamflowError
from streamflow.trigger.lines import LineConfig, LineStats
from streamflow.trigger.selection import MAX_LINES, Selection
from streamflow.trigger.sketch import RollingHistogramQuantile

SIGNAL_REGION = (3300.0, 3700.0)
"""GeV: the LHCO signal region in mjj (3.3-3.7 TeV), where a resonance search looks."""

Reduce = Callable[[np.ndarray], np.ndarray]


class TriggerMenu:
    """Runs trigger lines over frames of scores; see the module docstring for the rules."""

    def __init__(self, lines: Sequence[LineConfig], reduce: Reduce | None = None, reduce_every: int = 1,
                 signal_region: tuple[float, float] = SIGNAL_REGION) -> None:
        lines = tuple(lines)
        if not signal_region[0] < signal_region[1]:
            raise ConfigError(f"trigger menu: signal region {list(signal_region)} must have low < high")
        self.signal_region = (float(signal_region[0]), float(signal_region[1]))
        if not 1 <= len(lines) <= MAX_LINES:
            raise ConfigError(f"trigger menu: needs 1 to {MAX_LINES} lines, got {len(lines)}")
        names = [line.name for line in lines]
        duplicate = next((name for name in names if names.count(name) > 1), None)
        if duplicate is not None:
            raise ConfigError(f"trigger menu: line name {duplicate!r} appears more than once")
        if reduce_every < 1:
            raise ConfigError(f"trigger menu: reduce_every must be at least 1 frame, got {reduce_every}")
        self.lines = lines
        self._reduce = reduce
        self._reduce_every = reduce_every
        self._frames = 0
        self._summed: np.ndarray | None = None
        self._estimators = [line.make_estimator() for line in lines]
        self._stats = [LineStats(line.name, line.learner, line.accept) for line in lines]
        self._histograms = {i: e for i, e in enumerate(self._estimators) if isinstance(e, RollingHistogramQuantile)}
        self._shared = list(self._histograms)

    @property
    def learners(self) -> tuple[str, ...]:
        """The learners whose scores ``select`` needs, in first-use order."""
        return tuple(dict.fromkeys(line.learner for line in self.lines))

    def window_counts(self) -> np.ndarray:
        """The window histograms of the histogram lines, stacked: int64[lines, bins] (what ``reduce`` sums)."""
        if not self._shared:
            return np.zeros((0, 0), dtype=np.int64)
        return np.stack([self._histograms[i].counts() for i in self._shared])

    def stats(self) -> list[LineStats]:
        """A snapshot of every line's running counts."""
        return [dataclasses.replace(s) for s in self._stats]

    def select(self, scores: Mapping[str, np.ndarray], labels: np.ndarray | None = None,
               region: np.ndarray | None = None) -> Selection:
        """Judge one frame: ``scores`` maps learner name -> float[n]; ``labels`` (1 = signal) and
        ``region`` (each event's mjj, for the signal-region counts) are optional."""
        frame = {name: self._scores(scores, name) for name in self.learners}
        n = len(next(iter(frame.values())))
        for name, values in frame.items():
            if len(values) != n:
                raise StreamflowError(f"trigger menu: learner {name!r} gave {len(values)} scores, expected {n}")
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            if len(labels) != n:
                raise StreamflowError(f"trigger menu: {len(labels)} labels for {n} events")
        inside = None
        if region is not None:
            region = np.asarray(region).reshape(-1)
            if len(region) != n:
                raise StreamflowError(f"trigger menu: {len(region)} region values for {n} events")
            inside = (region >= self.signal_region[0]) & (region < self.signal_region[1])
        thresholds = self._thresholds()
        bits = np.zeros(n, dtype=np.uint64)
        for i, (line, estimator, stats) in enumerate(zip(self.lines, self._estimators, self._stats, strict=True)):
            values = frame[line.learner]
            finite = np.isfinite(values)
            passed = finite & (values > thresholds[i])
            bits |= passed.astype(np.uint64) << np.uint64(i)
            self._count(stats, finite, passed, labels, inside, judged=not np.isnan(thresholds[i]))
            stats.threshold = float(thresholds[i])
            estimator.update(values)
        return Selection(accept=bits != 0, bits=bits, thresholds=thresholds)

    def _scores(self, scores: Mapping[str, np.ndarray], learner: str) -> np.ndarray:
        if learner not in scores:
            have = ", ".join(sorted(scores)) or "none"
            raise StreamflowError(f"trigger menu: no scores for learner {learner!r} (have: {have})")
        values = np.asarray(scores[learner], dtype=np.float64)
        if values.ndim != 1:
            raise StreamflowError(f"trigger menu: scores of {learner!r} must be 1-D, got shape {values.shape}")
        return values

    def _thresholds(self) -> np.ndarray:
        """Each line's threshold from its window before this frame (NaN while warming up)."""
        out = np.full(len(self.lines), np.nan)
        local: list[int] = list(range(len(self.lines)))
        if self._reduce is not None and self._shared:
            if self._frames % self._reduce_every == 0:
                self._summed = np.asarray(self._reduce(self.window_counts()))
            self._frames += 1
            summed = self._summed
            assert summed is not None
            for row, i in enumerate(self._shared):
                if summed[row].sum() >= self.lines[i].warmup_events:
                    out[i] = self._histograms[i].value_from(summed[row])
            local = [i for i in local if i not in self._shared]
        for i in local:
            if self._estimators[i].count >= self.lines[i].warmup_events:
                out[i] = self._estimators[i].value()
        return out

    @staticmethod
    def _count(stats: LineStats, finite: np.ndarray, passed: np.ndarray, labels: np.ndarray | None,
               inside: np.ndarray | None, judged: bool) -> None:
        n_finite = int(finite.sum())
        stats.seen += n_finite
        stats.skipped += len(finite) - n_finite
        if not judged:
            return
        stats.events += len(finite)
        stats.judged += n_finite
        stats.accepted += int(passed.sum())
        signal = background = None
        if labels is not None:
            signal, background = labels == 1, labels == 0
            stats.signal_events += int(signal.sum())
            stats.signal_accepted += int((passed & signal).sum())
            stats.background_events += int(background.sum())
            stats.background_accepted += int((passed & background).sum())
        if inside is not None:
            stats.sr_events += int(inside.sum())
            stats.sr_accepted += int((passed & inside).sum())
            if signal is not None and background is not None:
                stats.sr_signal += int((inside & signal).sum())
                stats.sr_signal_accepted += int((passed & inside & signal).sum())
                stats.sr_background += int((inside & background).sum())
                stats.sr_background_accepted += int((passed & inside & background).sum())
