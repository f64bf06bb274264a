"""Trigger lines: a learner's score, an accept fraction q, a rolling threshold held at q by feedback.

A line accepts the events whose score exceeds the (1 - q_eff) quantile of the
line's last ``window`` finite scores. Its configuration is a :class:`LineConfig`
(a TOML table via :func:`streamflow.config.load_toml`); its running bookkeeping is
a :class:`LineStats`; :class:`RateControl` is its feedback on q_eff.
:class:`~streamflow.trigger.menu.TriggerMenu` runs the lines.

Warm-up. The window grows from empty up to ``window`` scores (a rolling quantile
over fewer than W scores is the quantile of all of them), and the line judges as
soon as it holds ``warmup`` scores -- by default ``ceil(5 / q)``, capped at the
window: about five scores above the threshold, so the first threshold's rate is
right only to ~1/sqrt(5) ~ 45%, but it improves as the window grows, and the
rate control below corrects it within a frame or two (that is what lets the
warm-up be this short: 500 events for q = 1%, not a 20,000-score window). Scores met before that are counted as
``not_judged``, and they stay in the line's population: the line's achieved
fraction is accepted / seen, warm-up included.

Rate control. A window quantile holds q only if scores are stationary over the
window; a learning classifier's scores grow, the threshold lags them and the
line takes more than q (1.33% for 1% was measured before this control). So the
level is corrected by integral feedback on the line's count of accepts:

    log c  <-  clip( log c - (a - q_t n) / max(tau, q_t n),  +-log 16 )
    q_eff  =   q_t * c

per *step* of n finite scores with a accepts, q_t the line's target (q, times
the menu's budget factor when a budget is set) and tau = ``control`` (in
accepts). A step is a piece of a frame holding about 2 expected accepts (at most
4 steps a frame; :mod:`streamflow.trigger.menu`): the control acts within a
frame, not once per frame, which is what lets a sparse line -- CATHODE's and
ANODE's, about 6 expected accepts in a 4096-event frame -- hold its count.

Stability: near q the line's accept fraction is q_eff * d with d the (slowly
changing) lag of the threshold behind the scores, so log(a / q_t n) ~ log c +
log d, and the error e = log c + log d obeys e' = (1 - g) e + (change of log d)
with loop gain g = q_t n / max(tau, q_t n) in (0, 1]: it decays geometrically
without overshoot, for any step size (the max() caps g at 1, the deadbeat gain,
so large steps cannot make it oscillate -- it would at g > 1), and a constant
lag d -- a steady drift -- is removed entirely (integral action).

What it guarantees: log c is the running sum of -(a - q_t n)/max(tau, q_t n), so
the count of accepts over any stretch differs from q_t times its judged events
by exactly max(tau, q_t n) times the change of log c across it (as long as the
clip is not reached). Counting noise alone makes log c jitter by sqrt(g / ((2 -
g) q_t n)) (:meth:`RateControl.jitter`), so an interval's count is off by about
sqrt(2) max(tau, q_t n) times that -- roughly sqrt(2 tau) accepts for small
steps, *whatever the interval's length*: the rate over an interval of A expected
accepts is held to ~sqrt(2 tau) / A, far below the binomial 1 / sqrt(A) of a
fixed threshold. The price is the other side of the same jitter: the level
itself moves by ~1 / sqrt(2 tau) from step to step (35% at the default tau = 4),
a threshold that wobbles around the (1 - q) quantile, which costs a selection a
little of its efficiency at the same rate (measured in the README on the
synthetic million: within one sigma of the signal-region SIC, 1.5 sigma for
CWoLA, against tau = 20 on the same scores). A larger
``control`` steadies the threshold and loosens the rate: the count error grows
as sqrt(tau). The default tau = 4 is chosen so that a line with ~140 expected
accepts per interval (CATHODE's over 100,000 LHCO events at q = 1%) holds its
interval rate to a few percent. The warm-up's events are not made up for (that
would be a burst of accepts right after it): they are counted as ``not_judged``
and cost the line warmup / population of its rate. ``control`` = 0 turns the
control off (the plain window quantile). The clip (c in [1/16, 16]) is the
anti-windup: a line whose scores tie massively at the threshold cannot reach q,
and c stops there.

Prescale N: every N-th passing event is recorded (the N-th, 2N-th, ...: a
counter, deterministic, as in hardware triggers); the rate control acts on the
passing events, so the recorded fraction is q / N. A ``zero_bias`` line reads no
learner: it passes each event with probability q (a seeded generator), an
unbiased sample of the stream from which background rates and efficiencies can
be estimated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

from streamflow.errors import ConfigError
from streamflow.trigger.rolling import RollingQuantile
from streamflow.trigger.sketch import RollingHistogramQuantile

Estimator = RollingQuantile | RollingHistogramQuantile

MAX_CORRECTION = 16.0
"""The rate control's correction factor c stays in [1/16, 16] (anti-windup)."""

WARMUP_ACCEPTS = 5
"""Default warm-up: the window holds ceil(WARMUP_ACCEPTS / q) scores (capped at the window)."""


MAX_WINDOW = 10_000_000
"""The longest rolling window, in events: the exact estimator holds about 41 bytes an event (the ring
of scores and its two-heap index: 410 MB per line at the bound), the histogram about 10."""

@dataclass(frozen=True)
class LineConfig:
    """One trigger line.

    ``accept`` is the target accept fraction q (0 < q < 1): the threshold is the
    (1 - q_eff) quantile of the last ``window`` finite scores of learner ``learner``
    (q_eff = q corrected by the rate control, see the module docstring). The line
    judges once the window holds ``warmup`` scores (default ceil(5 / q), at most
    the window). ``control``: the rate control's time constant in accepts (0: off).
    ``prescale`` N records every N-th passing event. ``kind`` "zero_bias": no
    learner (leave ``learner`` empty), each event passes with probability q from a
    generator seeded with ``seed``. ``estimator`` is "exact"
    (:class:`RollingQuantile`) or "histogram" (:class:`RollingHistogramQuantile`:
    fixed memory, mergeable across scorers).
    """

    name: str
    learner: str = ""
    accept: float = math.nan
    window: int = 100_000
    warmup: int | None = None
    estimator: Literal["exact", "histogram"] = "exact"
    control: float = 4.0
    prescale: int = 1
    kind: Literal["score", "zero_bias"] = "score"
    seed: int = 0

    def __post_init__(self) -> None:
        where = f"trigger line {self.name!r}"
        if not self.name:
            raise ConfigError("trigger line: name must not be empty")
        if not (isinstance(self.accept, (int, float)) and 0.0 < self.accept < 1.0):
            raise ConfigError(f"{where}: accept must be a fraction in (0, 1), got {self.accept!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or not 1 <= self.window <= MAX_WINDOW:
            raise ConfigError(f"{where}: window must be an integer in [1, {MAX_WINDOW:,d}] events, "
                              f"got {self.window!r}")
        if self.warmup is not None and (
            isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or not 1 <= self.warmup <= self.window
        ):
            raise ConfigError(f"{where}: warmup must be an integer in [1, window={self.window}], got {self.warmup!r}")
        if self.estimator not in ("exact", "histogram"):
            raise ConfigError(f"{where}: estimator must be 'exact' or 'histogram', got {self.estimator!r}")
        if isinstance(self.control, bool) or not isinstance(self.control, (int, float)) or not self.control >= 0:
            raise ConfigError(f"{where}: control must be a time constant >= 0 accepts (0: off), got {self.control!r}")
        if isinstance(self.prescale, bool) or not isinstance(self.prescale, int) or self.prescale < 1:
            raise ConfigError(f"{where}: prescale must be a positive integer, got {self.prescale!r}")
        if self.kind not in ("score", "zero_bias"):
            raise ConfigError(f"{where}: kind must be 'score' or 'zero_bias', got {self.kind!r}")
        if self.kind == "score" and not self.learner:
            raise ConfigError(f"{where}: a score line needs a learner")
        if self.kind == "zero_bias" and self.learner:
            raise ConfigError(f"{where}: a zero_bias line reads no learner, got learner {self.learner!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"{where}: seed must be an integer >= 0, got {self.seed!r}")

    @property
    def level(self) -> float:
        """Quantile level of the uncorrected threshold: 1 - accept."""
        return 1.0 - self.accept

    @property
    def recorded(self) -> float:
        """The fraction of the line's population it records: accept / prescale."""
        return self.accept / self.prescale

    @property
    def warmup_events(self) -> int:
        """Scores the window must hold before the line judges (0 for a zero-bias line)."""
        if self.kind == "zero_bias":
            return 0
        if self.warmup is not None:
            return self.warmup
        return min(self.window, math.ceil(WARMUP_ACCEPTS / self.accept))

    def make_estimator(self) -> Estimator:
        if self.estimator == "exact":
            return RollingQuantile(self.window, self.level)
        return RollingHistogramQuantile(self.window, self.level)


class RateControl:
    """The integral feedback on a line's quantile level (module docstring: the law and its stability)."""

    def __init__(self, tau: float) -> None:
        self.tau = float(tau)
        self.log_c = 0.0

    @property
    def correction(self) -> float:
        """c: the factor on the line's target accept fraction."""
        return math.exp(self.log_c)

    def jitter(self, expected: float) -> float:
        """The standard deviation of log c from counting alone, for ``expected`` accepts an update:
        sqrt(g / ((2 - g) expected)) with gain g = expected / max(tau, expected) (module docstring)."""
        if self.tau == 0 or expected <= 0:
            return 0.0
        gain = expected / max(self.tau, expected)
        return math.sqrt(gain / ((2 - gain) * expected))

    def update(self, accepted: int, events: int, target: float) -> None:
        """One frame: ``accepted`` of ``events`` passed, for a target fraction ``target``."""
        if self.tau == 0 or events == 0:
            return
        expected = target * events
        step = (accepted - expected) / max(self.tau, expected)
        self.log_c = min(math.log(MAX_CORRECTION), max(-math.log(MAX_CORRECTION), self.log_c - step))


@dataclass
class LineStats:
    """Running counts of one line since the menu started, counted two ways.

    ``seen`` counts finite scores and ``skipped`` non-finite ones (never accepted,
    never in the window). From the first frame the line judges (after warm-up) on:

    - ``events``: every event of those frames, scored or not; ``judged``: those
      with a finite score. The threshold holds ``accepted / judged`` near the
      target (``accept_fraction``); what the line takes of the stream is
      ``accepted / events`` (``stream_fraction``). The two differ for a learner
      that scores only some events (CWoLA: NaN outside its sidebands), whose
      ``scored_fraction = judged / events`` is then below 1.
    - stream-wide efficiencies (with truth labels): eff_S = signal accepted / all
      signal events, eff_B likewise, SIC = eff_S / sqrt(eff_B). An event the
      learner does not score counts as not accepted, so lines are compared on the
      same events; comparisons between lines belong at equal ``stream_fraction``.
    - signal-region efficiencies (``sr_*``, when the menu is given the region
      feature, mjj): the same, over the events inside the signal region only (the
      literature's convention: 3.3-3.7 TeV for LHCO).

    Counting only the scored events, as an earlier version did, divides a partial
    line's accepted signal by the signal it happened to score: its eff_S and its
    rate then describe another population than a line that scores everything.

    Trigger operations: ``not_judged`` counts the finite scores met before the line
    could judge (warm-up): seen = not_judged + judged (every event for a zero-bias
    line). ``recorded`` counts the passing events the prescale kept; ``unique`` the
    recorded events no other line recorded, and ``overlap`` maps every other line to
    the recorded events both recorded. ``population_fraction`` is ``accepted / seen``
    (warm-up included). ``correction`` is the rate control's factor c on the target,
    ``budget_factor`` the menu budget's factor on it; ``restarts`` counts the
    window's restarts (streamflow.trigger.menu).
    """

    name: str
    learner: str
    target: float
    prescale: int = 1
    seen: int = 0
    skipped: int = 0
    not_judged: int = 0
    judged: int = 0
    accepted: int = 0
    recorded: int = 0
    unique: int = 0
    events: int = 0
    signal_events: int = 0
    signal_accepted: int = 0
    background_events: int = 0
    background_accepted: int = 0
    sr_events: int = 0
    sr_accepted: int = 0
    sr_signal: int = 0
    sr_signal_accepted: int = 0
    sr_background: int = 0
    sr_background_accepted: int = 0
    threshold: float = math.nan
    restarts: int = 0
    correction: float = 1.0
    budget_factor: float = 1.0
    overlap: dict[str, int] = field(default_factory=dict)

    @property
    def accept_fraction(self) -> float:
        """Accepted / scored events after warm-up: what the threshold holds at the target q."""
        return _ratio(self.accepted, self.judged)

    @property
    def stream_fraction(self) -> float:
        """Accepted / all events after warm-up: what the line takes of the stream."""
        return _ratio(self.accepted, self.events)

    @property
    def scored_fraction(self) -> float:
        """Scored / all events after warm-up (1 for a learner that scores everything)."""
        return _ratio(self.judged, self.events)

    @property
    def eff_s(self) -> float:
        return _ratio(self.signal_accepted, self.signal_events)

    @property
    def eff_b(self) -> float:
        return _ratio(self.background_accepted, self.background_events)

    @property
    def sic(self) -> float:
        return _sic(self.eff_s, self.eff_b)

    @property
    def sr_fraction(self) -> float:
        return _ratio(self.sr_accepted, self.sr_events)

    @property
    def sr_eff_s(self) -> float:
        return _ratio(self.sr_signal_accepted, self.sr_signal)

    @property
    def sr_eff_b(self) -> float:
        return _ratio(self.sr_background_accepted, self.sr_background)

    @property
    def sr_sic(self) -> float:
        return _sic(self.sr_eff_s, self.sr_eff_b)

    @property
    def population_fraction(self) -> float:
        """Accepted / seen: the line's fraction of its whole population, warm-up included."""
        return _ratio(self.accepted, self.seen)

    COUNTS: ClassVar[tuple[str, ...]] = (
        "seen", "skipped", "not_judged", "judged", "accepted", "recorded", "unique", "restarts", "events",
        "signal_events", "signal_accepted", "background_events", "background_accepted", "sr_events", "sr_accepted",
        "sr_signal", "sr_signal_accepted", "sr_background", "sr_background_accepted")
    DERIVED: ClassVar[tuple[str, ...]] = (
        "accept_fraction", "population_fraction", "stream_fraction", "scored_fraction", "eff_s", "eff_b", "sic",
        "sr_fraction", "sr_eff_s", "sr_eff_b", "sr_sic")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LineStats:
        """The stats ``to_dict`` wrote (derived figures are recomputed, not read)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    @classmethod
    def combined(cls, parts: Sequence[LineStats]) -> LineStats:
        """One line's stats over several scorers (data-parallel ranks): counts summed, the
        first part's threshold and corrections (under global thresholds all ranks apply the same)."""
        first = parts[0]
        overlap = {name: sum(part.overlap.get(name, 0) for part in parts) for name in first.overlap}
        return replace(first, overlap=overlap,
                       **{key: sum(getattr(part, key) for part in parts) for key in cls.COUNTS})

    def to_dict(self) -> dict[str, Any]:
        """Counts and derived figures, JSON-ready (NaN where undefined)."""
        out: dict[str, Any] = asdict(self)
        out.update({key: getattr(self, key) for key in self.DERIVED})
        return out


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def _sic(eff_s: float, eff_b: float) -> float:
    return eff_s / math.sqrt(eff_b) if eff_b > 0 else math.nan
