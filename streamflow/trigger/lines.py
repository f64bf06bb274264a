"""Trigger lines: a learner's score, an accept fraction q, a rolling threshold.

A line accepts the events whose score exceeds the (1 - q) quantile of the line's
last ``window`` finite scores. Its configuration is a :class:`LineConfig` (a TOML
table via :func:`streamflow.config.load_toml`); its running bookkeeping is a
:class:`LineStats`. :class:`~streamflow.trigger.menu.TriggerMenu` runs the lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, Literal

from streamflow.errors import ConfigError
from streamflow.trigger.rolling import RollingQuantile
from streamflow.trigger.sketch import RollingHistogramQuantile

Estimator = RollingQuantile | RollingHistogramQuantile


MAX_WINDOW = 10_000_000
"""The longest rolling window, in events: the exact estimator holds about 41 bytes an event (the ring
of scores and its two-heap index: 410 MB per line at the bound), the histogram about 10."""

@dataclass(frozen=True)
class LineConfig:
    """One trigger line.

    ``accept`` is the target accept fraction q (0 < q < 1): the threshold is the
    (1 - q) quantile of the last ``window`` finite scores of learner ``learner``.
    No event is accepted until the window holds ``warmup`` scores (default: the
    full window). ``estimator`` is "exact" (:class:`RollingQuantile`) or
    "histogram" (:class:`RollingHistogramQuantile`: fixed memory, mergeable
    across scorers).
    """

    name: str
    learner: str
    accept: float
    window: int = 100_000
    warmup: int | None = None
    estimator: Literal["exact", "histogram"] = "exact"

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

    @property
    def level(self) -> float:
        """Quantile level of the threshold: 1 - accept."""
        return 1.0 - self.accept

    @property
    def warmup_events(self) -> int:
        """Scores the window must hold before the line accepts anything."""
        return self.window if self.warmup is None else self.warmup

    def make_estimator(self) -> Estimator:
        if self.estimator == "exact":
            return RollingQuantile(self.window, self.level)
        return RollingHistogramQuantile(self.window, self.level)


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
    """

    name: str
    learner: str
    target: float
    seen: int = 0
    skipped: int = 0
    judged: int = 0
    accepted: int = 0
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

    COUNTS: ClassVar[tuple[str, ...]] = (
        "seen", "skipped", "judged", "accepted", "events", "signal_events", "signal_accepted",
        "background_events", "background_accepted", "sr_events", "sr_accepted", "sr_signal",
        "sr_signal_accepted", "sr_background", "sr_background_accepted")
    DERIVED: ClassVar[tuple[str, ...]] = (
        "accept_fraction", "stream_fraction", "scored_fraction", "eff_s", "eff_b", "sic",
        "sr_fraction", "sr_eff_s", "sr_eff_b", "sr_sic")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LineStats:
        """The stats ``to_dict`` wrote (derived figures are recomputed, not read)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    @classmethod
    def combined(cls, parts: Sequence[LineStats]) -> LineStats:
        """One line's stats over several scorers (data-parallel ranks): counts summed, the
        first part's threshold (under global thresholds all ranks apply the same)."""
        first = parts[0]
        return replace(first, **{key: sum(getattr(part, key) for part in parts) for key in cls.COUNTS})

    def to_dict(self) -> dict[str, float | int | str]:
        """Counts and derived figures, JSON-ready (NaN where undefined)."""
        out: dict[str, float | int | str] = asdict(self)
        out.update({key: getattr(self, key) for key in self.DERIVED})
        return out


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def _sic(eff_s: float, eff_b: float) -> float:
    return eff_s / math.sqrt(eff_b) if eff_b > 0 else math.nan
