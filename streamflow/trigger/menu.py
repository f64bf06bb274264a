"""A trigger menu: up to 64 lines judged side by side, frame by frame, within an optional budget.

Per frame and per line, in this order:

1. the threshold is the line's rolling (1 - q_eff) quantile of the scores seen
   *before* this frame -- NaN (nothing accepted) until the window holds the
   line's ``warmup`` scores (those events are counted as ``not_judged``);
2. an event passes if its score is finite and strictly greater than the
   threshold (ties with the threshold fail: with heavily tied scores the line
   accepts less than q, never more); a zero-bias line passes each event with
   probability q instead; a prescale N records every N-th passing event;
3. the frame's finite scores enter the window;
4. the rate control updates q_eff from the passes (:mod:`.lines`), or, when the
   frame's passes are more than 3 Poisson sigmas off the target or the
   correction leaves [2/3, 3/2] by more than 3 of its counting sigmas
   (:meth:`~streamflow.trigger.lines.RateControl.jitter`) -- the scores moved
   faster than the window follows, as a learner's do early in its training --
   the window restarts from this frame's scores (a window policy: the past no
   longer describes the learner's scores) and the line *tracks*.

Steps. A controlled line (``control`` > 0, its own window) does 1-4 in steps
within the frame: its finite scores in order, ``STEP_ACCEPTS`` (2) expected
accepts a step, at most ``MAX_STEPS`` (4) steps a frame; each step is judged
against the window as the steps before left it, at the level the rate control
set after them, then enters the window and the control. So a sparse line -- 6
expected accepts a frame -- is corrected every ~2 accepts rather than once a
frame, and what one step took too many is taken less of within the same frame
(the count argument of :mod:`.lines` per step). The restart test (4) looks at
the whole frame. The selection's ``thresholds`` are each line's last step's.
A burst within a frame therefore passes as far as the control lets it: its
first step's events beat the past and pass, the following steps are held to
the line's rate (a trigger's rate is what the downstream system is sized for);
a plain line (``control`` = 0) judges the whole frame against the past and
takes a burst whole.

Tracking (a controlled line from its first frame, and after each restart): the
line judges a frame against the frame's own (1 - q_eff) quantile -- the only
threshold that is right when the scores move more from frame to frame than the
counting noise -- step by step (each step at the q_eff the control left). Its
window restarts from the frame whenever the window's threshold would have passed
the frame more than 3 Poisson sigmas off the target (the scores moved), and
otherwise grows on; as soon as that threshold would have passed the frame within
1 Poisson sigma of the target *and* the window held ``TRACK_WINDOW`` (4) times
``warmup`` scores before the frame (a threshold resting on ~20 scores above it,
not on the ~6 of one sparse frame), the line judges against its window again, and
the window grows to W from there. So the first frame of a stream is judged (on
itself: a frame with fewer than ``warmup`` finite scores is judged against the
window including it, or not at all while that holds fewer), and a learner's
early training costs no rate. The price of tracking: a burst inside a frame is
diluted by the frame itself -- only while the line tracks. A line with
``control`` = 0 is the plain window quantile: no correction, no restarts, no
tracking, no steps; its first judged frame is the one after its window holds ``warmup``.

After all lines: the union of the recorded events is counted against the
menu's ``budget`` (a fraction of the whole stream), and the unique and overlap
counts are updated (an event recorded by line i alone is unique to i; the
overlap of lines i and j counts events both recorded).

Budget. With a budget B, every score line's target becomes q_i * g: the lines
keep their relative shares (their ``accept`` values), and g is set by the same
integral feedback as a line's (:class:`~streamflow.trigger.lines.RateControl`)
on the union's recorded count against B times the frame's events, with the
slower time constant ``budget_control`` (accepts), so each line has settled on
its target before g moves it again (separated time scales: the inner loops see
a nearly constant target, the outer one nearly settled lines). The union grows
monotonically with g, so the outer loop's gain has the right sign and the same
stability argument holds. Zero-bias lines are not scaled (their rate must stay
known); they use part of the budget. A line whose recorded fraction
(accept / prescale) exceeds the budget, or zero-bias lines that fill it, are
configuration errors.

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
lines always use their own scorer's window. Shared lines run without rate
control and budget factor (each rank's counts differ, so its corrections would
too, and the ranks' thresholds would part).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from streamflow.errors import ConfigError, StreamflowError
from streamflow.trigger.lines import LineConfig, LineStats, RateControl
from streamflow.trigger.selection import MAX_LINES, Selection
from streamflow.trigger.sketch import RollingHistogramQuantile

SIGNAL_REGION = (3300.0, 3700.0)
"""GeV: the LHCO signal region in mjj (3.3-3.7 TeV), where a resonance search looks."""

Reduce = Callable[[np.ndarray], np.ndarray]

RESTART_SIGMAS = 3.0
"""A line's window restarts when a frame's pass count is this many Poisson sigmas from its target ..."""
RESTART_CORRECTION = 1.5
"""... or when its rate control needs more than this factor (either way) to hold the target: its window lags
the scores so much that the correction's swings would cost accepts (max(tau, q n) |delta log c| per swing)."""
STEP_ACCEPTS = 2.0
"""A line on its window judges a frame in steps of this many expected accepts, the rate control acting after each."""
MAX_STEPS = 4
"""... and in at most this many steps (a dense line's frame holds many accepts: its steps are longer)."""
TRACK_SIGMAS = 1.0
"""A tracking line returns to its window once the window's threshold is this close (Poisson sigmas) to target ..."""
TRACK_WINDOW = 4
"""... and once its window held this many times ``warmup`` scores before the frame (~20 above its threshold)."""


class TriggerMenu:
    """Runs trigger lines over frames of scores; see the module docstring for the rules."""

    def __init__(self, lines: Sequence[LineConfig], reduce: Reduce | None = None, reduce_every: int = 1,
                 signal_region: tuple[float, float] = SIGNAL_REGION,
                 budget: float | None = None, budget_control: float = 80.0) -> None:
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
        check_budget(lines, budget, budget_control)
        self.lines = lines
        self.budget = budget
        self._reduce = reduce
        self._reduce_every = reduce_every
        self._frames = 0
        self._summed: np.ndarray | None = None
        self._estimators = [line.make_estimator() for line in lines]
        self._stats = [LineStats(line.name, line.learner, line.accept, line.prescale,
                                 overlap={other: 0 for other in names if other != line.name}) for line in lines]
        self._histograms = {i: e for i, e in enumerate(self._estimators) if isinstance(e, RollingHistogramQuantile)}
        self._shared = list(self._histograms) if reduce is not None else []
        self._controls = [RateControl(0.0 if i in self._shared or line.kind == "zero_bias" else line.control)
                          for i, line in enumerate(lines)]
        self._budget = RateControl(budget_control)
        self._random = {i: np.random.default_rng(line.seed) for i, line in enumerate(lines) if line.kind == "zero_bias"}
        self._overlap = np.zeros((len(lines), len(lines)), dtype=np.int64)
        self._tracking = [True] * len(lines)

    @property
    def learners(self) -> tuple[str, ...]:
        """The learners whose scores ``select`` needs, in first-use order."""
        return tuple(dict.fromkeys(line.learner for line in self.lines if line.kind == "score"))

    def window_counts(self) -> np.ndarray:
        """The window histograms of the histogram lines, stacked: int64[lines, bins] (what ``reduce`` sums)."""
        if not self._shared:
            return np.zeros((0, 0), dtype=np.int64)
        return np.stack([self._histograms[i].counts() for i in self._shared])

    def stats(self) -> list[LineStats]:
        """A snapshot of every line's running counts."""
        return [dataclasses.replace(s, overlap=dict(s.overlap)) for s in self._stats]

    def overlap(self) -> np.ndarray:
        """int64[lines, lines]: events recorded by both line i and line j (the diagonal: by line i)."""
        return self._overlap.copy()

    def select(self, scores: Mapping[str, np.ndarray], labels: np.ndarray | None = None,
               region: np.ndarray | None = None) -> Selection:
        """Judge one frame: ``scores`` maps learner name -> float[n]; ``labels`` (1 = signal) and
        ``region`` (each event's mjj, for the signal-region counts) are optional."""
        frame = {name: self._scores(scores, name) for name in self.learners}
        n = self._frame_size(frame, scores)
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
        passed_bits = np.zeros(n, dtype=np.uint64)
        recorded_bits = np.zeros(n, dtype=np.uint64)
        for i, (line, stats) in enumerate(zip(self.lines, self._stats, strict=True)):
            stepped = False
            if line.kind == "zero_bias":
                finite = np.ones(n, dtype=bool)
                passed = self._random[i].random(n) < line.accept
                judged = True
            else:
                values = frame[line.learner]
                finite = np.isfinite(values)
                stepped = self._stepped(i, thresholds[i])
                if stepped:
                    passed, thresholds[i] = self._judge_in_steps(i, values, finite, thresholds[i])
                else:
                    threshold = self._judge(i, values, finite, thresholds[i])
                    stepped = threshold is None  # tracking: the frame is judged on its own scores, in steps
                    if threshold is None:
                        passed, thresholds[i] = self._judge_in_steps(i, values, finite, np.nan, on_itself=True)
                    else:
                        thresholds[i] = threshold
                        passed = finite & (values > threshold)
                judged = not np.isnan(thresholds[i])
            recorded = passed & ((stats.accepted + np.cumsum(passed)) % line.prescale == 0)
            passed_bits |= passed.astype(np.uint64) << np.uint64(i)
            recorded_bits |= recorded.astype(np.uint64) << np.uint64(i)
            self._count(stats, finite, passed, recorded, labels, inside, judged=judged)
            stats.threshold = float(thresholds[i])
            if judged:
                self._control(i, values if line.kind == "score" else None, int(passed.sum()), int(finite.sum()),
                              stepped=stepped)
        self._count_union(recorded_bits)
        if self.budget is not None:
            self._budget.update(int((recorded_bits != 0).sum()), n, self.budget)
        self._set_levels()
        return Selection(accept=recorded_bits != 0, bits=recorded_bits, thresholds=thresholds, passed=passed_bits)

    def _judge(self, i: int, values: np.ndarray, finite: np.ndarray, threshold: float) -> float | None:
        """Put the frame's scores in line i's window; the threshold to judge the frame with.

        A plain line (``control`` 0, or a shared threshold): the threshold of the
        window before the frame. A controlled line *tracking* (from its first frame,
        and again after a restart): None -- the frame is judged on itself, its own
        (1 - q_eff) quantiles step by step (:meth:`_judge_in_steps`) -- if the
        frame alone holds ``warmup`` finite scores, else the window's including the
        frame once that reaches ``warmup``
        (else not judged). The window restarts from the frame when its threshold
        would have passed the frame more than ``RESTART_SIGMAS`` Poisson sigmas off
        q_t n, and keeps growing otherwise. Tracking ends at the first frame the
        window's threshold would have passed within ``TRACK_SIGMAS`` sigmas of q_t n
        with at least ``TRACK_WINDOW`` x ``warmup`` scores in the window before the
        frame: the scores move less per frame than the counting noise, and the
        window grows from there to W."""
        line, estimator = self.lines[i], self._estimators[i]
        n = int(finite.sum())
        ready = estimator.count + n >= line.warmup_events
        estimator.update(values)
        if line.control == 0 or i in self._shared or not self._tracking[i]:
            return threshold
        expected = line.accept * self._budget.correction * n
        if not np.isnan(threshold):
            passed = int(np.count_nonzero(values[finite] > threshold))
            off = abs(passed - expected) / np.sqrt(expected) if expected > 0 else 0.0
            if off <= TRACK_SIGMAS and estimator.count - n >= TRACK_WINDOW * line.warmup_events:
                self._tracking[i] = False
                return threshold
            if off <= RESTART_SIGMAS and n >= line.warmup_events:
                return None  # judged on itself; the window grows on: the scores moved within counting noise
        if n >= line.warmup_events:  # the frame alone makes a threshold: judge it on itself, keep only it
            self._restart(i, values)
            return None
        return estimator.value() if ready else threshold  # small frames: the window since the (re)start

    def _stepped(self, i: int, threshold: float) -> bool:
        """Whether line i judges this frame in steps: a controlled line on its own window, judging."""
        return (self.lines[i].control > 0 and i not in self._shared and not self._tracking[i]
                and not np.isnan(threshold))

    def _judge_in_steps(self, i: int, values: np.ndarray, finite: np.ndarray, threshold: float,
                        on_itself: bool = False) -> tuple[np.ndarray, float]:
        """Judge the frame in steps of about ``STEP_ACCEPTS / q_t`` finite scores (at most ``MAX_STEPS``), the
        rate control updated after each, so that what a step took moves the next step's level.

        On the window (``threshold``: the window's before the frame): each step against the window before it
        at the step's level; the step's scores then enter the window, so a learner whose scores jump within
        a frame is followed within the frame. ``on_itself`` (a tracking line, its window already restarted from
        this frame): each step against the frame's own (1 - q_eff) quantile at the step's q_eff. Returns the
        passes and the last step's threshold."""
        line, estimator, control = self.lines[i], self._estimators[i], self._controls[i]
        target = line.accept * self._budget.correction
        positions = np.flatnonzero(finite)
        own = values[positions] if on_itself else None
        size = step_size(target, len(positions))
        passed = np.zeros(len(values), dtype=bool)
        for start in range(0, len(positions), size):
            q_eff = min(1.0, target * control.correction)
            if own is not None:
                threshold = float(np.quantile(own, 1.0 - q_eff))
            elif start:
                if q_eff != 1.0 - estimator.level:
                    estimator.set_level(1.0 - q_eff)
                threshold = estimator.value()
            at = positions[start:start + size]
            hits = values[at] > threshold
            passed[at] = hits
            if not on_itself:
                estimator.update(values[at])
            control.update(int(hits.sum()), len(at), target)
        return passed, float(threshold)

    def _restart(self, i: int, values: np.ndarray) -> None:
        """Line i's window restarts from this frame's scores."""
        estimator = self.lines[i].make_estimator()
        estimator.update(values)
        self._estimators[i] = estimator

    def _control(self, i: int, values: np.ndarray | None, passed: int, events: int, stepped: bool = False) -> None:
        """Line i's rate control after a judged frame; a restart of its window on a jump in its scores.

        A restart: the frame's pass count a is more than ``RESTART_SIGMAS`` Poisson
        sigmas from q_t n, or the correction c has left [2/3, 3/2] by more than
        ``RESTART_SIGMAS`` times its counting jitter (for the expected accepts of an
        update: q_t n, or on a stepped line q_t times its :func:`step_size`) -- the scores have
        moved faster than the window can follow (a learner early in its training).
        The window then restarts from this frame's scores (those of the learner as
        it is now) and the line tracks (see :meth:`_judge`). The correction carries
        on: the accepts the line still owes (or has taken too many) are made up
        in the next frames, so its count stays within max(tau, 2 q_t n) |log c| of
        q_t times its judged events across restarts too."""
        line, control = self.lines[i], self._controls[i]
        target = line.accept * self._budget.correction
        expected = target * events
        if not stepped:
            control.update(passed, events, target)
        jumped = abs(passed - expected) > RESTART_SIGMAS * np.sqrt(expected)
        if values is not None and control.tau > 0 and not self._tracking[i] \
                and (jumped or abs(control.log_c) > np.log(RESTART_CORRECTION) + RESTART_SIGMAS * control.jitter(
                    target * step_size(target, events) if stepped else expected)):
            self._restart(i, values)
            self._tracking[i] = True
            self._stats[i].restarts += 1

    def _frame_size(self, frame: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray]) -> int:
        sizes = {name: len(values) for name, values in frame.items()}
        if not sizes:  # zero-bias lines only: the frame's size from any scores given
            sizes = {name: len(np.asarray(values).reshape(-1)) for name, values in scores.items()}
        if not sizes:
            raise StreamflowError("trigger menu: a frame needs at least one learner's scores")
        n = next(iter(sizes.values()))
        for name, size in sizes.items():
            if size != n:
                raise StreamflowError(f"trigger menu: learner {name!r} gave {size} scores, expected {n}")
        return n

    def _set_levels(self) -> None:
        """Each score line's quantile level for the next frame: 1 - q * (budget factor) * (its correction)."""
        factor = self._budget.correction
        for i, line in enumerate(self.lines):
            if line.kind == "zero_bias":
                continue
            stats = self._stats[i]
            stats.budget_factor = 1.0 if i in self._shared else factor
            stats.correction = self._controls[i].correction
            q_eff = min(1.0, line.accept * stats.budget_factor * stats.correction)
            if q_eff != 1.0 - self._estimators[i].level:
                self._estimators[i].set_level(1.0 - q_eff)

    def _count_union(self, recorded_bits: np.ndarray) -> None:
        """Unique and overlap counts from the frame's recorded bits."""
        recorded_bits = recorded_bits[recorded_bits != 0]
        if not len(recorded_bits):
            return
        shifts = np.arange(len(self.lines), dtype=np.uint64)
        matrix = ((recorded_bits[:, None] >> shifts) & np.uint64(1)).astype(np.int64)
        self._overlap += matrix.T @ matrix
        alone = matrix.sum(axis=1) == 1
        for i, stats in enumerate(self._stats):
            stats.unique += int(matrix[alone, i].sum())
            for j, other in enumerate(self.lines):
                if j != i:
                    stats.overlap[other.name] = int(self._overlap[i, j])

    def _scores(self, scores: Mapping[str, np.ndarray], learner: str) -> np.ndarray:
        if learner not in scores:
            have = ", ".join(sorted(scores)) or "none"
            raise StreamflowError(f"trigger menu: no scores for learner {learner!r} (have: {have})")
        values = np.asarray(scores[learner], dtype=np.float64)
        if values.ndim != 1:
            raise StreamflowError(f"trigger menu: scores of {learner!r} must be 1-D, got shape {values.shape}")
        return values

    def _thresholds(self) -> np.ndarray:
        """Each score line's threshold from its window before this frame (NaN while warming up)."""
        out = np.full(len(self.lines), np.nan)
        local = [i for i, line in enumerate(self.lines) if line.kind == "score"]
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
    def _count(stats: LineStats, finite: np.ndarray, passed: np.ndarray, recorded: np.ndarray,
               labels: np.ndarray | None, inside: np.ndarray | None, judged: bool) -> None:
        n_finite = int(finite.sum())
        stats.seen += n_finite
        stats.skipped += len(finite) - n_finite
        if not judged:
            stats.not_judged += n_finite
            return
        stats.events += len(finite)
        stats.judged += n_finite
        stats.accepted += int(passed.sum())
        stats.recorded += int(recorded.sum())
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


def step_size(target: float, finite: int) -> int:
    """Finite scores per step of a controlled line with target fraction ``target`` in a frame of ``finite``
    finite scores: ``STEP_ACCEPTS`` expected accepts a step, at most ``MAX_STEPS`` steps."""
    return max(1, math.ceil(STEP_ACCEPTS / target), -(-finite // MAX_STEPS))


def check_budget(lines: Sequence[LineConfig], budget: float | None, budget_control: float = 80.0) -> None:
    """ConfigError unless ``budget`` (a stream-wide fraction, or None) can hold every line's recorded fraction."""
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < budget <= 1.0:
        raise ConfigError(f"trigger menu: budget must be a fraction in (0, 1], got {budget!r}")
    if isinstance(budget_control, bool) or not isinstance(budget_control, (int, float)) or budget_control <= 0:
        raise ConfigError(f"trigger menu: budget_control must be a time constant > 0 accepts, got {budget_control!r}")
    for line in lines:
        if line.recorded > budget:
            raise ConfigError(f"trigger line {line.name!r}: records {line.recorded:g} of its population, "
                              f"more than the menu budget {budget:g}")
    zero_bias = sum(line.recorded for line in lines if line.kind == "zero_bias")
    if zero_bias >= budget:
        raise ConfigError(f"trigger menu: zero-bias lines record {zero_bias:g} of the stream, "
                          f"which leaves nothing of the budget {budget:g}")
