"""Trigger lines: a learner's score, an accept fraction q, a rolling threshold.

A line accepts the events whose score exceeds the (1 - q) quantile of the line's
last ``window`` finite scores. Its configuration is a :class:`LineConfig` (a TOML
table via :func:`streamflow.config.load_toml`); its running bookkeeping is a
:class:`LineStats`. :class:`~streamflow.trigger.menu.TriggerMenu` runs the lines.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, Literal, Mapping, Sequence

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
    """Running counts of one line since the menu started.

    ``seen`` counts finite scores and ``skipped`` non-finite ones (never accepted,
    never in the window). ``judged`` counts the finite scores met with a threshold
    (after warm-up): the achieved accept fraction is ``accepted / judged``. With
    truth labels the signal and background counts give eff_S, eff_B (over the
    judged events) and SIC = eff_S / sqrt(eff_B).
    """

    name: str
    learner: str
    target: float
    seen: int = 0
    skipped: int = 0
    judged: int = 0
    accepted: int = 0
    signal_judged: int = 0
    signal_accepted: int = 0
    background_judged: int = 0
    background_accepted: int = 0
    threshold: float = math.nan

    @property
    def accept_fraction(self) -> float:
        return self.accepted / self.judged if self.judged else math.nan

    @property
    def eff_s(self) -> float:
        return self.signal_accepted / self.signal_judged if self.signal_judged else math.nan

    @property
    def eff_b(self) -> float:
        return self.background_accepted / self.background_judged if self.background_judged else math.nan

    @property
    def sic(self) -> float:
        eff_b = self.eff_b
        return self.eff_s / math.sqrt(eff_b) if eff_b > 0 else math.nan

    COUNTS: ClassVar[tuple[str, ...]] = ("seen", "skipped", "judged", "accepted", "signal_judged",
                                         "signal_accepted", "background_judged", "background_accepted")

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
        out.update(accept_fraction=self.accept_fraction, eff_s=self.eff_s, eff_b=self.eff_b, sic=self.sic)
        return out
