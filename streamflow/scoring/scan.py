"""A bump hunt along mjj: K signal regions laid over a mass range, each with its sidebands and its lines.

The resonance mass is unknown, so the trigger looks everywhere: window k has the
signal region SR_k = [m_k, m_k (1 + width)) -- a fixed *relative* width, as the
dijet mass resolution grows with the mass -- and consecutive windows overlap by
``overlap`` of a width (m_{k+1} = m_k (1 + width (1 - overlap))), from ``low`` until a
window's high sideband would pass ``high``. Its sidebands are the bands of
``sideband`` SR widths on either side. Window k runs its own learners of ``kinds``
(CWoLA: SR vs its sidebands; CATHODE: its sideband flow and classifier), named
``scan_<kind>_<m_k in GeV>``, each behind one trigger line.

**One rate budget.** The lines share ``budget``, a stream-wide accept fraction:
line j accepts q_j = budget / J of the events it scores (its window's events), so
its stream-wide rate is q_j f_j with f_j <= 1 the stream fraction its window
holds, and the scan's total, the union of the lines, is at most
sum_j q_j f_j <= budget. The bound is conservative (the f_j are not known before
the stream is seen: each line's achieved rate is in the run's ledger); it spends
the budget evenly per window rather than per event.

Cost per window: one CWoLA MLP (a forward and ~n_k/batch steps per frame on its
window's events) or one CATHODE (a flow trained on the sideband events, k flow
samples per SR event, a classifier), so the scan costs K times a single line of
each kind; the default 2.6-6 TeV scan has 14 windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from streamflow.errors import ConfigError
from streamflow.learners import CATHODE_FEATURES, CathodeConfig, CWoLAConfig, LearnerConfig
from streamflow.trigger import LineConfig

SCAN_KINDS = ("cwola", "cathode")

Band = tuple[float, float]
Window = tuple[Band, tuple[Band, Band]]


@dataclass(frozen=True)
class ScanConfig:
    """K mjj windows with their lines sharing one stream-wide accept budget (see the module docstring).

    low, high: the mass range the windows and their sidebands cover (GeV); width: an SR's
    relative width; overlap: the fraction of a width consecutive SRs share; sideband: a
    sideband's width in SR widths; kinds: the learners each window runs; budget: the
    scan's stream-wide accept fraction; window: each line's rolling-quantile window.
    """

    low: float = 2600.0
    high: float = 6000.0
    width: float = 0.10
    overlap: float = 0.5
    sideband: float = 0.5
    kinds: tuple[str, ...] = ("cwola",)
    budget: float = 0.01
    window: int = 20_000
    region_feature: str = "mjj"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and 0 < self.low < self.high):
            raise ConfigError(f"scan: the mass range [{self.low}, {self.high}] lies outside the data "
                              f"(masses are > 0, low < high)")
        if not 0 < self.width <= 1:
            raise ConfigError(f"scan: width (an SR's relative width) must be in (0, 1], got {self.width!r}")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"scan: overlap must be in [0, 1), got {self.overlap!r}")
        if not self.sideband > 0:
            raise ConfigError(f"scan: sideband (in SR widths) must be > 0, got {self.sideband!r}")
        if not self.kinds or any(kind not in SCAN_KINDS for kind in self.kinds) or len(set(self.kinds)) != len(
                self.kinds):
            raise ConfigError(f"scan: kinds must be distinct ones of {', '.join(SCAN_KINDS)}, got {list(self.kinds)}")
        if not 0 < self.budget < 1:
            raise ConfigError(f"scan: budget must be a stream-wide fraction in (0, 1), got {self.budget!r}")
        if not self.windows():
            raise ConfigError(f"scan: no window of relative width {self.width} with its sidebands fits in "
                              f"[{self.low}, {self.high}]")

    def windows(self) -> list[Window]:
        """(signal region, (low sideband, high sideband)) of every window, in GeV, low to high."""
        out: list[Window] = []
        start = self.low / (1 - self.sideband * self.width)  # the first low sideband begins at ``low``
        while True:
            lo, hi = start, start * (1 + self.width)
            side = self.sideband * (hi - lo)
            if hi + side > self.high * (1 + 1e-9):
                return out
            out.append(((lo, hi), ((lo - side, lo), (hi, hi + side))))
            start *= 1 + self.width * (1 - self.overlap)

    def expand(self, features: tuple[str, ...] = CATHODE_FEATURES) -> tuple[list[LearnerConfig], list[LineConfig]]:
        """The learners and trigger lines of the scan: one per window and kind."""
        learners: list[LearnerConfig] = []
        for (lo, hi), (low_band, high_band) in self.windows():
            for kind in self.kinds:
                name = f"scan_{kind}_{lo:.0f}"
                if kind == "cwola":
                    learners.append(CWoLAConfig(name=name, features=features, region_feature=self.region_feature,
                                                signal_region=(lo, hi), sideband=(low_band[0], high_band[1])))
                else:
                    learners.append(CathodeConfig(name=name, features=features, region_feature=self.region_feature,
                                                  signal_region=(lo, hi), sidebands=(low_band, high_band)))
        accept = self.budget / len(learners)
        lines = [LineConfig(name=c.name, learner=c.name, accept=accept, window=self.window) for c in learners]
        return learners, lines
